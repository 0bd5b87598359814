"""The ``unisolated`` backend: each environment is a plain child process in its own session.

For hosts where the default (``process``, ``kiln.sandbox.isolated``) cannot run: no root, no
namespaces or cgroups.  Functions then share the host's file system, network and users, so it
offers no isolation at all.  The Runtime API listener is a loopback socket created by the host;
processes, pipes and sockets are released on ``destroy``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

from kiln.sandbox._output import drain, spawn
from kiln.sandbox.types import SandboxSpec


class UnisolatedSandbox:
    def __init__(self, spec: SandboxSpec, forget: Callable[[str], object]) -> None:
        self.env_id = spec.env_id
        self._forget = forget
        self.spec = spec
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(16)
        self.listener.setblocking(False)
        self._proc: subprocess.Popen[bytes] | None = None
        self._out_fd: int | None = None
        self._pidfd: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._peak_kb = 0
        self._status_fd: int | None = None

    @property
    def runtime_api_address(self) -> str:
        host, port = self.listener.getsockname()[:2]
        return f"{host}:{port}"

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        env = {**self.spec.env, "AWS_LAMBDA_RUNTIME_API": self.runtime_api_address}
        self._proc, read_fd = spawn(self.spec.argv, env, str(self.spec.task_root))
        self._out_fd = read_fd
        loop.add_reader(read_fd, self.drain_output)
        self._exited = loop.create_future()
        self._pidfd = os.pidfd_open(self._proc.pid)
        loop.add_reader(self._pidfd, self._reap)
        # Kept open: re-reading one descriptor is far cheaper than opening /proc each invoke.
        with contextlib.suppress(OSError):
            self._status_fd = os.open(f"/proc/{self._proc.pid}/status", os.O_RDONLY)

    def _reap(self) -> None:
        assert self._proc is not None and self._exited is not None
        self._sample_memory()
        returncode = self._proc.poll()
        if returncode is None:
            return
        self._close_pidfd()
        self.drain_output()
        if not self._exited.done():
            self._exited.set_result(returncode)

    def _close_pidfd(self) -> None:
        if self._status_fd is not None:
            os.close(self._status_fd)
            self._status_fd = None
        if self._pidfd is not None:
            asyncio.get_running_loop().remove_reader(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    async def wait(self) -> int:
        if self._exited is None:
            raise RuntimeError("sandbox not started")
        return await asyncio.shield(self._exited)

    def drain_output(self) -> None:
        fd = self._out_fd
        if fd is not None and drain(fd, self.spec.on_output):
            self._close_output()

    def _close_output(self) -> None:
        if self._out_fd is not None:
            asyncio.get_running_loop().remove_reader(self._out_fd)
            os.close(self._out_fd)
            self._out_fd = None

    def _sample_memory(self) -> None:
        if self._status_fd is None:
            return
        with contextlib.suppress(OSError, ValueError, IndexError):
            status = os.pread(self._status_fd, 4096, 0)
            start = status.index(b"VmHWM:") + 6
            self._peak_kb = max(self._peak_kb, int(status[start:status.index(b"kB", start)]))

    def max_memory_used_mb(self) -> int:
        self._sample_memory()
        return max(1, -(-self._peak_kb // 1024))

    def _signal(self, signum: int) -> None:
        if self._proc is not None and self._proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._proc.pid, signum)

    async def freeze(self) -> None:
        self._signal(signal.SIGSTOP)

    async def thaw(self) -> None:
        self._signal(signal.SIGCONT)

    async def destroy(self) -> None:
        self._signal(signal.SIGKILL)
        if self._exited is not None and self._proc is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._exited), timeout=5)
            except TimeoutError:
                self._proc.wait()
                self._close_pidfd()
        self.drain_output()
        self._close_output()
        self.listener.close()
        self._forget(self.env_id)


class UnisolatedBackend:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self._live: dict[str, UnisolatedSandbox] = {}

    async def create(self, spec: SandboxSpec) -> UnisolatedSandbox:
        sandbox = UnisolatedSandbox(spec, forget=lambda env_id: self._live.pop(env_id, None))
        self._live[spec.env_id] = sandbox
        return sandbox

    async def close(self) -> None:
        for sandbox in list(self._live.values()):
            await sandbox.destroy()
        self._live.clear()
