"""Start monitors from Python and sweep what dead ones left behind.

    monitor = await start_monitor("/run/kiln/vms/vm1.sock", "vm1", jail=True)
    await monitor.client.put("/boot-source", {...})
    ...
    await monitor.stop()
    sweep("/run/kiln/vms")      # at startup: leftovers of a server killed with kill -9

A VM directory ``<base dir>/<id>`` records its launcher before the monitor exists:
``start_monitor`` writes ``launch.json`` (its own pid and start time, the API socket, whether
jailed) and only then spawns.  ``sweep`` leaves a directory whose launcher still runs (another
server on the same base dir), and finds a dead launcher's monitors by their command lines, which
name the VM (``--id``, ``--base-dir``) from their first instant, long before ``monitor.json``:
a monitor killed half-started is found as surely as a running one.  A recorded pid never chooses
what is killed (it may have been reused): a process is held by a pidfd, then its command line
checked, then signalled through the pidfd.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import select
import shutil
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from typing import IO, Any

from kiln.vmm.client import VmmClient
from kiln.vmm.jail import cgroup_tree
from kiln.vmm.monitor import STATE_FILE, VM_ID, write_json

#: Written by the launcher into the VM directory before the monitor is spawned.
LAUNCH_FILE = "launch.json"

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
    console: str | None = None,
) -> MonitorProcess:
    """Start ``python -m kiln.vmm`` and return once its API socket answers ``GET /``.
    ``console``: a file in the VM's directory for the monitor's output (instead of ``stdout``
    and ``stderr``), made after the launch record so that no file precedes it."""
    if not VM_ID.fullmatch(vm_id):
        raise ValueError(f"invalid microVM id {vm_id!r}")
    api_sock = os.path.abspath(api_sock)
    base = os.path.abspath(base_dir or os.path.dirname(api_sock))
    vm_dir = os.path.join(base, vm_id)
    argv = [sys.executable, "-m", "kiln.vmm", "--api-sock", api_sock, "--id", vm_id,
            "--base-dir", base]
    if jail:
        argv += ["--jail", "--uid", str(uid), "--gid", str(gid)]
        for path in binds or []:
            argv += ["--jail-bind", path]
    argv += extra_args or []
    with contextlib.suppress(FileNotFoundError):
        os.unlink(api_sock)  # a stale socket's owner must not answer for the new monitor
    os.makedirs(vm_dir, exist_ok=True)
    # Before the monitor exists: after this process's kill -9, whenever it comes, a sweep
    # knows the directory's launcher is dead and whether a jail (its cgroup) may be left.
    write_json(os.path.join(vm_dir, LAUNCH_FILE),
               {"launcher": _identity(os.getpid()), "api_sock": api_sock, "jailed": jail})
    with contextlib.ExitStack() as files:
        if console is not None:
            stdout = stderr = files.enter_context(open(os.path.join(vm_dir, console), "ab"))
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=stdout, stderr=stderr,
            start_new_session=True)  # its own process group from the start: what gets killed
    monitor = MonitorProcess(vm_id, api_sock, vm_dir, process)
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
    """Kill the monitors of VM directories under ``base_dir`` whose launcher is dead (with their
    engines and jails), remove their sockets, directories and cgroups; returns the VM ids swept.
    For a startup after ``kill -9``.  Directories whose launcher runs (but is not this process,
    which would sweep on purpose) are left alone, as are directories with neither a VM's records
    nor a monitor (not a VM's)."""
    try:
        names = [name for name in sorted(os.listdir(base_dir))
                 if VM_ID.fullmatch(name) and os.path.isdir(os.path.join(base_dir, name))]
    except FileNotFoundError:
        return []
    running = _monitors_under(base_dir) if names else {}
    try:
        return [vm_id for vm_id in names
                if _sweep_vm(os.path.join(base_dir, vm_id), running.get(vm_id, []))]
    finally:
        for monitor in itertools.chain.from_iterable(running.values()):
            os.close(monitor.pidfd)


def _sweep_vm(vm_dir: str, monitors: list[_Found]) -> bool:
    launch, state = _record(vm_dir, LAUNCH_FILE), _record(vm_dir, STATE_FILE)
    if not (launch or state or monitors):
        # Not a VM's, unless empty: made by a launcher killed before its launch record.
        with contextlib.suppress(OSError):
            os.rmdir(vm_dir)
            return True
        return False
    if _launcher_runs(launch.get("launcher")):
        return False
    _kill(monitors)
    if launch.get("jailed") or state.get("jailed") or any(m.jailed for m in monitors):
        _remove_cgroup(os.path.basename(vm_dir))
    for path in {launch.get("api_sock"), state.get("api_sock"), *(m.api_sock for m in monitors)}:
        _remove_socket(path)
    shutil.rmtree(vm_dir, ignore_errors=True)
    return True


def process_start(pid: int) -> int | None:
    """When ``pid`` started (clock ticks after boot) while it runs; None once it exited (a
    zombie too).  With the pid, it names one process for good: pids are reused, not both."""
    fields = _stat(pid)
    return None if not fields or fields[0] in (b"Z", b"X") else int(fields[19])


def _stat(pid: int) -> list[bytes] | None:
    """``/proc/<pid>/stat`` from its third field (state, ppid, pgrp, ...) on."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()  # the name before ")" may hold anything
    except (OSError, IndexError):
        return None
    return fields if len(fields) > 19 else None


def _identity(pid: int) -> list[int]:
    return [pid, process_start(pid) or 0]


def _launcher_runs(launcher: Any) -> bool:
    try:
        pid, start = int(launcher[0]), int(launcher[1])
    except (TypeError, ValueError, IndexError, KeyError):
        return False  # none recorded: a monitor started by hand, or by an older launcher
    return pid != os.getpid() and process_start(pid) == start


def _record(vm_dir: str, name: str) -> dict[str, Any]:
    try:
        with open(os.path.join(vm_dir, name)) as f:
            value = json.load(f)
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


@dataclass
class _Found:
    """A monitor process found by its command line, held by a pidfd: signals sent through it
    reach that process or none."""

    pid: int
    pidfd: int
    api_sock: str
    jailed: bool


def _monitors_under(base_dir: str) -> dict[str, list[_Found]]:
    """Monitor processes (``python -m kiln.vmm``, ``kiln vmm run``; a jailed one's child too)
    whose VM directory is under ``base_dir``, by VM id."""
    base = os.path.realpath(base_dir)
    found: dict[str, list[_Found]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or _monitor_of(int(entry)) is None:
            continue
        pid = int(entry)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            continue
        try:
            target = _monitor_of(pid)  # again, now that the pidfd holds the process ...
            signal.pidfd_send_signal(pidfd, 0)  # ... which was alive after this read: its own
        except OSError:
            target = None
        if target is None or target[0] != base:
            os.close(pidfd)
            continue
        found.setdefault(target[1], []).append(_Found(pid, pidfd, target[2], target[3]))
    return found


def _monitor_of(pid: int) -> tuple[str, str, str, bool] | None:
    """``(real base dir, VM id, API socket, jailed)`` from a monitor's command line; None for
    any other process."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return None
    if b"\0kiln.vmm\0" not in cmdline and b"\0vmm\0run\0" not in cmdline:
        return None
    args = os.fsdecode(cmdline).split("\0")
    vm_id, api_sock = _option(args, "--id"), _option(args, "--api-sock")
    if vm_id is None or api_sock is None:
        return None
    base = _option(args, "--base-dir") or os.path.dirname(api_sock)
    if not (os.path.isabs(base) and os.path.isabs(api_sock)):
        try:  # relative to where the monitor started (it does not move before taking them)
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except OSError:
            return None
        base, api_sock = os.path.join(cwd, base), os.path.join(cwd, api_sock)
    return os.path.realpath(base), vm_id, api_sock, "--jail" in args


def _option(args: list[str], name: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == name:
            return args[i + 1]
    for arg in args:
        if arg.startswith(name + "="):
            return arg[len(name) + 1:]
    return None


def _kill(monitors: list[_Found]) -> None:
    """SIGKILL each monitor and the process group it leads (its engine, a jailed child), then
    wait until they have exited: a monitor let run would go on making its directory."""
    poller = select.poll()
    for monitor in monitors:
        with contextlib.suppress(OSError):
            if _leads_group(monitor.pid):
                signal.pidfd_send_signal(monitor.pidfd, 0)  # the group read was this process's
                os.killpg(monitor.pid, signal.SIGKILL)
            signal.pidfd_send_signal(monitor.pidfd, signal.SIGKILL)
        poller.register(monitor.pidfd, select.POLLIN)  # readable once the process exited
    deadline = time.monotonic() + STOP_GRACE
    pending = len(monitors)
    while pending and time.monotonic() < deadline:
        for fd, _ in poller.poll(max(0, deadline - time.monotonic()) * 1000):
            poller.unregister(fd)
            pending -= 1


def _leads_group(pid: int) -> bool:
    fields = _stat(pid)
    return fields is not None and int(fields[2]) == pid


def _remove_cgroup(vm_id: str) -> None:
    try:
        group = cgroup_tree().cgroup(vm_id)
    except OSError:
        return
    for _ in range(2000):
        if group.kill_step() and group.remove():
            return
        os.sched_yield()


def _remove_socket(path: Any) -> None:
    """Unlink ``path`` if it is a socket (records name it; nothing else is removed by name)."""
    with contextlib.suppress(OSError, TypeError, ValueError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def _remove_vm(vm_dir: str, api_sock: str) -> None:
    if api_sock:
        with contextlib.suppress(OSError):
            os.unlink(api_sock)
    shutil.rmtree(vm_dir, ignore_errors=True)
