"""The startup sweep after a ``kill -9`` of the launching process, whenever it came: a monitor
killed half-started (before its ``monitor.json``) and one running in its jail are both swept,
with their processes, jail (mount namespace) and cgroup; what a live launcher owns stays; a pid
recorded in a file and since reused by another process is never killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.vmm.jail import cgroup_tree
from kiln.vmm.launch import LAUNCH_FILE, process_start, sweep
from kiln.vmm.monitor import STATE_FILE
from tests.conftest import REPO, process_gone, wait_for
from tests.vmm.test_vm import _children

#: Put first on a monitor's PYTHONPATH: it stops as its interpreter starts, before any of
#: Kiln runs -- the window between the spawn and ``monitor.json``, held open.
PAUSE = "import os, signal\nos.kill(os.getpid(), signal.SIGSTOP)\n"

#: A server's part: start a jailed monitor, print its pid once it answers, then start another
#: (with PAUSE) and wait for it, to be killed meanwhile.
LAUNCHER = """
import asyncio, os, sys
from kiln.vmm.launch import start_monitor

async def main(base, ready, half, pause):
    running = await start_monitor(f"{base}/{ready}.sock", ready, base_dir=base, jail=True)
    print(running.process.pid, flush=True)
    os.environ["PYTHONPATH"] = pause
    await start_monitor(f"{base}/{half}.sock", half, base_dir=base, jail=True)

asyncio.run(main(*sys.argv[1:]))
"""


def _state(pid: int) -> str:
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0]


def _in_namespace(link: str) -> list[int]:
    """Pids of the processes in the mount namespace ``link`` (``mnt:[inode]``)."""
    found = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.readlink(f"/proc/{entry}/ns/mnt") == link:
                found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.skipif(os.geteuid() != 0, reason="jailed monitors need root")
def test_launcher_killed_while_one_monitor_starts_and_one_runs(tmp_path: Path) -> None:
    tag = uuid.uuid4().hex[:8]
    half, ready = f"half-{tag}", f"ready-{tag}"  # sorted: the order sweep returns them in
    base, pause = tmp_path / "vms", tmp_path / "pause"
    base.mkdir()
    pause.mkdir()
    (pause / "sitecustomize.py").write_text(PAUSE)
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(base), ready, half,
                                 str(pause)], stdout=subprocess.PIPE, cwd=REPO)
    try:
        assert launcher.stdout is not None
        waiter = int(launcher.stdout.readline())
        (inner,) = _children(waiter)  # the jailed monitor: its own mounts, in the cgroup
        jail_ns = os.readlink(f"/proc/{inner}/ns/mnt")
        assert jail_ns != os.readlink("/proc/self/ns/mnt")
        assert "/proc" in Path(f"/proc/{inner}/mountinfo").read_text()
        group = cgroup_tree().cgroup(ready)
        assert inner in group.pids()

        def stopped() -> list[int]:
            return [p for p in _children(launcher.pid) if p != waiter and _state(p) == "T"]

        assert wait_for(lambda: len(stopped()) == 1)
        (starting,) = stopped()
        assert (base / half / LAUNCH_FILE).exists() and not (base / half / STATE_FILE).exists()

        # The launcher lives (another server on the same directory): nothing of it is touched.
        assert sweep(str(base)) == []
        assert not any(map(process_gone, (waiter, inner, starting)))
        assert (base / half).is_dir() and (base / ready / STATE_FILE).exists()

        launcher.kill()
        launcher.wait()
        assert sweep(str(base)) == [half, ready]
        assert all(map(process_gone, (waiter, inner, starting)))
        assert _in_namespace(jail_ns) == []  # the jail's mounts went with its namespace
        assert not group.exists() and not cgroup_tree().cgroup(half).exists()
        assert sorted(os.listdir(base)) == []  # directories and API sockets
        assert sweep(str(base)) == []
    finally:
        launcher.kill()
        launcher.wait()
        sweep(str(base))


@pytest.fixture
def spawn() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Started processes, killed at the end."""
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        process.kill()
        process.wait()


def _sleeper(spawn: list[subprocess.Popen[bytes]], *args: str,
             cwd: Path | None = None) -> subprocess.Popen[bytes]:
    """A process that only sleeps, with ``args`` on its command line, leading its process group
    as monitors do."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *args],
                               cwd=cwd, start_new_session=True)
    spawn.append(process)
    marker = (args[-1] if args else "time.sleep").encode()
    assert wait_for(lambda: marker in Path(f"/proc/{process.pid}/cmdline").read_bytes())
    return process


def test_half_started_monitors_are_found_by_their_command_line(
        tmp_path: Path, spawn: list[subprocess.Popen[bytes]]) -> None:
    """No record at all in their directories: the command line names the VM."""
    base, elsewhere = tmp_path / "vms", tmp_path / "other"
    for name in ("vm1", "vm2", "not-a-vm", "empty"):
        (base / name).mkdir(parents=True)
    (base / "not-a-vm" / "notes.txt").write_text("someone else's")
    (base / "vm1" / LAUNCH_FILE).write_text(json.dumps({"launcher": [2 ** 22 + 1, 1]}))
    full = _sleeper(spawn, "-m", "kiln.vmm", "--api-sock", str(base / "vm1.sock"), "--id", "vm1",
                    "--base-dir", str(base))
    relative = _sleeper(spawn, "-m", "kiln.cli", "vmm", "run", "--api-sock=vm2.sock", "--id=vm2",
                        cwd=base)
    other = _sleeper(spawn, "-m", "kiln.vmm", "--api-sock", str(elsewhere / "vm1.sock"), "--id",
                     "vm1", "--base-dir", str(elsewhere))

    # "empty": what a launcher killed between making the directory and its record leaves.
    assert sweep(str(base)) == ["empty", "vm1", "vm2"]
    assert full.wait(timeout=10) == -signal.SIGKILL
    assert relative.wait(timeout=10) == -signal.SIGKILL
    assert other.poll() is None  # the same id under another base directory
    assert sorted(os.listdir(base)) == ["not-a-vm"]  # no record, no monitor: not a VM's


def test_a_reused_pid_is_never_killed(tmp_path: Path,
                                      spawn: list[subprocess.Popen[bytes]]) -> None:
    """``monitor.json`` names a pid now another monitor's (another base directory's)."""
    elsewhere = tmp_path / "other"
    other = _sleeper(spawn, "-m", "kiln.vmm", "--api-sock", str(elsewhere / "x.sock"), "--id",
                     "x", "--base-dir", str(elsewhere))
    vm = tmp_path / "vms" / "gone"
    vm.mkdir(parents=True)
    kept = tmp_path / "vms" / "gone.sock"
    kept.write_text("named as the API socket, but not one")
    (vm / STATE_FILE).write_text(json.dumps(
        {"pid": other.pid, "api_sock": str(kept), "jailed": False}))
    assert sweep(str(tmp_path / "vms")) == ["gone"]
    assert other.poll() is None
    assert not vm.exists() and kept.exists()


def test_launchers_told_apart_by_their_start_time(tmp_path: Path,
                                                  spawn: list[subprocess.Popen[bytes]]) -> None:
    live = _sleeper(spawn)
    start = process_start(live.pid)
    assert start is not None
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead_start = process_start(dead.pid)
    dead.kill()
    assert wait_for(lambda: process_gone(dead.pid))  # a zombie, not reaped yet: dead all the same
    base = tmp_path / "vms"
    me = [os.getpid(), process_start(os.getpid())]  # sweeping its own directories on purpose
    for name, launcher in (("live", [live.pid, start]), ("reused", [live.pid, start - 1]),
                           ("zombie", [dead.pid, dead_start]), ("mine", me)):
        (base / name).mkdir(parents=True)
        (base / name / LAUNCH_FILE).write_text(json.dumps({"launcher": launcher}))
    try:
        assert sweep(str(base)) == ["mine", "reused", "zombie"]
    finally:
        dead.wait()
    assert os.listdir(base) == ["live"]


def test_process_start_reads_past_any_process_name() -> None:
    """A process names itself: ``x) Z 1 (y`` must not read as a zombie's stat."""
    child = subprocess.Popen([sys.executable, "-c", "import sys, time\nsys.stdin.readline()\n"
                              "open('/proc/self/comm', 'w').write('x) Z 1 (y')\ntime.sleep(60)"],
                             stdin=subprocess.PIPE)
    try:
        before = process_start(child.pid)
        assert child.stdin is not None
        child.stdin.write(b"\n")
        child.stdin.flush()
        assert wait_for(lambda: Path(f"/proc/{child.pid}/comm").read_text() == "x) Z 1 (y\n")
        assert before is not None and process_start(child.pid) == before
    finally:
        child.kill()
        child.wait()
    assert process_start(child.pid) is None
