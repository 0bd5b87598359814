"""Clean shutdown: on SIGTERM/SIGINT an in-flight sync invoke finishes, the server exits 0 and no
runtime process outlives it."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    create_python_function,
    environment_gone,
    environment_pids,
    make_shared,
    start_server,
    wait_for,
)

SLOW = """
import os, subprocess, time

def handler(event, context):
    if event.get("spawn"):
        subprocess.Popen(["sleep", "300"])
    if event.get("sleep"):
        open(os.path.join(os.environ["OUT_DIR"], "started"), "w").close()
        time.sleep(event["sleep"])
    return {"env": context.log_stream_name, "slept": event.get("sleep", 0)}
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_in_flight_invoke_finish(tmp_path: Path, signum: int) -> None:
    out = make_shared(tmp_path / "out")
    server = start_server(tmp_path / "data", KILN_SANDBOX_SHARED_DIRS=str(out))
    try:
        client = server.client()
        variables = {"Variables": {"OUT_DIR": str(out)}}
        slow = create_python_function(client, SLOW, Timeout=10, Environment=variables)
        idle = create_python_function(client, SLOW, Environment=variables)
        # An idle, warm (frozen) environment of another function.
        spawned = json.loads(client.invoke(FunctionName=idle,
                                           Payload=b'{"spawn": true}')["Payload"].read())
        idle_env = spawned["env"]
        # Its runtime and the process it started (waited for: under load a /proc scan has
        # been seen to miss a process the invoke's answer had already outrun).
        assert wait_for(lambda: len(environment_pids(idle_env)) == 2, timeout=10)

        def call() -> tuple[dict[str, Any], Any]:
            response = client.invoke(FunctionName=slow, Payload=b'{"sleep": 2}')
            return response, json.loads(response["Payload"].read())

        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(call)
            assert wait_for((out / "started").exists), "the slow invoke never started"
            server.process.send_signal(signum)
            response, body = pending.result(timeout=30)
        returncode = server.process.wait(30)

        assert response["StatusCode"] == 200
        assert "FunctionError" not in response, body
        assert body["slept"] == 2
        assert environment_gone(body["env"]), "the invoked runtime outlived the server"
        assert environment_gone(idle_env), \
            "an idle runtime, or a process it started, outlived the server"
        assert returncode == 0, server.output()
    finally:
        server.stop(signal.SIGKILL)
