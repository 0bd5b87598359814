"""Kiln's guest agent: PID 1 of a microVM (started by the image's /init), stdlib only.

It talks to the host over :mod:`kiln.vmm.guest.channel` (AF_VSOCK, or the virtio-serial mux of
:mod:`kiln.vmm.mux`; vsock's semantics either way):

* The host opens port ``CONTROL_PORT`` and sends one JSON line, the *hello*: the wall clock, fresh
  entropy and, on a cold boot, ``"start": true``.  The agent sets the clock, mixes in the
  entropy, and on a cold boot reads the runtime's configuration (argv, env, cwd) from the MMDS
  at ``/kiln/runtime``, starts the runtime and answers a ``STARTED`` message
  (``{"pid": ..., "output_total": ...}``) or ``FAILED`` (``{"errno", "strerror", "filename"}``).
  After that the connection carries ``OUTPUT`` (the runtime's stdout and stderr) and
  ``EXITED`` (``{"status": returncode, "oom_kills": n}``) messages: ``MESSAGE`` header then payload.
* The runtime's Runtime API is ``127.0.0.1:9001`` here; each of its connections is carried to the
  host's port 9001, every chunk prefixed by ``CHUNK`` (length, output bytes sent so far, the
  runtime's peak memory in kB) so the host delivers output written before a response first;
  the host prefixes its chunks with ``REPLY`` (length, its wall clock), which the agent sets the
  guest's clock to, so a deadline the runtime reads is measured on the host's clock (an emulated
  guest's clock drifts).
* After a snapshot restore the channel is reset: requests the runtime sent and the host has not
  begun to answer (its pending ``/next``) are sent again once the new host says hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import signal
import struct
import subprocess
import time

from kiln.sandbox._output import drain, spawn
from kiln.vmm import mux
from kiln.vmm.guest import channel

CONTROL_PORT = 1024
RUNTIME_API_PORT = 9001
MESSAGE = struct.Struct(">BI")
CHUNK = struct.Struct(">IQI")
REPLY = struct.Struct(">IQ")
OUTPUT, STARTED, FAILED, EXITED = 1, 2, 3, 4
RNDRESEEDCRNG = 0x5207  # _IO('R', 0x07)


class Agent:
    def __init__(self, host: mux.Channel) -> None:
        self.host = host
        self.control: asyncio.StreamWriter | None = None
        #: Bumped at each hello: a reset connection retries once a newer host has said hello.
        self.generation = 0
        self.attached = asyncio.Condition()
        self.runtime: subprocess.Popen[bytes] | None = None
        self.output_fd: int | None = None
        self.output_total = 0
        self.peak_kb = 0

    # -- control ----------------------------------------------------------------------------

    async def on_control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = json.loads(await reader.readline())
        time.clock_settime_ns(time.CLOCK_REALTIME, int(hello["time_ns"]))
        with open("/dev/urandom", "wb") as urandom:
            # Restored clones share the kernel's CRNG state: mix in the host's entropy and
            # reseed now, or every clone would draw the same "random" bytes.
            urandom.write(bytes.fromhex(hello["entropy"]))
            urandom.flush()
            fcntl.ioctl(urandom.fileno(), RNDRESEEDCRNG)
        self.control = writer
        if hello.get("start") and self.runtime is None:
            config = json.loads(await mux.mmds_get(self.host, "/kiln/runtime"))
            try:
                self.start(list(config["argv"]), dict(config["env"]), str(config["cwd"]))
            except OSError as exc:
                self.send(FAILED, json.dumps({"errno": exc.errno, "strerror": exc.strerror,
                                              "filename": exc.filename}).encode())
                await writer.drain()
                return
        pid = self.runtime.pid if self.runtime is not None else None
        self.send(STARTED, json.dumps({"pid": pid, "output_total": self.output_total}).encode())
        self.flush_output()
        async with self.attached:
            self.generation += 1
            self.attached.notify_all()
        await reader.read()  # until the host lets go (or the channel resets)
        if self.control is writer:
            self.control = None

    def send(self, kind: int, payload: bytes) -> None:
        if self.control is not None and not self.control.is_closing():
            self.control.write(MESSAGE.pack(kind, len(payload)) + payload)

    # -- the runtime process ----------------------------------------------------------------

    def start(self, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.runtime, self.output_fd = spawn(argv, env, cwd)
        asyncio.get_running_loop().add_reader(self.output_fd, self.flush_output)

    def flush_output(self) -> None:
        """Send whatever the runtime has written so far (always before its next request)."""
        fd = self.output_fd
        if fd is not None and drain(fd, self._send_output):
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
            self.output_fd = None

    def _send_output(self, chunk: bytes) -> None:
        self.output_total += len(chunk)
        self.send(OUTPUT, chunk)

    def sample_memory(self) -> int:
        if self.runtime is not None:
            with contextlib.suppress(OSError, ValueError), \
                    open(f"/proc/{self.runtime.pid}/status", "rb") as status:
                for line in status:
                    if line.startswith(b"VmHWM:"):
                        self.peak_kb = max(self.peak_kb, int(line.split()[1]))
        return self.peak_kb

    def reap(self) -> None:
        """PID 1 adopts every orphan: reap them all, and report the runtime's own exit."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            if self.runtime is not None and pid == self.runtime.pid:
                self.runtime.returncode = os.waitstatus_to_exitcode(status)
                self.flush_output()
                self.send(EXITED, json.dumps({"status": self.runtime.returncode,
                                              "oom_kills": oom_kills()}).encode())

    # -- the Runtime API bridge -------------------------------------------------------------

    async def on_runtime(self, runtime_reader: asyncio.StreamReader,
                         runtime_writer: asyncio.StreamWriter) -> None:
        """One runtime connection to 127.0.0.1:9001, carried to the host (again after a reset)."""
        unanswered = bytearray()  # what the runtime sent since the host last answered
        runtime_done = False
        try:
            while True:
                async with self.attached:
                    await self.attached.wait_for(lambda: self.generation > 0
                                                 and self.control is not None)
                    generation = self.generation
                try:
                    host_reader, host_writer = await self.host.connect(RUNTIME_API_PORT)
                except ConnectionRefusedError:
                    await self._next_generation(generation)
                    continue
                if unanswered:
                    self._forward(host_writer, bytes(unanswered))
                if runtime_done:
                    host_writer.write_eof()
                upstream = asyncio.ensure_future(self._upstream(runtime_reader, host_writer,
                                                                unanswered))
                await self._downstream(host_reader, runtime_writer, unanswered)
                runtime_done = upstream.done() and not upstream.cancelled()
                upstream.cancel()
                host_writer.close()
                if not unanswered:
                    return  # the host closed it: so does the runtime's side
                # A reset (snapshot restore) with a request outstanding: send it again.
                await self._next_generation(generation)
        finally:
            runtime_writer.close()

    async def _next_generation(self, seen: int) -> None:
        async with self.attached:
            await self.attached.wait_for(lambda: self.generation > seen)

    def _forward(self, host_writer: asyncio.StreamWriter, data: bytes) -> None:
        self.flush_output()
        host_writer.write(CHUNK.pack(len(data), self.output_total, self.sample_memory()) + data)

    async def _upstream(self, runtime_reader: asyncio.StreamReader,
                        host_writer: asyncio.StreamWriter, unanswered: bytearray) -> None:
        while data := await runtime_reader.read(65536):
            unanswered += data
            self._forward(host_writer, data)
            await host_writer.drain()
        host_writer.write_eof()

    async def _downstream(self, host_reader: asyncio.StreamReader,
                          runtime_writer: asyncio.StreamWriter, unanswered: bytearray) -> None:
        """Host to runtime until the host's end of file."""
        with contextlib.suppress(asyncio.IncompleteReadError):
            while True:
                length, host_time_ns = REPLY.unpack(await host_reader.readexactly(REPLY.size))
                data = await host_reader.readexactly(length)
                time.clock_settime_ns(time.CLOCK_REALTIME, host_time_ns)
                unanswered.clear()
                runtime_writer.write(data)
                await runtime_writer.drain()


def oom_kills() -> int:
    """How often the guest kernel's OOM killer ran: the VM's memory is the function's, so
    any kill is the function's."""
    with contextlib.suppress(OSError, ValueError), open("/proc/vmstat") as vmstat:
        for line in vmstat:
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    return 0


async def serve() -> None:
    host = await channel.open_channel()
    agent = Agent(host)
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGCHLD, agent.reap)
    host.listen(CONTROL_PORT, agent.on_control)
    server = await asyncio.start_server(agent.on_runtime, "127.0.0.1", RUNTIME_API_PORT)
    async with server:
        await server.serve_forever()


def main() -> None:
    asyncio.run(serve())
