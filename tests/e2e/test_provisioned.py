"""Provisioned concurrency end to end through boto3: Put/Get/Delete/ListProvisionedConcurrency
Configs, environments initialised ahead (INIT observed before the first invoke), used first and
kept warm past the keep-alive, aliases, INIT failures, and how provisioned concurrency counts
against reserved and account concurrency."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    expect_error,
    start_server,
    unique_name,
    wait_for,
)

# Module-level state is the environment's INIT: the same token and INIT stamp across invokes
# means the same environment (pids repeat across isolated environments, each in its own PID
# namespace); its initialization type says who started it.
APP = """
import os
import time

INIT_TOKEN = os.urandom(8).hex()
INIT_AT = time.time()
print("INIT", INIT_TOKEN, flush=True)
calls = 0


def handler(event, context):
    global calls
    calls += 1
    time.sleep(event.get("sleep", 0))
    return {"env": INIT_TOKEN, "init_at": INIT_AT, "calls": calls,
            "init_type": os.environ["AWS_LAMBDA_INITIALIZATION_TYPE"],
            "version": context.function_version}
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    """A small account (20) with a 1 s keep-alive, so reaping is observable."""
    started = start_server(tmp_path_factory.mktemp("provisioned") / "data",
                           KILN_KEEP_ALIVE_SECONDS="1", KILN_ACCOUNT_CONCURRENCY="20")
    yield started
    started.stop()


@pytest.fixture(scope="module")
def client(server: KilnServer) -> Any:
    return server.client()


def invoke(client: Any, name: str, qualifier: str | None = None,
           **event: Any) -> tuple[dict[str, Any], str]:
    """(the handler's answer, the invocation's REPORT line)."""
    kwargs = {"Qualifier": qualifier} if qualifier else {}
    response = client.invoke(FunctionName=name, Payload=json.dumps(event), LogType="Tail",
                             **kwargs)
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    log = base64.b64decode(response["LogResult"]).decode()
    return body, next(line for line in log.splitlines() if line.startswith("REPORT"))


def wait_status(client: Any, name: str, qualifier: str, status: str) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def reached() -> bool:
        found.update(client.get_provisioned_concurrency_config(FunctionName=name,
                                                               Qualifier=qualifier))
        return bool(found["Status"] == status)

    assert wait_for(reached, timeout=30), found
    return found


def test_environments_are_initialised_ahead_used_first_and_kept_warm(client: Any) -> None:
    name = create_python_function(client, APP)
    version = client.publish_version(FunctionName=name)["Version"]
    put = client.put_provisioned_concurrency_config(
        FunctionName=name, Qualifier=version, ProvisionedConcurrentExecutions=2)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 202
    assert put["RequestedProvisionedConcurrentExecutions"] == 2
    assert put["Status"] in ("IN_PROGRESS", "READY")
    ready = wait_status(client, name, version, "READY")
    assert ready["AvailableProvisionedConcurrentExecutions"] == 2
    assert ready["AllocatedProvisionedConcurrentExecutions"] == 2
    assert "StatusReason" not in ready

    # The first invoke meets an environment whose INIT already ran: no Init Duration.
    first, report = invoke(client, name, version)
    assert "Init Duration" not in report, report
    assert first["init_type"] == "provisioned-concurrency"
    assert (first["calls"], first["version"]) == (1, version)
    second, report = invoke(client, name, version)
    assert "Init Duration" not in report
    assert (second["env"], second["init_at"], second["calls"]) == (
        first["env"], first["init_at"], 2)

    # Two at once: both provisioned environments, no cold start; a third spills on demand.
    with ThreadPoolExecutor(3) as pool:
        pair = list(pool.map(lambda _: invoke(client, name, version, sleep=1.5), range(2)))
    assert {body["init_type"] for body, _ in pair} == {"provisioned-concurrency"}
    assert len({body["env"] for body, _ in pair}) == 2
    assert not any("Init Duration" in report for _, report in pair)
    with ThreadPoolExecutor(3) as pool:
        trio = list(pool.map(lambda _: invoke(client, name, version, sleep=1.5), range(3)))
    types = sorted(body["init_type"] for body, _ in trio)
    assert types == ["on-demand", "provisioned-concurrency", "provisioned-concurrency"]
    spilled = next(report for body, report in trio if body["init_type"] == "on-demand")
    assert "Init Duration" in spilled
    provisioned_envs = {body["env"] for body, _ in pair}
    on_demand_env = next(body["env"] for body, _ in trio if body["init_type"] == "on-demand")

    # Past the 1 s keep-alive the on-demand environment is reaped; provisioned ones stay.
    on_demand, _ = invoke(client, name)  # $LATEST: on demand
    assert on_demand["init_type"] == "on-demand"

    def latest_reaped() -> bool:
        time.sleep(2)  # idle past the keep-alive (an invoke would keep it warm)
        body, report = invoke(client, name)
        return bool(body["env"] != on_demand["env"] and "Init Duration" in report)

    assert any(latest_reaped() for _ in range(10))
    with ThreadPoolExecutor(2) as pool:
        later = list(pool.map(lambda _: invoke(client, name, version, sleep=1.0), range(2)))
    assert {body["env"] for body, _ in later} == provisioned_envs
    assert on_demand_env not in provisioned_envs
    assert not any("Init Duration" in report for _, report in later)

    listed = client.list_provisioned_concurrency_configs(FunctionName=name)
    assert [c["FunctionArn"].rsplit(":", 1)[1] for c in
            listed["ProvisionedConcurrencyConfigs"]] == [version]
    client.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=version)
    client.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=version)
    expect_error(client, "ProvisionedConcurrencyConfigNotFoundException", 404,
                 client.get_provisioned_concurrency_config, FunctionName=name,
                 Qualifier=version)
    assert client.list_provisioned_concurrency_configs(
        FunctionName=name)["ProvisionedConcurrencyConfigs"] == []
    client.delete_function(FunctionName=name)


def test_alias_provisioned_concurrency_follows_the_alias(client: Any) -> None:
    name = create_python_function(client, APP)
    v1 = client.publish_version(FunctionName=name)["Version"]
    client.update_function_configuration(FunctionName=name, MemorySize=256)
    v2 = client.publish_version(FunctionName=name)["Version"]
    client.create_alias(FunctionName=name, Name="live", FunctionVersion=v1)
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier="live",
                                              ProvisionedConcurrentExecutions=1)
    wait_status(client, name, "live", "READY")
    body, report = invoke(client, name, "live")
    assert (body["version"], body["init_type"]) == (v1, "provisioned-concurrency")
    assert "Init Duration" not in report

    client.update_alias(FunctionName=name, Name="live", FunctionVersion=v2)
    ready = wait_status(client, name, "live", "READY")
    assert ready["AvailableProvisionedConcurrentExecutions"] == 1
    body, report = invoke(client, name, "live")
    assert (body["version"], body["init_type"]) == (v2, "provisioned-concurrency")
    assert "Init Duration" not in report
    body, _ = invoke(client, name, v1)  # v1 lost its provisioned environment
    assert body["init_type"] == "on-demand"

    configs = client.list_provisioned_concurrency_configs(
        FunctionName=name)["ProvisionedConcurrencyConfigs"]
    assert [c["FunctionArn"] for c in configs] == [
        f"arn:aws:lambda:us-east-1:000000000000:function:{name}:live"]
    client.delete_alias(FunctionName=name, Name="live")
    assert client.list_provisioned_concurrency_configs(
        FunctionName=name)["ProvisionedConcurrencyConfigs"] == []
    client.delete_function(FunctionName=name)


def test_init_failure_fails_the_configuration(client: Any) -> None:
    name = create_python_function(client, "raise RuntimeError('no database')\n")
    version = client.publish_version(FunctionName=name)["Version"]
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier=version,
                                              ProvisionedConcurrentExecutions=1)
    failed = wait_status(client, name, version, "FAILED")
    assert failed["StatusReason"].startswith("FUNCTION_ERROR_INIT_FAILURE")
    assert "no database" in failed["StatusReason"]
    assert failed["AvailableProvisionedConcurrentExecutions"] == 0
    client.delete_function(FunctionName=name)


def test_provisioned_concurrency_errors(client: Any, server: KilnServer) -> None:
    name = create_python_function(client, APP)
    version = client.publish_version(FunctionName=name)["Version"]
    invalid = "InvalidParameterValueException"
    error = expect_error(client, invalid, 400, client.put_provisioned_concurrency_config,
                         FunctionName=name, Qualifier="$LATEST",
                         ProvisionedConcurrentExecutions=1)
    assert error.response["Error"]["Message"] == (
        "Provisioned Concurrency Configs cannot be applied to unpublished function versions.")
    for call in (client.get_provisioned_concurrency_config,
                 client.delete_provisioned_concurrency_config):
        expect_error(client, invalid, 400, call, FunctionName=name, Qualifier="$LATEST")
    expect_error(client, "ResourceNotFoundException", 404,
                 client.put_provisioned_concurrency_config, FunctionName=name, Qualifier="9",
                 ProvisionedConcurrentExecutions=1)
    expect_error(client, "ResourceNotFoundException", 404,
                 client.put_provisioned_concurrency_config, FunctionName=name,
                 Qualifier="nope", ProvisionedConcurrentExecutions=1)
    expect_error(client, "ResourceNotFoundException", 404,
                 client.put_provisioned_concurrency_config, FunctionName=unique_name("gone"),
                 Qualifier="1", ProvisionedConcurrentExecutions=1)
    expect_error(client, "ResourceNotFoundException", 404,
                 client.list_provisioned_concurrency_configs, FunctionName=unique_name("gone"))
    expect_error(client, "ProvisionedConcurrencyConfigNotFoundException", 404,
                 client.get_provisioned_concurrency_config, FunctionName=name,
                 Qualifier=version)
    # boto3 refuses 0 itself; the server refuses it too.
    raw = httpx.put(f"{server.url}/2019-09-30/functions/{name}/provisioned-concurrency",
                    params={"Qualifier": version},
                    json={"ProvisionedConcurrentExecutions": 0})
    assert (raw.status_code, raw.headers["x-amzn-errortype"]) == (400, invalid)

    # A version and an alias pointing to it cannot both have provisioned concurrency.
    client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier=version,
                                              ProvisionedConcurrentExecutions=1)
    expect_error(client, "ResourceConflictException", 409,
                 client.put_provisioned_concurrency_config, FunctionName=name,
                 Qualifier="live", ProvisionedConcurrentExecutions=1)
    client.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=version)
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier="live",
                                              ProvisionedConcurrentExecutions=1)
    expect_error(client, "ResourceConflictException", 409,
                 client.put_provisioned_concurrency_config, FunctionName=name,
                 Qualifier=version, ProvisionedConcurrentExecutions=1)

    # Within the function's reservation, which cannot then shrink below it.
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=2)
    error = expect_error(client, invalid, 400, client.put_provisioned_concurrency_config,
                         FunctionName=name, Qualifier="live",
                         ProvisionedConcurrentExecutions=3)
    assert "reservedConcurrentExecution" in error.response["Error"]["Message"]
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier="live",
                                              ProvisionedConcurrentExecutions=2)
    expect_error(client, invalid, 400, client.put_function_concurrency, FunctionName=name,
                 ReservedConcurrentExecutions=1)
    assert client.get_provisioned_concurrency_config(
        FunctionName=name, Qualifier="live")["RequestedProvisionedConcurrentExecutions"] == 2
    client.delete_function(FunctionName=name)


def test_provisioned_concurrency_is_carved_from_the_unreserved_pool(client: Any) -> None:
    """Account of 20 (minimum unreserved 2): another function reserves 15, this one
    provisions 3 without a reservation, which leaves 2 for everybody else."""
    other = create_python_function(client, APP)
    client.put_function_concurrency(FunctionName=other, ReservedConcurrentExecutions=15)
    name = create_python_function(client, APP)
    version = client.publish_version(FunctionName=name)["Version"]
    error = expect_error(client, "InvalidParameterValueException", 400,
                         client.put_provisioned_concurrency_config, FunctionName=name,
                         Qualifier=version, ProvisionedConcurrentExecutions=4)
    assert "below its minimum value of [2]" in error.response["Error"]["Message"]
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier=version,
                                              ProvisionedConcurrentExecutions=3)
    limits = client.get_account_settings()["AccountLimit"]
    assert limits["UnreservedConcurrentExecutions"] == 20 - 15 - 3
    third = create_python_function(client, APP)
    expect_error(client, "InvalidParameterValueException", 400, client.put_function_concurrency,
                 FunctionName=third, ReservedConcurrentExecutions=1)
    wait_status(client, name, version, "READY")

    # Six at once: three on provisioned environments, two from the pool, one throttled.
    def attempt(_: int) -> str:
        try:
            return invoke(client, name, version, sleep=2)[0]["init_type"]
        except client.exceptions.TooManyRequestsException as exc:
            return str(exc.response["Reason"])

    with ThreadPoolExecutor(6) as pool:
        outcomes = sorted(pool.map(attempt, range(6)))
    assert outcomes == ["ConcurrentInvocationLimitExceeded", "on-demand", "on-demand",
                        "provisioned-concurrency", "provisioned-concurrency",
                        "provisioned-concurrency"]
    for function in (name, other, third):
        client.delete_function(FunctionName=function)
    assert client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"] == 20


def test_provisioned_environments_come_back_after_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    first = start_server(data)
    try:
        client = first.client()
        name = create_python_function(client, APP)
        version = client.publish_version(FunctionName=name)["Version"]
        client.put_provisioned_concurrency_config(FunctionName=name, Qualifier=version,
                                                  ProvisionedConcurrentExecutions=1)
        wait_status(client, name, version, "READY")
    finally:
        first.stop()
    second = start_server(data)
    try:
        client = second.client()
        wait_status(client, name, version, "READY")
        body, report = invoke(client, name, version)
        assert body["init_type"] == "provisioned-concurrency"
        assert "Init Duration" not in report
    finally:
        second.stop()
