"""Async (Event) invocation end to end with boto3: event invoke configs and their errors,
retries, destinations, dead letters, throttling, and a queue that survives ``kill -9``.

Functions report what they received through their logs (``GET /kiln/v1/functions/{name}/logs``),
the only channel an isolated sandbox leaves them."""

from __future__ import annotations

import datetime
import json
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    expect_error,
    start_server,
    wait_for,
)

MARK = "RECORD "
COLLECTOR = f"""
import json

def handler(event, context):
    print({MARK!r} + json.dumps(event))
"""
WORKER = """
import time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    if event.get("fail"):
        raise ValueError(f"failing {event}")
    return {"echo": event}
"""
FAST = {"KILN_ASYNC_RETRY_BASE_SECONDS": "0.2", "KILN_ASYNC_THROTTLE_BASE_SECONDS": "0.1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A server whose retries wait 0.2 s / 0.4 s instead of AWS's 1 / 2 minutes."""
    started = start_server(tmp_path_factory.mktemp("async") / "data", **FAST)
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: KilnServer) -> Any:
    return server.client()


def log_text(server: KilnServer, name: str) -> str:
    response = httpx.get(f"{server.url}/kiln/v1/functions/{name}/logs")
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def records(server: KilnServer, name: str) -> list[dict[str, Any]]:
    """What a collector function was invoked with, in order."""
    return [json.loads(line.split(MARK, 1)[1]) for line in log_text(server, name).splitlines()
            if MARK in line]


def wait_records(server: KilnServer, name: str, count: int) -> list[dict[str, Any]]:
    assert wait_for(lambda: len(records(server, name)) >= count, 30), \
        (log_text(server, name), server.output()[-2000:])
    return records(server, name)


def collector(client: Any) -> tuple[str, str]:
    name = create_python_function(client, COLLECTOR)
    return name, client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]


def send(client: Any, name: str, event: dict[str, Any]) -> str:
    response = client.invoke(FunctionName=name, InvocationType="Event",
                             Payload=json.dumps(event).encode())
    assert response["StatusCode"] == 202
    return str(response["ResponseMetadata"]["RequestId"])


# -- the configuration API -------------------------------------------------------------------

def test_event_invoke_config_lifecycle(lambda_client: Any) -> None:
    client = lambda_client
    name = create_python_function(client, WORKER)
    target, target_arn = collector(client)
    arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    version = client.publish_version(FunctionName=name)["Version"]
    client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)

    before = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    put = client.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1, MaximumEventAgeInSeconds=120,
        DestinationConfig={"OnFailure": {"Destination": target_arn}})
    assert put["FunctionArn"] == f"{arn}:$LATEST"
    assert put["MaximumRetryAttempts"] == 1 and put["MaximumEventAgeInSeconds"] == 120
    assert put["DestinationConfig"] == {"OnSuccess": {},
                                        "OnFailure": {"Destination": target_arn}}
    assert isinstance(put["LastModified"], datetime.datetime) and put["LastModified"] >= before
    got = client.get_function_event_invoke_config(FunctionName=name)
    assert {k: v for k, v in got.items() if k != "ResponseMetadata"} == \
        {k: v for k, v in put.items() if k != "ResponseMetadata"}

    # Put replaces everything; Update changes only what it names.
    replaced = client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=0)
    assert "MaximumEventAgeInSeconds" not in replaced
    assert replaced["DestinationConfig"] == {"OnSuccess": {}, "OnFailure": {}}
    updated = client.update_function_event_invoke_config(
        FunctionName=name, MaximumEventAgeInSeconds=60,
        DestinationConfig={"OnSuccess": {"Destination": target_arn}})
    assert updated["MaximumRetryAttempts"] == 0 and updated["MaximumEventAgeInSeconds"] == 60
    assert updated["DestinationConfig"]["OnSuccess"] == {"Destination": target_arn}

    # Versions and aliases have their own, by Qualifier or by qualified name.
    by_version = client.put_function_event_invoke_config(
        FunctionName=f"{name}:{version}", MaximumRetryAttempts=2)
    assert by_version["FunctionArn"] == f"{arn}:{version}"
    by_alias = client.put_function_event_invoke_config(
        FunctionName=name, Qualifier="live", MaximumEventAgeInSeconds=21600)
    assert by_alias["FunctionArn"] == f"{arn}:live"
    assert client.get_function_event_invoke_config(
        FunctionName=f"{arn}:live")["MaximumEventAgeInSeconds"] == 21600

    listed = client.list_function_event_invoke_configs(FunctionName=name)
    assert [c["FunctionArn"] for c in listed["FunctionEventInvokeConfigs"]] == \
        [f"{arn}:$LATEST", f"{arn}:{version}", f"{arn}:live"]
    assert "NextMarker" not in listed
    first = client.list_function_event_invoke_configs(FunctionName=name, MaxItems=2)
    assert len(first["FunctionEventInvokeConfigs"]) == 2 and first["NextMarker"]
    rest = client.list_function_event_invoke_configs(FunctionName=name,
                                                     Marker=first["NextMarker"])
    assert [c["FunctionArn"] for c in rest["FunctionEventInvokeConfigs"]] == [f"{arn}:live"]
    paginated = client.get_paginator("list_function_event_invoke_configs").paginate(
        FunctionName=name, PaginationConfig={"PageSize": 1})
    assert sum(len(p["FunctionEventInvokeConfigs"]) for p in paginated) == 3

    # A deleted version takes its config with it.
    client.update_function_configuration(FunctionName=name, Timeout=5)
    second = client.publish_version(FunctionName=name)["Version"]
    client.put_function_event_invoke_config(FunctionName=name, Qualifier=second,
                                            MaximumRetryAttempts=0)
    client.delete_function(FunctionName=name, Qualifier=second)
    assert len(client.list_function_event_invoke_configs(
        FunctionName=name)["FunctionEventInvokeConfigs"]) == 3

    for qualifier in ("$LATEST", version, "live"):
        deleted = client.delete_function_event_invoke_config(FunctionName=name,
                                                             Qualifier=qualifier)
        assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert client.list_function_event_invoke_configs(
        FunctionName=name)["FunctionEventInvokeConfigs"] == []

    # Deleting the function takes its configs with it: a new one of that name starts clean.
    client.put_function_event_invoke_config(FunctionName=name, MaximumRetryAttempts=1)
    client.delete_function(FunctionName=name)
    create_python_function(client, WORKER, name=name)
    assert client.list_function_event_invoke_configs(
        FunctionName=name)["FunctionEventInvokeConfigs"] == []
    client.delete_function(FunctionName=name)
    client.delete_function(FunctionName=target)


def test_event_invoke_config_errors(kiln_server: KilnServer, lambda_client: Any) -> None:
    client = lambda_client
    # Checks boto3 would make itself are switched off, to reach the server's own.
    raw = kiln_server.client(parameter_validation=False)
    name = create_python_function(client, WORKER)
    arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    other_arn = arn.rsplit(":", 1)[0] + ":no-such-function"
    put = client.put_function_event_invoke_config
    latest = f"{arn}:$LATEST"

    error = expect_error(client, "InvalidParameterValueException", 400, put,
                         FunctionName="no-such-function")
    assert error.response["Error"]["Message"] == \
        "You must specify at least one of error handling or destination setting."
    for missing in ("no-such-function", other_arn):
        error = expect_error(client, "ResourceNotFoundException", 404, put,
                             FunctionName=missing, MaximumRetryAttempts=1)
        assert error.response["Error"]["Message"] == "The function doesn't exist."
    expect_error(client, "ResourceNotFoundException", 404, put, FunctionName=name,
                 Qualifier="no-such-alias", MaximumRetryAttempts=1)
    expect_error(client, "ResourceNotFoundException", 404, put, FunctionName=f"{name}:7",
                 MaximumRetryAttempts=1)
    error = expect_error(client, "InvalidParameterValueException", 400, put,
                         FunctionName=f"{name}:$LATEST", Qualifier="1", MaximumRetryAttempts=1)
    assert "does not match the specified qualifier" in error.response["Error"]["Message"]

    for field, value, message in (
            ("MaximumRetryAttempts", 3, "Value '3' at 'maximumRetryAttempts' failed to satisfy "
             "constraint: Member must have value less than or equal to 2"),
            ("MaximumRetryAttempts", -1, "Member must have value greater than or equal to 0"),
            ("MaximumEventAgeInSeconds", 59, "Value '59' at 'maximumEventAgeInSeconds' failed "
             "to satisfy constraint: Member must have value greater than or equal to 60"),
            ("MaximumEventAgeInSeconds", 21601, "less than or equal to 21600")):
        error = expect_error(raw, "ValidationException", 400, raw.put_function_event_invoke_config,
                             FunctionName=name, **{field: value})
        assert error.response["Error"]["Message"].startswith("1 validation error detected: ")
        assert message in error.response["Error"]["Message"]
    error = expect_error(raw, "ValidationException", 400, raw.put_function_event_invoke_config,
                         FunctionName=name, MaximumRetryAttempts=9,
                         MaximumEventAgeInSeconds=1)
    assert error.response["Error"]["Message"].startswith("2 validation errors detected: ")

    def destination(key: str, target: str) -> dict[str, Any]:
        return {"FunctionName": name, "DestinationConfig": {key: {"Destination": target}}}

    bad_pattern = arn.replace(":lambda:", ":_-/!lambda:")
    error = expect_error(client, "ValidationException", 400, put,
                         **destination("OnFailure", bad_pattern))
    assert error.response["Error"]["Message"] == (
        f"1 validation error detected: Value '{bad_pattern}' at "
        "'destinationConfig.onFailure.destination' failed to satisfy constraint: Member must "
        "satisfy regular expression pattern: ^$|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\\-])+:"
        "([a-z]{2}((-gov)|(-iso(b?)))?-[a-z]+-\\d{1})?:(\\d{12})?:(.*)")
    error = expect_error(client, "InvalidParameterValueException", 400, put,
                         **destination("OnSuccess", other_arn))
    assert error.response["Error"]["Message"] == f"The destination ARN {other_arn} is invalid."
    error = expect_error(client, "InvalidParameterValueException", 400, put,
                         **destination("OnSuccess", arn))
    assert error.response["Error"]["Message"] == \
        "You can't specify the function as a destination for itself."
    iam_arn = arn.replace(":lambda:", ":iam:")
    error = expect_error(client, "InvalidParameterValueException", 400, put,
                         **destination("OnSuccess", iam_arn))
    assert error.response["Error"]["Message"] == (
        f"The provided destination config DestinationConfig(onSuccess=OnSuccess(destination="
        f"{iam_arn}), onFailure=null) is invalid.")
    # A rejected request changed nothing.
    expect_error(client, "ResourceNotFoundException", 404,
                 client.get_function_event_invoke_config, FunctionName=name)

    for call in (client.get_function_event_invoke_config,
                 client.delete_function_event_invoke_config):
        error = expect_error(client, "ResourceNotFoundException", 404, call, FunctionName=name)
        assert error.response["Error"]["Message"] == \
            f"The function {latest} doesn't have an EventInvokeConfig"
        error = expect_error(client, "ResourceNotFoundException", 404, call,
                             FunctionName="no-such-function")
        assert "no-such-function:$LATEST doesn't have an EventInvokeConfig" in \
            error.response["Error"]["Message"]
    error = expect_error(client, "ResourceNotFoundException", 404,
                         client.update_function_event_invoke_config, FunctionName=name,
                         MaximumRetryAttempts=1)
    assert error.response["Error"]["Message"] == \
        f"The function {latest} doesn't have an EventInvokeConfig"
    error = expect_error(client, "ResourceNotFoundException", 404,
                         client.update_function_event_invoke_config,
                         FunctionName="no-such-function", MaximumRetryAttempts=1)
    assert error.response["Error"]["Message"] == "The function doesn't exist."
    error = expect_error(client, "ResourceNotFoundException", 404,
                         client.list_function_event_invoke_configs,
                         FunctionName="no-such-function")
    assert error.response["Error"]["Message"] == "The function doesn't exist."
    expect_error(client, "InvalidParameterValueException", 400,
                 client.list_function_event_invoke_configs, FunctionName=name, Marker="!!")
    expect_error(client, "InvalidParameterValueException", 400,
                 client.list_function_event_invoke_configs, FunctionName=name, MaxItems=51)

    # Queues, topics and buses are accepted (AWS checks only the ARN's form for them).
    queue = "arn:aws:sqs:us-east-1:000000000000:failures"
    accepted = put(**destination("OnFailure", queue))
    assert accepted["DestinationConfig"]["OnFailure"] == {"Destination": queue}
    client.delete_function(FunctionName=name)


# -- what happens to events ------------------------------------------------------------------

def test_success_reaches_on_success_with_the_invocation_record(server: KilnServer,
                                                               client: Any) -> None:
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER)
    client.put_function_event_invoke_config(
        FunctionName=name, DestinationConfig={"OnSuccess": {"Destination": target_arn}})
    request_id = send(client, name, {"n": 1})
    [record] = wait_records(server, target, 1)
    arn = client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    assert record["version"] == "1.0"
    stamp = datetime.datetime.fromisoformat(record["timestamp"])
    assert abs((datetime.datetime.now(datetime.UTC) - stamp).total_seconds()) < 60
    assert record["requestContext"] == {"requestId": request_id, "functionArn": f"{arn}:$LATEST",
                                        "condition": "Success", "approximateInvokeCount": 1}
    assert record["requestPayload"] == {"n": 1}
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST"}
    assert record["responsePayload"] == {"echo": {"n": 1}}


def test_errors_are_retried_then_reach_on_failure(server: KilnServer, client: Any) -> None:
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER)
    client.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=1,
        DestinationConfig={"OnFailure": {"Destination": target_arn},
                           "OnSuccess": {"Destination": target_arn}})
    request_id = send(client, name, {"fail": True})
    [record] = wait_records(server, target, 1)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["condition"] == "RetriesExhausted"
    assert record["requestContext"]["approximateInvokeCount"] == 2
    assert record["responseContext"] == {"statusCode": 200, "executedVersion": "$LATEST",
                                         "functionError": "Unhandled"}
    assert record["responsePayload"]["errorType"] == "ValueError"
    assert record["requestPayload"] == {"fail": True}
    # Both tries ran under the event's one request id.
    assert log_text(server, name).count(f"START RequestId: {request_id} ") == 2


def test_timeouts_are_errors_and_alias_configs_apply(server: KilnServer, client: Any) -> None:
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER, Timeout=1)
    version = client.publish_version(FunctionName=name)["Version"]
    client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    # The alias's config applies to invokes of the alias; $LATEST has none.
    client.put_function_event_invoke_config(
        FunctionName=name, Qualifier="live", MaximumRetryAttempts=0,
        DestinationConfig={"OnFailure": {"Destination": target_arn}})
    request_id = send(client, f"{name}:live", {"sleep": 3})
    [record] = wait_records(server, target, 1)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["functionArn"].endswith(f":function:{name}:live")
    assert record["requestContext"]["approximateInvokeCount"] == 1
    assert record["responseContext"]["executedVersion"] == version
    assert record["responseContext"]["functionError"] == "Unhandled"
    assert "Task timed out after 1.00 seconds" in record["responsePayload"]["errorMessage"]


def test_dead_letter_config_gets_the_failed_event(server: KilnServer, client: Any) -> None:
    """No event invoke config: AWS's default of 2 retries, then the DeadLetterConfig target."""
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER,
                                  DeadLetterConfig={"TargetArn": target_arn})
    payload = {"fail": True, "n": 7}
    request_id = send(client, name, payload)
    [event] = wait_records(server, target, 1)
    assert log_text(server, name).count(f"START RequestId: {request_id} ") == 3
    [message] = event["Records"]
    assert json.loads(message["body"]) == payload
    attributes = message["messageAttributes"]
    assert attributes["RequestID"]["stringValue"] == request_id
    assert attributes["ErrorCode"] == {"stringValue": "200", "stringListValues": [],
                                       "binaryListValues": [], "dataType": "Number"}
    assert attributes["ErrorMessage"]["stringValue"] == f"failing {payload}"
    assert message["eventSource"] == "aws:sqs" and message["eventSourceARN"] == target_arn


def test_throttled_events_wait_for_concurrency(server: KilnServer, client: Any) -> None:
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER)
    client.put_function_event_invoke_config(
        FunctionName=name, DestinationConfig={"OnSuccess": {"Destination": target_arn}})
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    request_id = send(client, name, {"n": 2})
    time.sleep(1.0)  # several throttled tries (0.1 s, 0.2 s, 0.4 s backoff)
    assert f"START RequestId: {request_id}" not in log_text(server, name)
    assert records(server, target) == []
    client.delete_function_concurrency(FunctionName=name)
    [record] = wait_records(server, target, 1)
    assert record["requestContext"]["requestId"] == request_id
    assert record["requestContext"]["approximateInvokeCount"] == 1  # throttles do not count
    assert record["responsePayload"] == {"echo": {"n": 2}}


def test_undeliverable_destinations_are_logged(server: KilnServer, client: Any) -> None:
    target, target_arn = collector(client)
    name = create_python_function(client, WORKER)
    queue = "arn:aws:sqs:us-east-1:000000000000:not-yet"
    client.put_function_event_invoke_config(
        FunctionName=name, MaximumRetryAttempts=0,
        DestinationConfig={"OnSuccess": {"Destination": target_arn},
                           "OnFailure": {"Destination": queue}})
    client.delete_function(FunctionName=target)  # after the config named it
    succeeded = send(client, name, {"n": 3})
    failed = send(client, name, {"fail": True})
    assert wait_for(lambda: log_text(server, name).count("could not deliver") == 2)
    text = log_text(server, name)
    assert f"{succeeded} Kiln could not deliver the async invocation's outcome to " \
           f"{target_arn}: Function not found" in text
    assert f"{failed} Kiln could not deliver the async invocation's outcome to {queue}" in text


# -- durability -------------------------------------------------------------------------------

def test_kill_9_mid_way_loses_nothing(tmp_path: Path) -> None:
    """200 events, every 5th failing by its payload; ``kill -9`` while they run; restart on
    the same data: each event's outcome reaches exactly the right destination, exactly once.

    The destinations are throttled (reserved concurrency 0) until after the restart, so their
    records wait durably in the queue and are all logged by the second process."""
    data = tmp_path / "data"
    settings = {**FAST, "KILN_ASYNC_WORKERS": "4", "KILN_ASYNC_RETRY_BASE_SECONDS": "0.05",
                "KILN_ASYNC_THROTTLE_BASE_SECONDS": "0.05"}
    first = start_server(data, **settings)
    try:
        client = first.client()
        succeeded, succeeded_arn = collector(client)
        failed, failed_arn = collector(client)
        for name in (succeeded, failed):
            client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
        worker = create_python_function(client, WORKER)
        client.put_function_event_invoke_config(
            FunctionName=worker, MaximumRetryAttempts=1,
            DestinationConfig={"OnSuccess": {"Destination": succeeded_arn},
                               "OnFailure": {"Destination": failed_arn}})
        request_ids = [send(client, worker, {"i": i, "sleep": 0.05, "fail": i % 5 == 0})
                       for i in range(200)]
        assert wait_for(lambda: log_text(first, worker).count("REPORT RequestId") >= 60)
        ran_before_kill = log_text(first, worker).count("REPORT RequestId")
    finally:
        first.stop(signal.SIGKILL)
    assert ran_before_kill < 200, "everything ran before the kill: nothing was tested"

    second = start_server(data, **settings)
    try:
        client = second.client()
        for name in (succeeded, failed):
            client.delete_function_concurrency(FunctionName=name)
        assert wait_for(lambda: len(records(second, succeeded)) + len(records(second, failed))
                        >= 200, 60), second.output()[-3000:]
        time.sleep(0.5)  # any duplicate would arrive by now
        ok, ko = records(second, succeeded), records(second, failed)
        assert log_text(second, worker).count("REPORT RequestId") > ran_before_kill
    finally:
        second.stop()
    ok_events = sorted(r["requestPayload"]["i"] for r in ok)
    failed_events = sorted(r["requestPayload"]["i"] for r in ko)
    assert sorted(ok_events + failed_events) == list(range(200))  # each outcome exactly once
    assert failed_events == list(range(0, 200, 5))
    for record in ok:
        i = record["requestPayload"]["i"]
        assert record["requestContext"]["requestId"] == request_ids[i]
        assert record["requestContext"]["condition"] == "Success"
        assert record["responsePayload"] == {"echo": record["requestPayload"]}  # it ran
    for record in ko:
        i = record["requestPayload"]["i"]
        assert record["requestContext"]["requestId"] == request_ids[i]
        assert record["requestContext"]["condition"] == "RetriesExhausted"
        assert record["requestContext"]["approximateInvokeCount"] == 2
        assert record["responsePayload"]["errorMessage"] == f"failing {record['requestPayload']}"

