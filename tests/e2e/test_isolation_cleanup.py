"""Nothing of an execution environment outlives it (through a started ``kiln serve``): its
processes (the runtime, what it started, the environment's init), its cgroups, its mounts and
files are gone after a delete, a timeout kill, an OOM kill, and after ``kill -9`` of the server
(and of its launcher) followed by a restart, whose start-up sweep removes what was left."""

from __future__ import annotations

import json
import os
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    environment_pids,
    process_gone,
    start_server,
    wait_for,
)

SOURCE = """
import os, subprocess, time

def handler(event, context):
    if event.get("spawn"):
        subprocess.Popen(["sleep", "300"])
    if "sleep" in event:
        time.sleep(event["sleep"])
    if "alloc_mb" in event:
        bytearray(event["alloc_mb"] * 2**20)
    return {"env": context.log_stream_name}
"""


@dataclass
class Footprint:
    """What an environment holds on the host, found from its runtime's processes."""

    pids: list[int]
    cgroups: list[Path]

    def gone(self) -> bool:
        return not self.left()

    def left(self) -> list[str]:
        """What is still there."""
        return [*(f"process {pid}" for pid in self.pids if not process_gone(pid)),
                *(f"cgroup {path}" for path in self.cgroups if path.exists())]

    def frozen(self) -> bool:
        for path in self.cgroups:
            if (path / "freezer.state").exists():
                return (path / "freezer.state").read_text().strip() == "FROZEN"
            if (path / "cgroup.events").exists():
                return "frozen 1" in (path / "cgroup.events").read_text().splitlines()
        return False


def _cgroup_mounts() -> list[tuple[Path, set[str], bool]]:
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fstype, _, options = right.split()[:3]
        if fstype in ("cgroup", "cgroup2"):
            mounts.append((Path(left.split()[4]), set(options.split(",")), fstype == "cgroup2"))
    return mounts


def footprint(log_stream: str) -> Footprint:
    runtime = environment_pids(log_stream)
    assert runtime, f"no process of {log_stream}"
    parents = {int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
               for pid in runtime}
    cgroups = set()
    mounts = _cgroup_mounts()
    for line in Path(f"/proc/{runtime[0]}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for point, options, v2 in mounts:
            if (v2 and not controllers) or (not v2 and set(controllers.split(",")) <= options
                                            and controllers):
                candidate = point / path.lstrip("/")
                if "/kiln/" in str(candidate) and candidate.is_dir():
                    cgroups.add(candidate)
    assert cgroups, "the environment has no cgroup of its own"
    return Footprint(sorted({*runtime, *parents}), sorted(cgroups))


def mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p.startswith(str(path))]


def call(client: Any, name: str, event: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    response = client.invoke(FunctionName=name, Payload=json.dumps(event).encode())
    return response, json.loads(response["Payload"].read())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    started = start_server(tmp_path_factory.mktemp("cleanup") / "data")
    yield started
    started.stop()


def test_delete_leaves_nothing(server: KilnServer) -> None:
    client = server.client()
    name = create_python_function(client, SOURCE)
    _, body = call(client, name, {"spawn": True})
    left = footprint(body["env"])
    assert len(left.pids) == 3  # the init, the runtime, the process it started
    client.delete_function(FunctionName=name)
    assert wait_for(left.gone, 10), left
    assert mounts_under(server.data_dir) == []


def test_timeout_and_oom_kills_leave_nothing(server: KilnServer) -> None:
    client = server.client()
    for timeout, event, error in ((1, {"sleep": 30}, "Sandbox.Timedout"),
                                  (10, {"alloc_mb": 256}, "Runtime.OutOfMemory")):
        name = create_python_function(client, SOURCE, Timeout=timeout, MemorySize=128)
        _, body = call(client, name, {"spawn": True})
        left = footprint(body["env"])
        _, body = call(client, name, event)
        assert body["errorType"] == error, body
        assert wait_for(left.gone, 10), (error, left.left())
        client.delete_function(FunctionName=name)


def test_kill_9_of_server_and_launcher_then_restart_sweeps(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    client = server.client()
    idle = create_python_function(client, SOURCE)
    busy = create_python_function(client, SOURCE, Timeout=60)
    idle_env = call(client, idle, {"spawn": True})[1]["env"]
    idle_left = footprint(idle_env)
    busy_env = call(client, busy, {})[1]["env"]
    busy_left = footprint(busy_env)
    assert wait_for(idle_left.frozen)  # idle and frozen: it cannot notice anything
    launcher = int((data / "sandboxes" / "launcher.pid").read_text())
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(call, client, busy, {"sleep": 60})
        assert wait_for(lambda: not busy_left.frozen())  # thawed: the invoke is running
        # Everything of Kiln's at once: the server and its launcher (its own session).
        server.process.send_signal(signal.SIGKILL)
        os.kill(launcher, signal.SIGKILL)
        server.process.wait()
        pending.exception(timeout=30)  # the connection broke
    assert not idle_left.gone()  # a frozen environment is left behind ...
    restarted = start_server(data, port=server.port)
    try:
        # ... until the restarted server's start-up sweep.
        assert idle_left.gone() and busy_left.gone(), (idle_left, busy_left)
        assert process_gone(launcher)
        assert mounts_under(data) == []
        assert sorted(p.name for p in (data / "sandboxes").iterdir()) == [
            "backend.lock", "launcher.pid", "newroot"]
        assert list((data / "sandboxes" / "newroot").iterdir()) == []
        # And it serves: a new environment for the same function.
        response, body = call(restarted.client(), idle, {})
        assert "FunctionError" not in response and body["env"] not in (idle_env, busy_env)
    finally:
        restarted.stop()
