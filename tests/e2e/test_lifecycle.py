"""Execution-environment lifecycle, observed through each environment's identity (its log
stream, and a token drawn at INIT) and, on the host, its processes: warm reuse, one new
environment per concurrent invoke, retirement on code/configuration updates, idle reaping."""

from __future__ import annotations

import json
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from tests.conftest import (
    create_python_function,
    environment_gone,
    environment_pids,
    make_zip,
    start_server,
    wait_for,
)

# "env" names the execution environment (Lambda's log stream is one per environment); "init"
# is drawn once per INIT, so an unchanged value shows the module state survived.
IDENTITY = """
import os
import uuid

INIT_TOKEN = uuid.uuid4().hex

def handler(event, context):
    return {"env": context.log_stream_name, "init": INIT_TOKEN, "version": "v1",
            "setting": os.environ.get("SETTING")}
"""


def invoke(client: Any, name: str, payload: Any = None) -> dict[str, Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}).encode())
    assert response["StatusCode"] == 200
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return dict(body)


def test_warm_reuse_keeps_the_environment(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, IDENTITY)
    first = invoke(lambda_client, name)
    second = invoke(lambda_client, name)
    third = invoke(lambda_client, name)
    assert first["env"] == second["env"] == third["env"]
    # INIT ran once: module state from the first start is still there.
    assert first["init"] == second["init"] == third["init"]
    assert len(environment_pids(first["env"])) == 1  # one runtime process on the host


def test_warm_reuse_shows_init_duration_only_once(lambda_client: Any) -> None:
    import base64

    name = create_python_function(lambda_client, IDENTITY)
    reports = []
    for _ in range(3):
        response = lambda_client.invoke(FunctionName=name, LogType="Tail")
        reports.append(base64.b64decode(response["LogResult"]).decode().splitlines()[-1])
    assert ["Init Duration" in report for report in reports] == [True, False, False]


CONCURRENT = """
import os, time

def handler(event, context):
    # Rendezvous: every invocation waits until all of them are running at the same time,
    # which can only happen if each one got its own environment.
    directory = os.environ["OUT_DIR"]
    open(os.path.join(directory, context.log_stream_name.replace("/", "_")), "w").close()
    deadline = time.time() + 8
    while len(os.listdir(directory)) < event["n"] and time.time() < deadline:
        time.sleep(0.02)
    return {"env": context.log_stream_name, "saw": len(os.listdir(directory))}
"""


def test_concurrent_invokes_get_distinct_environments(lambda_client: Any,
                                                      shared_dir: Path) -> None:
    n = 4
    name = create_python_function(lambda_client, CONCURRENT, Timeout=15,
                                  Environment={"Variables": {"OUT_DIR": str(shared_dir)}})
    with ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(invoke, lambda_client, name, {"n": n}) for _ in range(n)]
        results = [future.result(timeout=60) for future in futures]
    assert len({result["env"] for result in results}) == n
    assert all(result["saw"] == n for result in results)
    # They all stay warm: a later invoke reuses one of them instead of starting another.
    later = invoke(lambda_client, name, {"n": 0})
    assert later["env"] in {result["env"] for result in results}
    assert len(os.listdir(shared_dir)) == n


def test_update_function_code_retires_environments(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, IDENTITY)
    before = invoke(lambda_client, name)
    assert before["version"] == "v1"
    lambda_client.update_function_code(
        FunctionName=name, ZipFile=make_zip({"app.py": IDENTITY.replace('"v1"', '"v2"')}))
    lambda_client.get_waiter("function_updated").wait(
        FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    after = invoke(lambda_client, name)
    assert after["version"] == "v2"
    assert after["env"] != before["env"]
    assert wait_for(lambda: environment_gone(before["env"]), 10), "old environment still running"


def test_update_function_configuration_retires_environments(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, IDENTITY,
                                  Environment={"Variables": {"SETTING": "a"}})
    before = invoke(lambda_client, name)
    assert before["setting"] == "a"
    lambda_client.update_function_configuration(
        FunctionName=name, Environment={"Variables": {"SETTING": "b"}})
    lambda_client.get_waiter("function_updated").wait(
        FunctionName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    after = invoke(lambda_client, name)
    assert after["setting"] == "b"
    assert after["env"] != before["env"]
    assert wait_for(lambda: environment_gone(before["env"]), 10), "old environment still running"


def test_update_during_invoke_retires_after_it(lambda_client: Any, shared_dir: Path) -> None:
    source = """
import os, time

def handler(event, context):
    open(os.path.join(os.environ["OUT_DIR"], "started"), "w").close()
    time.sleep(event.get("sleep", 0))
    return {"env": context.log_stream_name, "setting": os.environ.get("SETTING")}
"""
    name = create_python_function(
        lambda_client, source, Environment={"Variables": {"OUT_DIR": str(shared_dir),
                                                          "SETTING": "a"}})
    results: list[dict[str, Any]] = []
    slow = threading.Thread(target=lambda: results.append(
        invoke(lambda_client, name, {"sleep": 1})))
    slow.start()
    assert wait_for((shared_dir / "started").exists)
    lambda_client.update_function_configuration(
        FunctionName=name, Environment={"Variables": {"OUT_DIR": str(shared_dir),
                                                      "SETTING": "b"}})
    slow.join(30)
    # The in-flight invoke finished on the old environment ...
    assert results and results[0]["setting"] == "a"
    # ... which then was not reused.
    after = invoke(lambda_client, name)
    assert after["setting"] == "b" and after["env"] != results[0]["env"]
    assert wait_for(lambda: environment_gone(results[0]["env"]), 10)


def test_delete_function_destroys_its_environments(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, IDENTITY)
    env = invoke(lambda_client, name)["env"]
    assert environment_pids(env)
    lambda_client.delete_function(FunctionName=name)
    assert wait_for(lambda: environment_gone(env), 10), "deleted function's runtime still running"


def test_idle_environments_are_reaped_after_keep_alive(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", KILN_KEEP_ALIVE_SECONDS="1")
    try:
        client = server.client()
        name = create_python_function(client, IDENTITY)
        first = invoke(client, name)["env"]
        # Nothing invokes it; after the keep-alive the reaper destroys the environment.
        assert wait_for(lambda: environment_gone(first), 10), "idle environment was never reaped"
        second = invoke(client, name)["env"]
        assert second != first
    finally:
        server.stop()


def test_idle_environment_that_died_is_not_reused(tmp_path: Path) -> None:
    """A runtime killed from outside while idle is replaced, not handed the next event.

    Idle environments are frozen after a short while, and a frozen process only dies once
    thawed: this server keeps them unfrozen so that the kill takes effect while idle."""
    server = start_server(tmp_path / "data", KILN_FREEZE_AFTER_SECONDS="600")
    try:
        client = server.client()
        name = create_python_function(client, IDENTITY)
        first = invoke(client, name)["env"]
        (runtime,) = environment_pids(first)
        os.kill(runtime, signal.SIGKILL)
        assert wait_for(lambda: environment_gone(first), 10)
        # A request's round trip lets the server's event loop handle the exit it was told of.
        client.get_function(FunctionName=name)
        second = invoke(client, name)
        assert second["env"] != first
    finally:
        server.stop()
