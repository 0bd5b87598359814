"""Invoke through boto3 against a real ``kiln serve``: the three invocation types, function
errors, Tail logs, the context object, and deduplication of retried sync requests."""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import KilnServer, create_python_function, make_shared, start_server, wait_for

ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"
REPORT_RE = re.compile(
    r"^REPORT RequestId: (?P<id>[0-9a-f-]{36})\tDuration: \d+\.\d{2} ms\t"
    r"Billed Duration: \d+ ms\tMemory Size: (?P<memory>\d+) MB\tMax Memory Used: \d+ MB\t"
    r"(?:Init Duration: \d+\.\d{2} ms\t)?$"
)

ECHO = """
def handler(event, context):
    print("echo-line", event.get("n"))
    return {"event": event, "env": context.log_stream_name}
"""

FAILING = """
def handler(event, context):
    raise ValueError("boom " + str(event.get("n")))
"""


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict[str, Any],
                                                                                 Any]:
    """Invoke; returns the response and the JSON-decoded body (None when empty)."""
    if payload is not None:
        kwargs["Payload"] = json.dumps(payload).encode()
    response = client.invoke(FunctionName=name, **kwargs)
    raw = response["Payload"].read()
    return response, json.loads(raw) if raw else None


def tail_lines(response: dict[str, Any]) -> list[str]:
    return base64.b64decode(response["LogResult"]).decode().splitlines()


# -- RequestResponse / function errors --------------------------------------------------------

def test_request_response_returns_200_and_result(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    response, body = invoke(lambda_client, name, {"n": 1, "text": "héllo"})
    assert response["StatusCode"] == 200
    assert "FunctionError" not in response
    assert body["event"] == {"n": 1, "text": "héllo"}
    assert response["ExecutedVersion"] == "$LATEST"
    headers = response["ResponseMetadata"]["HTTPHeaders"]
    assert headers["content-type"].startswith("application/json")


def test_empty_payload_reaches_handler(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    response, body = invoke(lambda_client, name)
    assert response["StatusCode"] == 200
    assert body["event"] == {}


@pytest.mark.parametrize("payload", [[1, "two", None], "just a string", 42, None])
def test_any_json_payload_round_trips(lambda_client: Any, payload: Any) -> None:
    name = create_python_function(
        lambda_client, "def handler(event, context):\n    return event\n")
    response = lambda_client.invoke(FunctionName=name, Payload=json.dumps(payload).encode())
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == payload


def test_function_error_is_200_unhandled_with_error_body(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, FAILING)
    response, body = invoke(lambda_client, name, {"n": 7})
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorMessage"] == "boom 7"
    assert body["errorType"] == "ValueError"
    assert body["requestId"] == request_id
    assert isinstance(body["stackTrace"], list) and body["stackTrace"]
    assert any('app.py", line 3, in handler' in frame for frame in body["stackTrace"])
    assert not any("python_bootstrap" in frame for frame in body["stackTrace"])
    # The environment survives a handled function error: the next invoke answers normally.
    again, body = invoke(lambda_client, name, {"n": 8})
    assert again["FunctionError"] == "Unhandled" and body["errorMessage"] == "boom 8"


def test_unserializable_result_is_marshal_error(lambda_client: Any) -> None:
    name = create_python_function(
        lambda_client, "def handler(event, context):\n    return {'s': {1, 2}}\n")
    response, body = invoke(lambda_client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.MarshalError"
    assert body["errorMessage"].startswith("Unable to marshal response:")


# -- Event / DryRun -----------------------------------------------------------------------------

def test_event_invoke_is_202_and_runs(lambda_client: Any, shared_dir: Path) -> None:
    source = """
import os

def handler(event, context):
    path = os.path.join(os.environ["OUT_DIR"], event["token"])
    with open(path + ".tmp", "w") as out:
        out.write(context.aws_request_id)
    os.rename(path + ".tmp", path)
"""
    name = create_python_function(lambda_client, source,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    token = uuid.uuid4().hex
    response = lambda_client.invoke(FunctionName=name, InvocationType="Event",
                                    Payload=json.dumps({"token": token}).encode())
    assert response["StatusCode"] == 202
    assert response["Payload"].read() == b""
    marker = shared_dir / token
    assert wait_for(marker.exists), "the Event invocation never ran"
    # The run carries the request id the caller was given.
    assert marker.read_text() == response["ResponseMetadata"]["RequestId"]


def test_dry_run_is_204_and_does_not_run(lambda_client: Any, shared_dir: Path) -> None:
    source = """
import os

def handler(event, context):
    open(os.path.join(os.environ["OUT_DIR"], "ran"), "w").close()
"""
    name = create_python_function(lambda_client, source,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    response = lambda_client.invoke(FunctionName=name, InvocationType="DryRun")
    assert response["StatusCode"] == 204
    assert response["Payload"].read() == b""
    time.sleep(0.3)
    assert not (shared_dir / "ran").exists()


def test_dry_run_of_missing_function_is_404(lambda_client: Any) -> None:
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.invoke(FunctionName="no-such-fn-dryrun", InvocationType="DryRun")


# -- Tail logs ----------------------------------------------------------------------------------

def test_tail_log_cold_then_warm(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO, MemorySize=192)
    cold, _ = invoke(lambda_client, name, {"n": 41}, LogType="Tail")
    cold_id = cold["ResponseMetadata"]["RequestId"]
    lines = tail_lines(cold)
    assert lines[0] == f"START RequestId: {cold_id} Version: $LATEST"
    assert "echo-line 41" in lines
    assert lines[-2] == f"END RequestId: {cold_id}"
    report = REPORT_RE.match(lines[-1])
    assert report, repr(lines[-1])
    assert report["id"] == cold_id and report["memory"] == "192"
    assert "\tInit Duration: " in lines[-1]

    warm, _ = invoke(lambda_client, name, {"n": 42}, LogType="Tail")
    warm_id = warm["ResponseMetadata"]["RequestId"]
    lines = tail_lines(warm)
    assert lines[0] == f"START RequestId: {warm_id} Version: $LATEST"
    assert "echo-line 42" in lines and "echo-line 41" not in lines
    assert REPORT_RE.match(lines[-1]) and "Init Duration" not in lines[-1]

    # Without LogType there is no log result.
    plain, _ = invoke(lambda_client, name, {"n": 43})
    assert "LogResult" not in plain


def test_tail_log_is_last_4kb(lambda_client: Any) -> None:
    source = """
def handler(event, context):
    for i in range(400):
        print(f"line {i:04d} " + "x" * 40)
    return "done"
"""
    name = create_python_function(lambda_client, source)
    response, body = invoke(lambda_client, name, {}, LogType="Tail")
    assert body == "done"
    raw = base64.b64decode(response["LogResult"])
    assert len(raw) == 4096
    text = raw.decode()
    assert "START RequestId" not in text  # cut off: only the last 4 KB are kept
    assert "line 0399 " in text and "line 0000 " not in text
    lines = text.splitlines()
    assert lines[-2] == f"END RequestId: {response['ResponseMetadata']['RequestId']}"
    assert REPORT_RE.match(lines[-1])


def test_tail_log_of_function_error(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, FAILING)
    response, _ = invoke(lambda_client, name, {"n": 1}, LogType="Tail")
    text = base64.b64decode(response["LogResult"]).decode()
    assert "[ERROR] ValueError: boom 1" in text
    assert REPORT_RE.match(text.splitlines()[-1])


# -- Context ------------------------------------------------------------------------------------

CONTEXT = """
import time

def handler(event, context):
    first = context.get_remaining_time_in_millis()
    time.sleep(0.05)
    second = context.get_remaining_time_in_millis()
    cc = context.client_context
    return {
        "aws_request_id": context.aws_request_id,
        "function_name": context.function_name,
        "function_version": context.function_version,
        "invoked_function_arn": context.invoked_function_arn,
        "memory_limit_in_mb": context.memory_limit_in_mb,
        "log_group_name": context.log_group_name,
        "log_stream_name": context.log_stream_name,
        "remaining": [first, second],
        "identity": [context.identity.cognito_identity_id,
                     context.identity.cognito_identity_pool_id],
        "client_context": None if cc is None else {
            "installation_id": cc.client.installation_id,
            "app_title": cc.client.app_title,
            "app_version_name": cc.client.app_version_name,
            "app_version_code": cc.client.app_version_code,
            "app_package_name": cc.client.app_package_name,
            "custom": cc.custom,
            "env": cc.env,
        },
    }
"""


def test_context_object(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, CONTEXT, Timeout=7, MemorySize=256)
    response, body = invoke(lambda_client, name, {})
    assert body["aws_request_id"] == response["ResponseMetadata"]["RequestId"]
    assert body["function_name"] == name
    assert body["function_version"] == "$LATEST"
    assert body["invoked_function_arn"] == ARN_PREFIX + name
    assert body["memory_limit_in_mb"] == "256"
    assert body["log_group_name"] == f"/aws/lambda/{name}"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}", body["log_stream_name"])
    first, second = body["remaining"]
    assert 0 < second < first <= 7000
    assert body["identity"] == [None, None]
    assert body["client_context"] is None


def test_invoked_function_arn_is_as_invoked(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, CONTEXT)
    _, body = invoke(lambda_client, ARN_PREFIX + name, {}, Qualifier="$LATEST")
    assert body["invoked_function_arn"] == ARN_PREFIX + name + ":$LATEST"
    _, body = invoke(lambda_client, f"000000000000:function:{name}", {})
    assert body["invoked_function_arn"] == ARN_PREFIX + name


def test_client_context_reaches_the_handler(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, CONTEXT)
    client_context = {
        "client": {"installation_id": "inst-1", "app_title": "Kiln Test",
                   "app_version_name": "1.2", "app_version_code": "12",
                   "app_package_name": "dev.kiln.test"},
        "custom": {"color": "blue"},
        "env": {"platform": "linux"},
    }
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()
    response, body = invoke(lambda_client, name, {}, ClientContext=encoded)
    assert response["StatusCode"] == 200
    assert body["client_context"] == {
        "installation_id": "inst-1", "app_title": "Kiln Test", "app_version_name": "1.2",
        "app_version_code": "12", "app_package_name": "dev.kiln.test",
        "custom": {"color": "blue"}, "env": {"platform": "linux"},
    }


def test_bad_client_context_is_rejected_before_running(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException):
        lambda_client.invoke(FunctionName=name, ClientContext="not base64 json!")


# -- Deduplication by amz-sdk-invocation-id -------------------------------------------------------

COUNTING = """
import os, time, uuid

def handler(event, context):
    with open(os.path.join(os.environ["OUT_DIR"], "runs"), "a") as out:
        out.write(context.aws_request_id + "\\n")
    time.sleep(event.get("sleep", 0))
    return {"nonce": uuid.uuid4().hex}
"""


def raw_invoke(server: KilnServer, name: str, payload: bytes,
               invocation_id: str | None) -> tuple[int, dict[str, str], bytes]:
    """One Invoke POST without botocore (so nothing retries behind our back)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    headers = {"Content-Type": "application/json"}
    if invocation_id is not None:
        headers["amz-sdk-invocation-id"] = invocation_id
    try:
        connection.request("POST", f"/2015-03-31/functions/{name}/invocations", payload,
                           headers)
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def test_retried_invocation_id_runs_once(kiln_server: KilnServer, lambda_client: Any,
                                         shared_dir: Path) -> None:
    name = create_python_function(lambda_client, COUNTING,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    runs = shared_dir / "runs"
    invocation_id = str(uuid.uuid4())
    first = raw_invoke(kiln_server, name, b"{}", invocation_id)
    second = raw_invoke(kiln_server, name, b"{}", invocation_id)
    assert first[0] == second[0] == 200
    assert first[2] == second[2]
    assert first[1]["x-amzn-requestid"] == second[1]["x-amzn-requestid"]
    assert len(runs.read_text().splitlines()) == 1
    # A different invocation id is a new request and runs again.
    third = raw_invoke(kiln_server, name, b"{}", str(uuid.uuid4()))
    assert third[0] == 200 and third[2] != first[2]
    # So does a request without one.
    fourth = raw_invoke(kiln_server, name, b"{}", None)
    assert fourth[0] == 200 and fourth[2] != first[2]
    assert len(runs.read_text().splitlines()) == 3


def test_concurrent_retry_with_same_invocation_id_runs_once(
        kiln_server: KilnServer, lambda_client: Any, shared_dir: Path) -> None:
    name = create_python_function(lambda_client, COUNTING,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    runs = shared_dir / "runs"
    invocation_id = str(uuid.uuid4())
    results: list[tuple[int, dict[str, str], bytes]] = []

    def call() -> None:
        results.append(raw_invoke(kiln_server, name, b'{"sleep": 0.5}', invocation_id))

    first = threading.Thread(target=call)
    first.start()
    assert wait_for(runs.exists), "first attempt never started"
    call()  # the retry arrives while the first attempt is still running
    first.join(30)
    assert len(results) == 2
    assert results[0][0] == results[1][0] == 200
    assert results[0][2] == results[1][2]
    assert len(runs.read_text().splitlines()) == 1


def test_tail_log_of_cold_start_begins_with_start(lambda_client: Any) -> None:
    source = """
print("init-phase output")

def handler(event, context):
    print("invoke-phase output")
    return 1
"""
    name = create_python_function(lambda_client, source)
    response, _ = invoke(lambda_client, name, {}, LogType="Tail")
    text = base64.b64decode(response["LogResult"]).decode()
    assert text.startswith(f"START RequestId: {response['ResponseMetadata']['RequestId']} ")
    assert "invoke-phase output" in text
    assert "Init Duration" in text.splitlines()[-1]


# -- payload limits --------------------------------------------------------------------------------

def test_response_over_6mb_is_function_response_size_too_large(lambda_client: Any) -> None:
    source = """
def handler(event, context):
    if event.get("big"):
        return "x" * (6 * 1024 * 1024 + 200)
    return context.log_stream_name
"""
    name = create_python_function(lambda_client, source, MemorySize=512)
    _, env = invoke(lambda_client, name, {})
    response, body = invoke(lambda_client, name, {"big": True})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Function.ResponseSizeTooLarge"
    assert body["errorMessage"] == ("Response payload size exceeded maximum allowed payload "
                                    "size (6291556 bytes).")
    # The runtime was told (413) and carries on: the same environment serves the next invoke.
    response, again = invoke(lambda_client, name, {})
    assert "FunctionError" not in response and again == env


def test_oversized_payloads_are_413_before_running(lambda_client: Any,
                                                  shared_dir: Path) -> None:
    source = """
import os

def handler(event, context):
    open(os.path.join(os.environ["OUT_DIR"], "ran"), "w").close()
"""
    name = create_python_function(lambda_client, source,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    sync = json.dumps({"s": "x" * 6_291_456}).encode()
    event = json.dumps({"s": "x" * 1_048_576}).encode()
    for invocation_type, payload in (("RequestResponse", sync), ("Event", event)):
        # What AWS answers (botocore's model has no class for it, so it is a ClientError).
        with pytest.raises(ClientError) as raised:
            lambda_client.invoke(FunctionName=name, InvocationType=invocation_type,
                                 Payload=payload)
        error = raised.value.response
        assert error["Error"]["Code"] == "RequestEntityTooLargeException"
        assert error["ResponseMetadata"]["HTTPStatusCode"] == 413
    time.sleep(0.3)
    assert not (shared_dir / "ran").exists()
    # Just under the async limit is fine.
    ok = json.dumps({"s": "x" * 1000}).encode()
    assert lambda_client.invoke(FunctionName=name, InvocationType="Event",
                                Payload=ok)["StatusCode"] == 202
    assert wait_for((shared_dir / "ran").exists)


def test_invalid_json_payload_is_rejected(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    with pytest.raises(lambda_client.exceptions.InvalidRequestContentException):
        lambda_client.invoke(FunctionName=name, Payload=b"{not json")


# -- the AWS CLI -----------------------------------------------------------------------------------

def test_aws_cli_invoke_with_tail(kiln_server: KilnServer, lambda_client: Any,
                                  tmp_path: Path) -> None:
    name = create_python_function(lambda_client, ECHO)
    out = tmp_path / "out.json"
    aws = Path(sys.executable).with_name("aws")
    completed = subprocess.run(
        [str(aws), "lambda", "invoke", "--endpoint-url", kiln_server.url, "--region",
         "us-east-1", "--function-name", name, "--payload", '{"n": 5}',
         "--log-type", "Tail", str(out)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "kiln"})
    assert completed.returncode == 0, completed.stderr
    meta = json.loads(completed.stdout)
    assert meta["StatusCode"] == 200 and meta["ExecutedVersion"] == "$LATEST"
    assert "echo-line 5" in base64.b64decode(meta["LogResult"]).decode()
    assert json.loads(out.read_text())["event"] == {"n": 5}


def test_accepted_event_survives_a_server_crash(tmp_path: Path) -> None:
    """An Event is committed before its 202: a kill -9 before it ran does not lose it."""
    out = make_shared(tmp_path / "out")
    source = """
import os, time

# A held INIT keeps the event from running until the test lets go.
deadline = time.time() + 8
while os.path.exists(os.path.join(os.environ["OUT_DIR"], "hold")) and time.time() < deadline:
    time.sleep(0.02)

def handler(event, context):
    with open(os.path.join(os.environ["OUT_DIR"], "runs"), "a") as runs:
        runs.write(event["token"] + "\\n")
"""
    hold = out / "hold"
    hold.touch()
    data = tmp_path / "data"
    server = start_server(data, KILN_SANDBOX_SHARED_DIRS=str(out))
    try:
        client = server.client()
        name = create_python_function(client, source,
                                      Environment={"Variables": {"OUT_DIR": str(out)}})
        response = client.invoke(FunctionName=name, InvocationType="Event",
                                 Payload=b'{"token": "t1"}')
        assert response["StatusCode"] == 202
    finally:
        server.stop(signal.SIGKILL)
    hold.unlink()
    restarted = start_server(data, KILN_SANDBOX_SHARED_DIRS=str(out))
    try:
        assert wait_for((out / "runs").exists), "the accepted event was lost"
        time.sleep(0.3)
        assert (out / "runs").read_text() == "t1\n"
    finally:
        restarted.stop()
