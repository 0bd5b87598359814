"""Start monitors from Python and sweep what dead ones left behind.

    monitor = await start_monitor("/run/kiln/vms/vm1.sock", "vm1", jail=True)
    await monitor.client.put("/boot-source", {...})
    ...
    await monitor.stop()
    sweep("/run/kiln/vms")      # at startup: leftovers of a server killed with kill -9
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
from dataclasses import dataclass, field
from typing import IO, Any

from kiln.vmm.client import VmmClient
from kiln.vmm.jail import cgroup_tree
from kiln.vmm.monitor import STATE_FILE

READY_TIMEOUT = 30.0
STOP_GRACE = 5.0


class MonitorFailed(Exception):
    """The monitor exited (or never answered) before its API socket was ready."""


@dataclass
class MonitorProcess:
    vm_id: str
    api_sock: str
    vm_dir: str
    process: asyncio.subprocess.Process
    client: VmmClient = field(init=False)

    def __post_init__(self) -> None:
        self.client = VmmClient(self.api_sock)

    @property
    def jail_root(self) -> str:
        """Where jailed paths live on the host (``<vm dir>/root``)."""
        return os.path.join(self.vm_dir, "root")

    async def stop(self) -> int:
        """SIGTERM, then SIGKILL after a grace period; removes the VM's directory."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), STOP_GRACE)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                await self.process.wait()
        _remove_vm(self.vm_dir, self.api_sock)
        return self.process.returncode or 0


async def start_monitor(
    api_sock: str,
    vm_id: str,
    *,
    base_dir: str | None = None,
    jail: bool = False,
    uid: int = 65534,
    gid: int = 65534,
    binds: list[str] | None = None,
    extra_args: list[str] | None = None,
    stdout: int | IO[Any] | None = None,
    stderr: int | IO[Any] | None = None,
) -> MonitorProcess:
    """Start ``python -m kiln.vmm`` and return once its API socket answers ``GET /``."""
    api_sock = os.path.abspath(api_sock)
    base = os.path.abspath(base_dir or os.path.dirname(api_sock))
    argv = [sys.executable, "-m", "kiln.vmm", "--api-sock", api_sock, "--id", vm_id,
            "--base-dir", base]
    if jail:
        argv += ["--jail", "--uid", str(uid), "--gid", str(gid)]
        for path in binds or []:
            argv += ["--jail-bind", path]
    argv += extra_args or []
    with contextlib.suppress(FileNotFoundError):
        os.unlink(api_sock)  # a stale socket's owner must not answer for the new monitor
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr)
    monitor = MonitorProcess(vm_id, api_sock, os.path.join(base, vm_id), process)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + READY_TIMEOUT
    while True:
        if process.returncode is not None:
            raise MonitorFailed(f"monitor {vm_id} exited with {process.returncode}")
        with contextlib.suppress(OSError):
            await monitor.client.request("GET", "/")
            return monitor
        if loop.time() > deadline:
            await monitor.stop()
            raise MonitorFailed(f"monitor {vm_id} did not answer within {READY_TIMEOUT} s")
        await asyncio.sleep(0.005)


def sweep(base_dir: str) -> list[str]:
    """Kill every monitor recorded under ``base_dir`` (and its engine), remove its socket,
    directory and cgroup; returns the VM ids swept.  For a startup after ``kill -9``."""
    swept = []
    with contextlib.suppress(FileNotFoundError):
        for vm_id in sorted(os.listdir(base_dir)):
            vm_dir = os.path.join(base_dir, vm_id)
            try:
                with open(os.path.join(vm_dir, STATE_FILE)) as f:
                    state = json.load(f)
            except (OSError, ValueError):
                continue
            pid = int(state.get("pid", 0))
            if pid > 1 and _is_monitor(pid):
                # The monitor leads its process group; jailed ones also take their namespace
                # down with them (the jailed child dies with its waiter).
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
            if state.get("jailed"):
                _remove_cgroup(vm_id)
            _remove_vm(vm_dir, str(state.get("api_sock", "")))
            swept.append(vm_id)
    return swept


def _remove_cgroup(vm_id: str) -> None:
    try:
        group = cgroup_tree().cgroup(vm_id)
    except OSError:
        return
    for _ in range(2000):
        if group.kill_step() and group.remove():
            return
        os.sched_yield()


def _is_monitor(pid: int) -> bool:
    """Still a monitor (``python -m kiln.vmm`` or ``kiln vmm run``), not a reused pid?"""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return False
    return b"kiln.vmm" in cmdline or b"\0vmm\0run\0" in cmdline


def _remove_vm(vm_dir: str, api_sock: str) -> None:
    if api_sock:
        with contextlib.suppress(OSError):
            os.unlink(api_sock)
    shutil.rmtree(vm_dir, ignore_errors=True)
