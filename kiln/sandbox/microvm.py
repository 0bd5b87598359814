"""The ``microvm`` backend: each environment is a microVM behind its own monitor process speaking
Firecracker's API (:mod:`kiln.vmm`), booted from the guest image ``kiln microvm build-image`` made.

The first environment of a configuration (code, runtime, environment variables, memory) boots
cold; when its runtime first asks for an event (INIT is over) the VM is paused, snapshotted and
resumed.  Every later environment of that configuration is restored from the snapshot, with its
pending ``/next`` sent again by the guest agent, so INIT ran once (SnapStart's shape).  A
restore is a new VM, made when the invoke arrives: a spare monitor (started ahead) launches QEMU
and loads the device state; the snapshot's memory is a sealed memfd Kiln holds and serves on
``<snapshot>/mem.sock``, which the VM maps copy-on-write, so nothing is copied and the VMs of one
snapshot share the pages they only read.

Host side of one VM (all under ``<root>/microvm/<vm id>/``)::

    api.sock            the monitor's Firecracker API
    v.sock              vsock: the host opens the agent's control port here
    v.sock_9001         vsock: the guest's Runtime API connections arrive here (proxied)
    v.sock_2852039166   vsock: the guest's MMDS (``MMDS_PORT``), served by a Firecracker
                        engine's monitor (QEMU's carries it on its own channel)
    runtime.sock        ``Sandbox.listener``: the host's RuntimeApi serves it

The proxy holds each chunk of a guest request until the runtime output the agent sent before it
has been delivered, so a response never overtakes its own log lines.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

from kiln.runtime.runtimes import BOOTSTRAP_DIR
from kiln.sandbox._output import drain
from kiln.sandbox.types import SandboxSpec
from kiln.vmm.client import VmmError
from kiln.vmm.guest import agent
from kiln.vmm.guest.image import (
    CODE_LABEL,
    GUEST_NODE,
    GUEST_PYTHON,
    OPT_LABEL,
    RUNTIME_DIR,
    GuestImage,
    images_dir,
    make_ext4,
)
from kiln.vmm.launch import MonitorFailed, MonitorProcess, start_monitor, sweep
from kiln.vmm.qemu import MemoryImageServer, listen_unix, seal_memory_image

log = logging.getLogger("kiln.microvm")

GUEST_TASK_ROOT = "/var/task"
GUEST_CID = 3
#: Lambda gives a function one vCPU per 1,769 MB, up to 6.
MB_PER_VCPU, MAX_VCPUS = 1769, 6
BOOT_ARGS = "console=ttyS0 quiet panic=1 reboot=k mitigations=off"
#: A cold boot under software emulation takes seconds; a restore well under one.
AGENT_TIMEOUT = 120.0
REFILL_DELAY = 1.0
#: Snapshots kept (each about the guest memory in use): the least recently used go first; a
#: restore already reading one keeps its open file.
MAX_SNAPSHOTS = 32
#: The jailed monitor's user (nobody), and its cgroup's memory: Lambda's largest function
#: plus the engine's own.
JAIL_UID = 65534
JAIL_MEMORY_MB = 10240 + 512
#: Environment variables that differ between environments of one configuration: a guest has
#: none of them, since all but the first environment are restored from one snapshot (Lambda's
#: SnapStart environments lack the log stream name too).
PER_ENVIRONMENT = ("AWS_LAMBDA_LOG_STREAM_NAME",)


class MicrovmError(Exception):
    pass


def vcpus_for(memory_mb: int) -> int:
    return max(1, min(MAX_VCPUS, -(-memory_mb // MB_PER_VCPU)))


def guest_config(spec: SandboxSpec) -> dict[str, Any]:
    """The runtime's argv, env and cwd as the guest sees them (host paths mapped in: the code
    at /var/task, the version's merged layers (one directory) at /opt)."""
    task_root = str(spec.task_root)
    opt = str(spec.layers[0]) if spec.layers else None

    def guest_path(value: str) -> str:
        value = value.replace(task_root, GUEST_TASK_ROOT)
        return value.replace(opt, "/opt") if opt else value

    env = {k: guest_path(v) for k, v in spec.env.items() if k not in PER_ENVIRONMENT}
    env["LAMBDA_RUNTIME_DIR"] = RUNTIME_DIR
    env["AWS_LAMBDA_RUNTIME_API"] = f"127.0.0.1:{agent.RUNTIME_API_PORT}"
    argv = list(spec.argv)
    bootstrap = Path(argv[-1])
    if bootstrap.parent == BOOTSTRAP_DIR and bootstrap.suffix == ".py":
        # Kiln's Python runtime, on the guest's interpreter of the function's version.
        version = env.get("AWS_EXECUTION_ENV", "").removeprefix("AWS_Lambda_python")
        python = f"/usr/bin/python{version}" if version else GUEST_PYTHON
        argv = [python, *argv[1:-1], f"{RUNTIME_DIR}/{bootstrap.name}"]
    elif bootstrap.parent == BOOTSTRAP_DIR:
        # Kiln's Node.js runtime, on the image's copy of the host's node (wherever that is).
        argv = [GUEST_NODE, *argv[1:-1], f"{RUNTIME_DIR}/{bootstrap.name}"]
    else:
        argv = [guest_path(a) for a in argv]
    return {"argv": argv, "env": env, "cwd": GUEST_TASK_ROOT}


def snapshot_key(image: GuestImage, spec: SandboxSpec, config: dict[str, Any]) -> str:
    identity = [image.digest, config["argv"], config["env"], str(spec.task_root),
                [str(p) for p in spec.layers], spec.memory_mb, spec.ephemeral_mb]
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]


class MicrovmSandbox:
    def __init__(self, spec: SandboxSpec, backend: MicrovmBackend,
                 monitor: MonitorProcess) -> None:
        self.env_id = spec.env_id
        self.spec = spec
        self._backend = backend
        self._monitor = monitor
        self.dir = Path(monitor.vm_dir)
        # The monitor's files: in its jail's /run when jailed (paths in API bodies are the
        # jail's), else in the VM's directory.
        uid = backend.jail_uid
        jailed = uid is not None
        self._run = Path(monitor.jail_root) / "run" if jailed else self.dir
        self._monitor_run = "/run" if jailed else str(self.dir)
        self.listener = listen_unix(str(self.dir / "runtime.sock"), backlog=64)
        self._guest_listener = listen_unix(str(self._run / f"v.sock_{agent.RUNTIME_API_PORT}"),
                                           backlog=64)
        if uid is not None:  # the jailed monitor connects to it as its unprivileged user
            os.chown(self._run / f"v.sock_{agent.RUNTIME_API_PORT}", uid, -1)
        self._guest_server: asyncio.Server | None = None
        self._replies: set[asyncio.Task[None]] = set()
        self._control: socket.socket | None = None
        self._buffer = bytearray()
        self._exited: asyncio.Future[int] | None = None
        self._output_seen = 0
        self._output_waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._peak_kb = 0
        self._oom_killed = False
        self._key = ""
        self._restored = False
        self._destroyed = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        backend = self._backend
        config = guest_config(self.spec)
        self._key = snapshot_key(backend.image, self.spec, config)
        self._exited = loop.create_future()
        self._guest_server = await asyncio.start_unix_server(self._serve_guest,
                                                             sock=self._guest_listener)
        snapshot = backend.use_snapshot(self._key)
        client = self._monitor.client
        uds_path = f"{self._monitor_run}/v.sock"
        if snapshot is not None:
            try:
                await client.put("/snapshot/load", {
                    "snapshot_path": str(snapshot / "state"),
                    "mem_backend": {"backend_type": "File",
                                    "backend_path": str(backend.memory_path(self._key))},
                    "resume_vm": True, "vsock_override": {"uds_path": uds_path}})
                self._restored = True
            except VmmError as exc:
                log.warning("restoring %s from its snapshot failed (%s); booting cold",
                            self.env_id, exc)
                backend.forget_snapshot(self._key)
                # A new monitor in the same directory (stop() would remove our sockets too).
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._monitor.process.pid, signal.SIGKILL)
                await self._monitor.process.wait()
                self._monitor = await backend.spawn_monitor(self._monitor.vm_id)
                client = self._monitor.client
        if not self._restored:
            await self._boot(uds_path, config)
        answer = await self._attach(str(self._run / "v.sock"), start=not self._restored)
        # The next spare starts once this environment's first invoke is likely done: a
        # starting monitor would take CPU from it.
        loop.call_later(REFILL_DELAY, backend.refill)
        if "errno" in answer:
            raise OSError(answer["errno"], answer["strerror"], answer["filename"])

    async def _boot(self, uds_path: str, config: dict[str, Any]) -> None:
        spec, image, client = self.spec, self._backend.image, self._monitor.client
        drives = [("root", image.rootfs),
                  ("code", await self._backend.drive(spec.task_root, CODE_LABEL))]
        if spec.layers:  # the version's merged layers, as /opt
            drives.append(("opt", await self._backend.drive(spec.layers[0], OPT_LABEL)))
        await client.put("/machine-config", {"vcpu_count": vcpus_for(spec.memory_mb),
                                             "mem_size_mib": spec.memory_mb})
        # The engine decides the kernel's form: Firecracker's ELF, QEMU's bzImage.
        kernel = image.kernel_for(await client.get("/"))
        await client.put("/boot-source", {
            "kernel_image_path": str(kernel), "initrd_path": str(image.initrd),
            "boot_args": f"{BOOT_ARGS} kiln.tmp_mb={spec.ephemeral_mb}"})
        for drive_id, path in drives:
            await client.put(f"/drives/{drive_id}", {
                "drive_id": drive_id, "path_on_host": str(path), "is_root_device": False,
                "is_read_only": True})
        await client.put("/vsock", {"guest_cid": GUEST_CID, "uds_path": uds_path})
        # The guest reads its configuration from the MMDS over vsock (the monitor serves it,
        # whatever the engine), not over a network interface: so no /mmds/config, which names
        # the interfaces (Firecracker refuses one naming none the VM has; Kiln's VMs have none).
        await client.put("/mmds", {"kiln": {"runtime": config}})
        await client.put("/actions", {"action_type": "InstanceStart"})

    async def _attach(self, uds_path: str, start: bool) -> dict[str, Any]:
        """Open the agent's control port (retrying while the guest boots), say hello, and
        return the agent's answer; from then on control messages are read as they come."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_TIMEOUT
        while True:
            if self._monitor.process.returncode is not None:
                raise MicrovmError(f"the microVM monitor exited: {self._monitor_log()}")
            with contextlib.suppress(OSError):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.setblocking(False)
                # The hello goes with the CONNECT (no wait for OK: one guest round trip less).
                # The guest's clock is stale after a restore (and unset after a boot).
                hello = {"time_ns": time.time_ns(), "entropy": os.urandom(32).hex(),
                         "start": start}
                try:
                    await loop.sock_connect(sock, uds_path)
                    await loop.sock_sendall(sock, f"CONNECT {agent.CONTROL_PORT}\n".encode()
                                            + json.dumps(hello).encode() + b"\n")
                    reply = await _read_line(loop, sock)
                except OSError:
                    sock.close()
                    raise
                if reply.startswith(b"OK "):
                    break
                sock.close()
            if loop.time() > deadline:
                raise MicrovmError(f"the guest agent did not answer within {AGENT_TIMEOUT} s: "
                                   f"{self._monitor_log()}")
            await asyncio.sleep(0.02)
        self._control = sock
        kind, payload = await self._read_message(loop, sock)
        answer: dict[str, Any] = json.loads(payload)
        if kind == agent.STARTED:
            self._output_seen = int(answer["output_total"])
            loop.add_reader(sock.fileno(), self._read_control)
        return answer

    async def _read_message(self, loop: asyncio.AbstractEventLoop,
                            sock: socket.socket) -> tuple[int, bytes]:
        while True:
            message = self._take_message()
            if message is not None:
                return message
            data = await loop.sock_recv(sock, 65536)
            if not data:
                raise MicrovmError(f"the guest agent closed its channel: {self._monitor_log()}")
            self._buffer += data

    def _take_message(self) -> tuple[int, bytes] | None:
        size = agent.MESSAGE.size
        if len(self._buffer) < size:
            return None
        kind, length = agent.MESSAGE.unpack_from(self._buffer)
        if len(self._buffer) < size + length:
            return None
        payload = bytes(self._buffer[size:size + length])
        del self._buffer[:size + length]
        return kind, payload

    def _read_control(self) -> None:
        """Deliver every control message already received (output, the runtime's exit)."""
        sock = self._control
        if sock is None:
            return
        ended = drain(sock.fileno(), self._buffer.extend)
        while (message := self._take_message()) is not None:
            kind, payload = message
            if kind == agent.OUTPUT:
                self._output_seen += len(payload)
                self.spec.on_output(payload)
            elif kind == agent.EXITED:
                exited = json.loads(payload)
                self._oom_killed = int(exited.get("oom_kills", 0)) > 0
                self._exit(int(exited["status"]))
        self._release_output_waiters()
        if ended:
            self._close_control()
            self._exit(-signal.SIGKILL)  # the VM went away without the runtime exiting

    def _release_output_waiters(self) -> None:
        still = []
        for threshold, waiter in self._output_waiters:
            if self._output_seen >= threshold or self._control is None:
                if not waiter.done():
                    waiter.set_result(None)
            else:
                still.append((threshold, waiter))
        self._output_waiters = still

    def _exit(self, returncode: int) -> None:
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(returncode)

    def _close_control(self) -> None:
        if self._control is not None:
            with contextlib.suppress(ValueError, RuntimeError):
                asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
            self._release_output_waiters()

    # -- the Runtime API proxy ----------------------------------------------------------------

    async def _serve_guest(self, guest_reader: asyncio.StreamReader,
                           guest_writer: asyncio.StreamWriter) -> None:
        """One guest connection to port 9001, carried to ``listener`` (the RuntimeApi)."""
        try:
            api_reader, api_writer = await asyncio.open_unix_connection(
                str(self.dir / "runtime.sock"))
        except OSError:
            guest_writer.close()
            return
        back = asyncio.ensure_future(_reply(api_reader, guest_writer))
        self._replies.add(back)  # it outlives this handler when the guest half-closes
        back.add_done_callback(self._replies.discard)
        back.add_done_callback(lambda _task: _close(api_writer, guest_writer))
        try:
            while True:
                header = await guest_reader.readexactly(agent.CHUNK.size)
                length, output_total, peak_kb = agent.CHUNK.unpack(header)
                data = await guest_reader.readexactly(length)
                self._peak_kb = max(self._peak_kb, peak_kb)
                await self._output_until(output_total)
                if not self._restored and data.startswith(
                        b"GET /2018-06-01/runtime/invocation/next"):
                    await self._backend.snapshot(self._key, self)
                api_writer.write(data)
                await api_writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            # The guest is done sending (or the VM went away): half-close towards the
            # RuntimeApi; the reply pump closes both sides when its answer is through.
            with contextlib.suppress(OSError):
                if api_writer.can_write_eof():
                    api_writer.write_eof()

    async def _output_until(self, total: int) -> None:
        if self._output_seen >= total or self._control is None:
            return
        waiter = asyncio.get_running_loop().create_future()
        self._output_waiters.append((total, waiter))
        await waiter

    @property
    def restored(self) -> bool:
        """Restored from its configuration's snapshot: no INIT ran in it."""
        return self._restored

    @property
    def monitor_pid(self) -> int:
        return self._monitor.process.pid

    async def take_snapshot(self, target: Path) -> None:
        """Pause, snapshot into the monitor's own directory, resume; then move it to
        ``target`` (a jailed monitor can write only inside its jail)."""
        client = self._monitor.client
        made = self._run / "snapshot"
        made.mkdir()
        if self._backend.jail_uid is not None:
            os.chown(made, self._backend.jail_uid, -1)
        await client.patch("/vm", {"state": "Paused"})
        try:
            await client.put("/snapshot/create", {
                "snapshot_type": "Full", "snapshot_path": f"{self._monitor_run}/snapshot/state",
                "mem_file_path": f"{self._monitor_run}/snapshot/mem"})
        finally:
            await client.patch("/vm", {"state": "Resumed"})
        os.rename(made, target)

    # -- the Sandbox protocol -----------------------------------------------------------------

    async def wait(self) -> int:
        if self._exited is None:
            raise RuntimeError("sandbox not started")
        return await asyncio.shield(self._exited)

    def drain_output(self) -> None:
        self._read_control()

    def max_memory_used_mb(self) -> int:
        return max(1, -(-self._peak_kb // 1024))

    def oom_killed(self) -> bool:
        """Whether the guest ran out of memory (Lambda's Runtime.OutOfMemory)."""
        return self._oom_killed

    def end_init(self) -> None:
        """Nothing to lower after INIT: the VM's vCPUs are its share from the start."""

    async def freeze(self) -> None:
        await self._set_state("Paused")

    async def thaw(self) -> None:
        await self._set_state("Resumed")

    async def _set_state(self, state: str) -> None:
        if not self._destroyed:
            with contextlib.suppress(VmmError, OSError):
                await self._monitor.client.patch("/vm", {"state": state})

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        self._read_control()
        self._close_control()
        self._exit(-signal.SIGKILL)
        if self._guest_server is not None:
            self._guest_server.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._monitor.process.pid, signal.SIGKILL)
        await self._monitor.stop()
        self.listener.close()
        self._guest_listener.close()
        shutil.rmtree(self.dir, ignore_errors=True)
        self._backend.forget(self.env_id)

    def _monitor_log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.dir / "monitor.log").read_text(errors="replace")[-2000:]
        return ""


class MicrovmBackend:
    """``KILN_SANDBOX_BACKEND=microvm``: needs a built guest image (``kiln microvm
    build-image``) and QEMU (``scripts/ensure-qemu``) or a configured Firecracker."""

    def __init__(self, root: str | Path, images: Path | None = None,
                 jail: bool | None = None) -> None:
        base = Path(root) / "microvm"
        self.snapshots_dir = (base / "snapshots").resolve()
        self.code_dir = (base / "code").resolve()
        self.image = GuestImage.current(images or images_dir(Path(root).parent))
        #: Jailed monitors (as Firecracker's jailer runs it), with the image, code drives and
        #: snapshots bound read-only into each jail; by default whenever the jail can be made.
        self.jail_uid = JAIL_UID if (can_jail() if jail is None else jail) \
            else None
        for directory in (base / "vms", self.snapshots_dir, self.code_dir):
            directory.mkdir(parents=True, exist_ok=True)
        self.vms_dir = _short_path(base / "vms")
        # A previous server killed with kill -9 leaves monitors, engines and files behind.
        sweep(str(self.vms_dir))
        shutil.rmtree(self.snapshots_dir, ignore_errors=True)
        self.snapshots_dir.mkdir()
        #: By key, least recently used first.
        self.snapshots: OrderedDict[str, Path] = OrderedDict()
        self._snapshotting: dict[str, asyncio.Task[None]] = {}
        #: By key: a snapshot's memory as a sealed memfd and the socket that hands it to
        #: restores (QEMU engine), which map it copy-on-write instead of copying the file.
        self._images: dict[str, MemoryImageServer] = {}
        self._code_builds: dict[Path, asyncio.Task[Path]] = {}
        self._live: dict[str, MicrovmSandbox] = {}
        #: A monitor started ahead, as Firecracker hosts pre-spawn theirs: a restore then
        #: pays only for loading the snapshot, not for starting a process.
        self._spare: asyncio.Task[MonitorProcess] | None = None
        self._closed = False

    async def create(self, spec: SandboxSpec) -> MicrovmSandbox:
        spare, self._spare = self._spare, None
        monitor = None
        if spare is not None:
            with contextlib.suppress(MonitorFailed, OSError):
                monitor = await spare
        sandbox = MicrovmSandbox(spec, self, monitor or await self.spawn_monitor())
        self._live[spec.env_id] = sandbox
        return sandbox

    @property
    def jail_binds(self) -> list[str]:
        return [str(self.image.path), str(self.code_dir), str(self.snapshots_dir)]

    def refill(self) -> None:
        """Start the next spare monitor (after a start, not during it: they share the CPU)."""
        if self._spare is None and not self._closed:
            self._spare = asyncio.ensure_future(self.spawn_monitor())

    async def spawn_monitor(self, vm_id: str | None = None) -> MonitorProcess:
        """A monitor for a new VM in its own directory (its output in ``monitor.log``)."""
        vm_id = vm_id or os.urandom(8).hex()
        jail = self.jail_uid is not None
        # start_monitor makes the directory and its launch record before anything else, so
        # that a sweep after kill -9 knows what it finds there.
        return await start_monitor(
            str(self.vms_dir / vm_id / "api.sock"), vm_id, base_dir=str(self.vms_dir),
            console="monitor.log", jail=jail, uid=self.jail_uid or 0, gid=self.jail_uid or 0,
            binds=self.jail_binds,
            extra_args=["--cgroup-mem-mb", str(JAIL_MEMORY_MB)] if jail else [])

    def forget(self, env_id: str) -> None:
        self._live.pop(env_id, None)

    async def drive(self, source: Path, label: str) -> Path:
        """A read-only ext4 image of ``source`` (code, or merged layers), made once per
        content-addressed directory."""
        target = self.code_dir / f"{label}-{source.name}.ext4"
        if target.exists():
            return target
        build = self._code_builds.get(target)
        if build is None:
            build = asyncio.ensure_future(asyncio.to_thread(_make_drive, source, target, label))
            self._code_builds[target] = build
            build.add_done_callback(lambda _t: self._code_builds.pop(target, None))
        return await asyncio.shield(build)

    async def snapshot(self, key: str, sandbox: MicrovmSandbox) -> None:
        """Snapshot ``sandbox`` for ``key`` unless one exists or is being made."""
        if key in self.snapshots or key in self._snapshotting:
            return
        task = asyncio.ensure_future(self._take(key, sandbox))
        self._snapshotting[key] = task
        try:
            await task
        finally:
            self._snapshotting.pop(key, None)

    async def _take(self, key: str, sandbox: MicrovmSandbox) -> None:
        target = self.snapshots_dir / key
        try:
            await sandbox.take_snapshot(target)
        except (VmmError, OSError, MonitorFailed) as exc:
            log.warning("snapshot of %s failed: %s", sandbox.env_id, exc)
            return
        self.add_snapshot(key, target)
        try:
            await self._share_memory(key, target)
        except OSError as exc:  # restores copy the memory file instead
            log.warning("no shared memory image for snapshot %s: %s", key, exc)

    async def _share_memory(self, key: str, target: Path) -> None:
        with open(target / "state", "rb") as f:
            if b'"engine": "qemu"' not in f.read(64):
                return
        loop = asyncio.get_running_loop()
        # The copy takes a moment: not on the event loop.
        image = await loop.run_in_executor(None, seal_memory_image, str(target / "mem"))
        try:
            if key not in self.snapshots:  # forgotten meanwhile
                raise FileNotFoundError(f"snapshot {key} is gone")
            server = MemoryImageServer(image, str(target / "mem.sock"), loop)
        except OSError:
            os.close(image)
            raise
        try:
            if self.jail_uid is not None:  # the jailed monitors connect as their own user
                os.chown(target / "mem.sock", self.jail_uid, -1)
        except OSError:
            server.close()
            raise
        self._images[key] = server

    def memory_path(self, key: str) -> Path:
        """What a restore of snapshot ``key`` names as its memory file: the shared image's
        socket once there is one, else the file."""
        return self.snapshots[key] / ("mem.sock" if key in self._images else "mem")

    def add_snapshot(self, key: str, path: Path) -> None:
        self.snapshots[key] = path
        while len(self.snapshots) > MAX_SNAPSHOTS:
            self.forget_snapshot(next(iter(self.snapshots)))

    def use_snapshot(self, key: str) -> Path | None:
        path = self.snapshots.get(key)
        if path is not None:
            self.snapshots.move_to_end(key)
        return path

    def forget_snapshot(self, key: str) -> None:
        server = self._images.pop(key, None)
        if server is not None:
            server.close()
        path = self.snapshots.pop(key, None)
        if path is not None:
            shutil.rmtree(path, ignore_errors=True)

    async def close(self) -> None:
        self._closed = True
        if self._spare is not None:
            with contextlib.suppress(MonitorFailed, OSError):
                await (await self._spare).stop()
            self._spare = None
        for sandbox in list(self._live.values()):
            await sandbox.destroy()
        self._live.clear()
        for key in list(self.snapshots):
            self.forget_snapshot(key)


def _make_drive(source: Path, target: Path, label: str) -> Path:
    staging = target.with_suffix(".tmp")
    make_ext4(source, staging, label)
    os.replace(staging, target)
    return target


def can_jail() -> bool:
    """Whether monitors can be jailed (Firecracker's jailer needs root too)."""
    return os.geteuid() == 0


def _short_path(directory: Path) -> Path:
    """A short alias (a symlink in the temporary directory) of ``directory``: Unix socket paths
    are limited to 107 bytes, and a VM's sockets live under a data directory of any length."""
    alias = Path(tempfile.gettempdir()) / "kiln-vms" / hashlib.sha256(
        str(directory).encode()).hexdigest()[:12]
    alias.parent.mkdir(exist_ok=True)
    for other in alias.parent.iterdir():  # aliases of data directories since removed
        if other.is_symlink() and not other.exists():
            other.unlink(missing_ok=True)
    if not (alias.is_symlink() and alias.resolve() == directory.resolve()):
        alias.unlink(missing_ok=True)
        alias.symlink_to(directory)
    return alias


async def _read_line(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> bytes:
    line = b""
    while not line.endswith(b"\n"):
        data = await loop.sock_recv(sock, 1)
        if not data:
            raise ConnectionResetError("closed before a line")
        line += data
    return line


def _close(*writers: asyncio.StreamWriter) -> None:
    for writer in writers:
        writer.close()


async def _reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The RuntimeApi's answers to the guest, each chunk stamped with the host's clock."""
    try:
        while data := await reader.read(65536):
            writer.write(agent.REPLY.pack(len(data), time.time_ns()) + data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass

