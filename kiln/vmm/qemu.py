"""The QEMU engine: ``qemu-system-x86_64 -M microvm`` driven over QMP.

KVM when ``/dev/kvm`` is hardware KVM (``kvm_intel``/``kvm_amd``), TCG otherwise: the PVM
``/dev/kvm`` of nested hosts cannot run a stock guest kernel (see the isolation notes).  QEMU
connects, as a client, to two Unix sockets the engine listens on in its work directory: QMP and
the virtio-serial channel (port ``kiln.vsock``) that carries vsock and the MMDS.

Guest RAM is a memfd the engine creates and QEMU maps shared, so a snapshot's migration
stream (``x-ignore-shared``) holds only the device state, and the engine writes the memory file
itself (a raw image, zero pages left as holes).  A restore fills a new memfd from the memory file
while QEMU starts, then loads the device state from a file descriptor (``-incoming defer`` and
``migrate-incoming fd:N``): no RAM goes through the migration stream, which under TCG took about
as long as everything else in a restore together.

Kiln extension to ``/snapshot/load``: the memory file may instead be the Unix socket of a memory
image server (:class:`MemoryImageServer`), which hands out the image as a sealed memfd; QEMU
maps it copy-on-write, so a restore copies nothing and the VMs restored from one snapshot share
the pages they only read, as Firecracker's ``MAP_PRIVATE`` memory file does.  (QEMU opens a
memory file read-write, so the file itself could not be shared safely.)  Such a VM cannot be
snapshotted itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import json
import os
import shlex
import socket
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kiln.vmm.jail import die_with_monitor
from kiln.vmm.model import ApiError, VmConfig
from kiln.vmm.mux import PORT_NAME

QEMU_BIN = "qemu-system-x86_64"
DEFAULT_BOOT_ARGS = "console=ttyS0 reboot=k panic=1"
#: QMP answers come quickly; a migration is polled instead.
QMP_TIMEOUT = 30.0
MIGRATION_POLL = 0.001
PAGE = 4096
ZERO_PAGE = bytes(PAGE)
COPY_CHUNK = 1 << 20
#: A shared memory image must be immutable: it backs every restore made from it.
IMAGE_SEALS = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW
IMAGE_SERVER_TIMEOUT = 5.0


@dataclass
class Incoming:
    """What a restore loads: the device state (a migration stream) at ``state_offset`` in
    ``state_path``, and the raw guest memory image ``mem_path``."""

    state_path: str
    state_offset: int
    mem_path: str


def detect_accelerator() -> str:
    """``kvm`` only for hardware KVM; PVM and friends get ``tcg``."""
    hardware = os.path.isdir("/sys/module/kvm_intel") or os.path.isdir("/sys/module/kvm_amd")
    return "kvm" if hardware and os.path.exists("/dev/kvm") else "tcg"


def host_tsc_khz() -> int | None:
    """The host's TSC rate: a TCG microvm guest cannot calibrate its TSC without it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("cpu MHz"):
                    return round(float(line.split(":")[1]) * 1000)
    except (OSError, ValueError):
        pass
    return None


def kernel_args(config: VmConfig, accelerator: str) -> str:
    """Boot arguments as Firecracker composes them (root device first), plus TCG's TSC rate."""
    assert config.boot is not None
    args = config.boot.boot_args if config.boot.boot_args is not None else DEFAULT_BOOT_ARGS
    root = next((d for d in config.drives.values() if d.is_root_device), None)
    if root is not None:
        device = f"PARTUUID={root.partuuid}" if root.partuuid else "/dev/vda"
        args += f" root={device} {'ro' if root.is_read_only else 'rw'}"
    khz = host_tsc_khz() if accelerator == "tcg" else None
    if khz and "tsc_early_khz=" not in args:
        args += f" tsc_early_khz={khz}"
    return args


def command_line(
    config: VmConfig, accelerator: str, workdir: str, qemu_bin: str, ram_fd: int,
    incoming: bool = False, copy_on_write: bool = False,
) -> list[str]:
    assert config.boot is not None
    machine = config.machine
    argv = [
        qemu_bin, "-M", "microvm,x-option-roms=off,memory-backend=ram", "-accel", accelerator,
        "-cpu", "host" if accelerator == "kvm" else "max",
        "-m", str(machine.mem_size_mib), "-smp", str(machine.vcpu_count),
        # The RAM: the engine's memfd, shared, so migrations leave it out (x-ignore-shared);
        # or a sealed memory image, mapped privately (copy-on-write).
        "-object", f"memory-backend-file,id=ram,size={machine.mem_size_mib}M,"
                   f"mem-path=/proc/self/fd/{ram_fd},share={'off' if copy_on_write else 'on'}",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        # QEMU's own seccomp filter (Firecracker filters each thread); spawning stays allowed
        # because snapshots stream through ``exec:cat``.
        "-sandbox", "on,obsolete=deny,elevateprivileges=deny,resourcecontrol=deny",
        "-chardev", f"socket,id=qmp,path={workdir}/qmp.sock,server=off",
        "-mon", "chardev=qmp,mode=control",
        "-serial", f"file:{config.serial_out_path}" if config.serial_out_path else "stdio",
        "-device", "i8042",  # SendCtrlAltDel, as Firecracker's i8042
    ]
    if not incoming:  # a restored guest never reads its kernel again: QEMU need not load it
        argv += ["-kernel", config.boot.kernel_image_path,
                 "-append", kernel_args(config, accelerator)]
        if config.boot.initrd_path:
            argv += ["-initrd", config.boot.initrd_path]
    # The root device is /dev/vda, as with Firecracker; the others follow in the order given.
    drives = sorted(config.drives.values(), key=lambda d: not d.is_root_device)
    for index, drive in enumerate(drives):
        cache = "unsafe" if drive.cache_type == "Unsafe" else "writeback"
        argv += [
            "-drive",
            f"id=drive{index},file={_escape(drive.path_on_host)},format=raw,if=none,"
            f"readonly={'on' if drive.is_read_only else 'off'},cache={cache}",
            "-device", f"virtio-blk-device,drive=drive{index}",
        ]
    if config.vsock is not None or config.mmds is not None:
        argv += [
            "-device", "virtio-serial-device,max_ports=2",
            "-chardev", f"socket,id=channel,path={workdir}/channel.sock,server=off",
            "-device", f"virtserialport,chardev=channel,name={PORT_NAME}",
        ]
    if incoming:
        argv += ["-incoming", "defer"]
    return argv


def _escape(path: str) -> str:
    """QEMU's option syntax doubles commas inside a value."""
    return path.replace(",", ",,")


class QemuVm:
    """One QEMU process; ``start`` returns once QMP (and the channel, if any) is connected."""

    def __init__(self, config: VmConfig, accelerator: str, workdir: str, qemu_bin: str) -> None:
        self.config = config
        self.accelerator = accelerator
        self.workdir = workdir
        self.qemu_bin = qemu_bin
        self.process: asyncio.subprocess.Process | None = None
        self.channel: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        self._qmp_reader: asyncio.StreamReader | None = None
        self._qmp_writer: asyncio.StreamWriter | None = None
        self._qmp_lock = asyncio.Lock()
        self._stderr_task: asyncio.Future[None] | None = None
        self.ram_size = config.machine.mem_size_mib << 20
        #: The guest's RAM: the engine's memfd (QEMU maps it shared; snapshots read it), or a
        #: shared memory image QEMU maps copy-on-write (``image``).
        self.ram = -1
        self.image = False

    async def start(self, incoming: Incoming | None = None) -> None:
        """Boot, or with ``incoming`` restore: ``incoming.mem_path`` is a raw memory image
        (copied in while QEMU starts) or a memory image server's Unix socket (see
        :class:`MemoryImageServer`), whose sealed image is mapped instead: nothing is copied."""
        if incoming is not None and stat.S_ISSOCK(os.stat(incoming.mem_path).st_mode):
            self.ram, self.image = receive_memory_image(incoming.mem_path, self.ram_size), True
        else:
            self.ram = os.memfd_create("kiln-vm-ram")
            os.ftruncate(self.ram, self.ram_size)
        wants_channel = self.config.vsock is not None or self.config.mmds is not None
        qmp_listener = listen_unix(f"{self.workdir}/qmp.sock")
        channel_listener = listen_unix(f"{self.workdir}/channel.sock") if wants_channel else None
        argv = command_line(self.config, self.accelerator, self.workdir, self.qemu_bin, self.ram,
                            incoming is not None, self.image)
        fds = [self.ram]
        fill: asyncio.Future[None] | None = None
        try:
            if incoming is not None:
                fds.append(os.open(incoming.state_path, os.O_RDONLY | os.O_CLOEXEC))
                os.lseek(fds[1], incoming.state_offset, os.SEEK_SET)
            if incoming is not None and not self.image:
                # The memory goes in while QEMU starts (a thread: the copy releases the GIL).
                fill = asyncio.get_running_loop().run_in_executor(
                    None, fill_memory, incoming.mem_path, self.ram, self.ram_size)
            self.process = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
                preexec_fn=die_with_monitor, pass_fds=fds,
            )
            accepts = [self._accept(qmp_listener)]
            if channel_listener is not None:
                accepts.append(self._accept(channel_listener))
            gather: asyncio.Future[list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
            gather = asyncio.gather(*accepts)
            exited: asyncio.Future[int] = asyncio.ensure_future(self.process.wait())
            either: list[asyncio.Future[Any]] = [gather, exited]
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
            if not gather.done():
                gather.cancel()
                raise ApiError(f"QEMU failed to start: {await self._stderr()}")
            exited.cancel()
            streams = gather.result()
        finally:
            for fd in fds[1:]:
                os.close(fd)  # QEMU has its own
            for listener in (qmp_listener, channel_listener):
                if listener is not None:
                    listener.close()
                    with contextlib.suppress(OSError):
                        os.unlink(listener.getsockname())
            if fill is not None and self.process is None:
                with contextlib.suppress(OSError):
                    await fill
        self._stderr_task = asyncio.ensure_future(self._forward_stderr())
        self._qmp_reader, self._qmp_writer = streams[0]
        if len(streams) > 1:
            self.channel = streams[1]
        await self._qmp_reader.readline()  # the greeting
        await self.qmp("qmp_capabilities")
        if incoming is not None:
            await self._ignore_shared()
            if fill is not None:
                await fill
            await self.qmp("migrate-incoming", uri=f"fd:{fds[1]}")
            await self._wait_incoming()

    async def _accept(
        self, listener: socket.socket
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock, _ = await asyncio.get_running_loop().sock_accept(listener)
        return await asyncio.open_connection(sock=sock, limit=1 << 20)

    async def _stderr(self) -> str:
        assert self.process is not None and self.process.stderr is not None
        with contextlib.suppress(asyncio.TimeoutError):
            data = await asyncio.wait_for(self.process.stderr.read(4096), 5)
            return data.decode(errors="replace").strip()
        return "no output"

    async def _forward_stderr(self) -> None:
        """QEMU's own messages go to the monitor's stderr (its log)."""
        assert self.process is not None and self.process.stderr is not None
        while line := await self.process.stderr.readline():
            sys.stderr.write("qemu: " + line.decode(errors="replace"))
            sys.stderr.flush()

    async def qmp(self, command: str, **arguments: Any) -> Any:
        assert self._qmp_reader is not None and self._qmp_writer is not None
        message: dict[str, Any] = {"execute": command}
        if arguments:
            message["arguments"] = arguments
        async with self._qmp_lock:
            self._qmp_writer.write(json.dumps(message).encode() + b"\n")
            await self._qmp_writer.drain()
            while True:
                line = await asyncio.wait_for(self._qmp_reader.readline(), QMP_TIMEOUT)
                if not line:
                    raise ApiError(f"QEMU exited during {command}")
                reply = json.loads(line)
                if "return" in reply:
                    return reply["return"]
                if "error" in reply:
                    raise ApiError(f"QEMU refused {command}: {reply['error'].get('desc')}")
                # anything else is an asynchronous event

    async def _ignore_shared(self) -> None:
        """Migrations leave the (shared) RAM out: the engine moves it itself."""
        await self.qmp("migrate-set-capabilities",
                       capabilities=[{"capability": "x-ignore-shared", "state": True}])

    async def status(self) -> str:
        reply = await self.qmp("query-status")
        return str(reply["status"])

    async def _wait_incoming(self) -> None:
        while (status := await self.status()) == "inmigrate":
            await asyncio.sleep(MIGRATION_POLL)
        if status not in ("paused", "running", "postmigrate"):
            raise ApiError(f"Failed to restore the microVM state: QEMU is {status}")

    async def pause(self) -> None:
        await self.qmp("stop")

    async def resume(self) -> None:
        await self.qmp("cont")

    async def ctrl_alt_del(self) -> None:
        keys = [{"type": "qcode", "data": k} for k in ("ctrl", "alt", "delete")]
        await self.qmp("send-key", keys=keys)

    async def save(self, mem_path: str) -> bytes:
        """Write the paused VM's memory to ``mem_path``; returns its device state (a migration
        stream without the RAM)."""
        if self.image:
            raise ApiError("Cannot save the microVM state: it was restored from a shared memory "
                           "image (snapshot its source instead).")
        stream = f"{self.workdir}/state.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(stream)
        await self._ignore_shared()
        await self.qmp("migrate", uri=f"exec:cat > {shlex.quote(stream)}")
        while True:
            info = await self.qmp("query-migrate")
            state = info.get("status")
            if state == "completed":
                break
            if state in ("failed", "cancelled"):
                raise ApiError(f"Cannot save the microVM state: {info.get('error-desc', state)}")
            await asyncio.sleep(MIGRATION_POLL)
        try:
            with open(stream, "rb") as f:
                device_state = f.read()
        finally:
            os.unlink(stream)
        await asyncio.get_running_loop().run_in_executor(
            None, dump_memory, self.ram, mem_path, self.ram_size)
        return device_state

    async def wait(self) -> int:
        assert self.process is not None
        return await self.process.wait()

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
            await self.process.wait()
        self.close()

    def close(self) -> None:
        """Release the RAM (once QEMU is gone, its last user)."""
        if self.ram >= 0:
            os.close(self.ram)
            self.ram = -1


@contextlib.contextmanager
def addressable(path: str) -> Iterator[str]:
    """``path`` as a Unix socket address: when too long (107 bytes at most), the same file
    through a descriptor of its directory."""
    if len(path.encode()) < 100:
        yield path
        return
    directory = os.open(os.path.dirname(path), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{directory}/{os.path.basename(path)}"
    finally:
        os.close(directory)


def listen_unix(path: str, backlog: int = 1) -> socket.socket:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


def _extents(fd: int, size: int) -> list[tuple[int, int]]:
    """The ranges of ``fd`` holding data (holes read as zeros)."""
    extents, offset = [], 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # nothing but a hole after offset
                break
            raise
        offset = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        extents.append((start, offset))
    return extents


def dump_memory(ram: int, mem_path: str, size: int) -> None:
    """The guest memory as a raw image; zero pages stay holes (they cost a restore nothing)."""
    out = os.open(mem_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.ftruncate(out, size)
        for start, end in _extents(ram, size):
            for offset in range(start, end, COPY_CHUNK):
                chunk = os.pread(ram, min(COPY_CHUNK, end - offset), offset)
                run = -1  # start of the current run of non-zero pages in chunk
                for page in range(0, len(chunk) + PAGE, PAGE):
                    zero = page >= len(chunk) or chunk[page:page + PAGE] == ZERO_PAGE
                    if not zero and run < 0:
                        run = page
                    elif zero and run >= 0:
                        os.pwrite(out, chunk[run:page], offset + run)
                        run = -1
    finally:
        os.close(out)


def fill_memory(mem_path: str, ram: int, size: int) -> None:
    """Copy a raw memory image's data (not its holes) into the guest RAM memfd."""
    source = os.open(mem_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if os.fstat(source).st_size != size:
            raise OSError(errno.EINVAL, "the memory file does not match the machine's size")
        for start, end in _extents(source, size):
            os.lseek(ram, start, os.SEEK_SET)
            while start < end:
                sent = os.sendfile(ram, source, start, end - start)
                if not sent:
                    raise OSError(errno.EIO, "the memory file ended early")
                start += sent
    finally:
        os.close(source)


def seal_memory_image(mem_path: str) -> int:
    """A sealed (immutable) memfd holding the raw memory image ``mem_path``."""
    size = os.stat(mem_path).st_size
    image = os.memfd_create("kiln-memory-image", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        os.ftruncate(image, size)
        fill_memory(mem_path, image, size)
        fcntl.fcntl(image, fcntl.F_ADD_SEALS, IMAGE_SEALS | fcntl.F_SEAL_SEAL)
    except OSError:
        os.close(image)
        raise
    return image


class MemoryImageServer:
    """Hands the sealed memfd ``image`` (see :func:`seal_memory_image`) to whoever connects to
    the Unix socket ``path``: a restore names ``path`` as its memory file.  ``close`` stops it
    and closes ``image``."""

    def __init__(self, image: int, path: str, loop: asyncio.AbstractEventLoop) -> None:
        self.image = image
        with addressable(path) as address:
            self._listener = listen_unix(address, backlog=64)
        self._loop = loop
        loop.add_reader(self._listener.fileno(), self._hand_out)

    def _hand_out(self) -> None:
        with contextlib.suppress(BlockingIOError):
            connection, _ = self._listener.accept()
            with connection, contextlib.suppress(OSError):
                socket.send_fds(connection, [b"m"], [self.image])

    def close(self) -> None:
        if self.image >= 0:
            self._loop.remove_reader(self._listener.fileno())
            self._listener.close()
            os.close(self.image)
            self.image = -1


def receive_memory_image(path: str, size: int) -> int:
    """The sealed memory image the server at ``path`` hands out."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(IMAGE_SERVER_TIMEOUT)
        with addressable(path) as address:
            sock.connect(address)
        _, fds, _, _ = socket.recv_fds(sock, 1, 1)
    if not fds:
        raise OSError(errno.EPROTO, f"{path} handed out no memory image")
    image = fds[0]
    try:
        os.set_inheritable(image, False)
        if fcntl.fcntl(image, fcntl.F_GET_SEALS) & IMAGE_SEALS != IMAGE_SEALS:
            raise OSError(errno.EPERM, "the memory image is not sealed")
        if os.fstat(image).st_size != size:
            raise OSError(errno.EINVAL, "the memory image does not match the machine's size")
    except OSError:
        os.close(image)
        raise
    return image
