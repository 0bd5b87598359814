"""Clean shutdown: on SIGTERM/SIGINT an in-flight sync invoke finishes, the server exits 0 and no
runtime process outlives it."""

from __future__ import annotations

import json
import signal
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import create_python_function, process_gone, start_server, wait_for

SLOW = """
import os, subprocess, time

def handler(event, context):
    if event.get("spawn"):
        child = subprocess.Popen(["sleep", "300"])
        return {"pid": os.getpid(), "child": child.pid}
    if event.get("sleep"):
        open(os.path.join(os.environ["OUT_DIR"], "started"), "w").close()
        time.sleep(event["sleep"])
    return {"pid": os.getpid(), "slept": event.get("sleep", 0)}
"""


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_lets_in_flight_invoke_finish(tmp_path: Path, signum: int) -> None:
    server = start_server(tmp_path / "data")
    try:
        client = server.client()
        out = tmp_path / "out"
        out.mkdir()
        variables = {"Variables": {"OUT_DIR": str(out)}}
        slow = create_python_function(client, SLOW, Timeout=10, Environment=variables)
        idle = create_python_function(client, SLOW, Environment=variables)
        # An idle, warm (frozen) environment of another function.
        spawned = json.loads(client.invoke(FunctionName=idle,
                                           Payload=b'{"spawn": true}')["Payload"].read())
        idle_pid, child_pid = spawned["pid"], spawned["child"]

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
        assert process_gone(body["pid"]), "the invoked runtime outlived the server"
        assert process_gone(idle_pid), "an idle runtime outlived the server"
        assert wait_for(lambda: process_gone(child_pid), 10), \
            "a function's child process outlived the server"
        assert returncode == 0, server.output()
    finally:
        server.stop(signal.SIGKILL)
