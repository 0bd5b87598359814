"""Reserved concurrency end to end through boto3: Put/Get/DeleteFunctionConcurrency, the
account's unreserved pool, and throttling (TooManyRequestsException with AWS's Reason) that
holds under many concurrent callers."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    expect_error,
    start_server,
    unique_name,
)

ECHO = "def handler(event, context):\n    return event\n"
RESERVED_REASON = "ReservedFunctionConcurrentInvocationLimitExceeded"
ACCOUNT_REASON = "ConcurrentInvocationLimitExceeded"

# Each invocation registers itself in the directory it is given, notes how many invocations
# (itself included) were running at that moment, then holds until the test releases it.
HOLD = """
import fcntl, os, time

def handler(event, context):
    folder = event["dir"]
    mine = os.path.join(folder, "running-" + context.aws_request_id)
    with open(os.path.join(folder, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        open(mine, "w").close()
        running = sum(1 for n in os.listdir(folder) if n.startswith("running-"))
        with open(os.path.join(folder, "seen"), "a") as seen:
            seen.write(f"{running}\\n")
    deadline = time.monotonic() + 30
    while not os.path.exists(os.path.join(folder, "release")) and time.monotonic() < deadline:
        time.sleep(0.005)
    with open(os.path.join(folder, "lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        os.remove(mine)
    return running
"""


def unreserved(client: Any) -> int:
    return int(client.get_account_settings()["AccountLimit"]["UnreservedConcurrentExecutions"])


def running_count(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.name.startswith("running-"))


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll (bounded, so a broken server fails the test instead of hanging it)."""
    event = threading.Event()
    for _ in range(3000):
        if condition():
            return
        event.wait(0.01)
    raise AssertionError(f"timed out waiting for {what}")


def invoke_outcome(client: Any, name: str, payload: bytes) -> tuple[str, Any]:
    """("ok", result) or ("throttled", Reason)."""
    try:
        response = client.invoke(FunctionName=name, Payload=payload)
    except client.exceptions.TooManyRequestsException as exc:
        assert exc.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        return "throttled", exc.response["Reason"]
    assert "FunctionError" not in response
    return "ok", json.loads(response["Payload"].read())


# -- the API --------------------------------------------------------------------------------

def test_reserved_concurrency_api(lambda_client: Any, kiln_server: KilnServer) -> None:
    client = lambda_client
    unvalidated = kiln_server.client(parameter_validation=False)
    name = create_python_function(client, ECHO)
    limit = client.get_account_settings()["AccountLimit"]["ConcurrentExecutions"]
    before = unreserved(client)
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(
        FunctionName=name)
    assert "Concurrency" not in client.get_function(FunctionName=name)

    put = client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=5)
    assert put["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert put["ReservedConcurrentExecutions"] == 5
    assert client.get_function_concurrency(FunctionName=name)[
        "ReservedConcurrentExecutions"] == 5
    assert client.get_function(FunctionName=name)["Concurrency"] == {
        "ReservedConcurrentExecutions": 5}
    assert unreserved(client) == before - 5
    assert json.loads(client.invoke(FunctionName=name, Payload=b'"hi"')["Payload"].read()) \
        == "hi"

    # At most the account's limit less 100 can be reserved (AWS's minimum unreserved).
    room = before - 100
    assert limit >= 1000 and room > 5
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=room)
    assert unreserved(client) == 100
    error = expect_error(client, "InvalidParameterValueException", 400,
                         client.put_function_concurrency, FunctionName=name,
                         ReservedConcurrentExecutions=room + 1)
    assert error.response["Error"]["Message"] == (
        "Specified ReservedConcurrentExecutions for function decreases account's "
        "UnreservedConcurrentExecution below its minimum value of [100].")
    for bad in ({"ReservedConcurrentExecutions": -1}, {}):
        expect_error(unvalidated, "InvalidParameterValueException", 400,
                     unvalidated.put_function_concurrency, FunctionName=name, **bad)
    assert client.get_function_concurrency(FunctionName=name)[
        "ReservedConcurrentExecutions"] == room
    missing = unique_name("missing")
    for call, kwargs in ((client.put_function_concurrency, {"ReservedConcurrentExecutions": 1}),
                         (client.get_function_concurrency, {}),
                         (client.delete_function_concurrency, {})):
        expect_error(client, "ResourceNotFoundException", 404, call, FunctionName=missing,
                     **kwargs)

    deleted = client.delete_function_concurrency(FunctionName=name)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    assert "ReservedConcurrentExecutions" not in client.get_function_concurrency(
        FunctionName=name)
    assert "Concurrency" not in client.get_function(FunctionName=name)
    assert unreserved(client) == before

    # Deleting the function gives its reservation back.
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=7)
    assert unreserved(client) == before - 7
    client.delete_function(FunctionName=name)
    assert unreserved(client) == before


def test_reserved_zero_throttles_every_invoke(lambda_client: Any) -> None:
    client = lambda_client
    name = create_python_function(client, ECHO, Publish=True)
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=0)
    for kwargs in ({}, {"Qualifier": "1"}, {"LogType": "Tail"}):
        error = expect_error(client, "TooManyRequestsException", 429, client.invoke,
                             FunctionName=name, Payload=b"{}", **kwargs)
        assert error.response["Reason"] == RESERVED_REASON
        assert error.response["Error"]["Message"] == "Rate Exceeded."
    client.delete_function_concurrency(FunctionName=name)
    assert json.loads(client.invoke(FunctionName=name, Payload=b"1")["Payload"].read()) == 1
    client.delete_function(FunctionName=name)


# -- throttling under load ------------------------------------------------------------------

def test_reserved_concurrency_holds_under_50_concurrent_callers(
        kiln_server: KilnServer, shared_dir: Path) -> None:
    client = kiln_server.client(max_pool_connections=64)
    name = create_python_function(client, HOLD, Timeout=60)
    client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=2)
    payload = json.dumps({"dir": str(shared_dir)}).encode()
    callers = 50
    with ThreadPoolExecutor(callers) as pool:
        futures: list[Future[tuple[str, Any]]] = [
            pool.submit(invoke_outcome, client, name, payload) for _ in range(callers)]
        # The two admitted invocations hold until released, so every other caller meets a
        # full reservation. Release once all others have answered and both admitted ones
        # are running (bounded wait: a broken server fails below instead of hanging).
        pending = set(futures)
        for _ in range(300):
            if len(pending) <= 2 and running_count(shared_dir) >= 2:
                break
            if pending:
                _, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
            else:
                threading.Event().wait(0.1)
        (shared_dir / "release").touch()
        outcomes = [future.result(timeout=60) for future in futures]

    kinds = Counter(kind for kind, _ in outcomes)
    reasons = Counter(value for kind, value in outcomes if kind == "throttled")
    assert kinds == {"ok": 2, "throttled": callers - 2}, kinds
    assert reasons == {RESERVED_REASON: callers - 2}
    seen = [int(line) for line in (shared_dir / "seen").read_text().split()]
    assert len(seen) == 2  # the function itself ran exactly twice ...
    assert max(seen) == 2  # ... at the same time, and never more than the reservation
    assert running_count(shared_dir) == 0
    # The leases went back: the function runs again.
    assert invoke_outcome(client, name, payload)[0] == "ok"
    client.delete_function(FunctionName=name)


@pytest.fixture(scope="module")
def small_account(tmp_path_factory: pytest.TempPathFactory,
                  shared_root: Path) -> Iterator[KilnServer]:
    """An account limited to 20 concurrent executions (minimum unreserved: 2)."""
    server = start_server(tmp_path_factory.mktemp("small-account") / "data",
                          KILN_ACCOUNT_CONCURRENCY="20", KILN_SANDBOX_SHARED_DIRS=str(shared_root))
    yield server
    server.stop()


def test_unreserved_functions_cannot_use_reserved_capacity(small_account: KilnServer,
                                                           shared_dir: Path) -> None:
    client = small_account.client(max_pool_connections=16)
    reserved = create_python_function(client, ECHO)
    shared = create_python_function(client, HOLD, Timeout=60)
    assert unreserved(client) == 20
    error = expect_error(client, "InvalidParameterValueException", 400,
                         client.put_function_concurrency, FunctionName=reserved,
                         ReservedConcurrentExecutions=19)
    assert "below its minimum value of [2]." in error.response["Error"]["Message"]
    client.put_function_concurrency(FunctionName=reserved, ReservedConcurrentExecutions=18)
    assert unreserved(client) == 2

    payload = json.dumps({"dir": str(shared_dir)}).encode()
    with ThreadPoolExecutor(2) as pool:
        holders = [pool.submit(invoke_outcome, client, shared, payload) for _ in range(2)]
        try:
            wait_until(lambda: running_count(shared_dir) == 2
                       or any(f.done() for f in holders), "two running invocations")
            assert running_count(shared_dir) == 2
            # The unreserved pool (2) is full: a third unreserved invoke is throttled for the
            # account, although 18 executions stand idle in another function's reservation.
            assert invoke_outcome(client, shared, payload) == ("throttled", ACCOUNT_REASON)
            other = create_python_function(client, ECHO)
            assert invoke_outcome(client, other, b'"x"') == ("throttled", ACCOUNT_REASON)
            # The reserved function still has its whole share.
            assert invoke_outcome(client, reserved, b'"mine"') == ("ok", "mine")
        finally:
            (shared_dir / "release").touch()
        assert [f.result(timeout=60)[0] for f in holders] == ["ok", "ok"]
    assert invoke_outcome(client, other, b'"x"') == ("ok", "x")

    # Reservations survive a restart.
    small_account.stop()
    restarted = start_server(small_account.data_dir, port=small_account.port,
                             KILN_ACCOUNT_CONCURRENCY="20")
    small_account.process = restarted.process
    client = restarted.client()
    assert client.get_function_concurrency(FunctionName=reserved)[
        "ReservedConcurrentExecutions"] == 18
    assert unreserved(client) == 2
    client.delete_function_concurrency(FunctionName=reserved)
    assert unreserved(client) == 20
