"""An in-memory sandbox backend for unit tests: a "runtime" is a coroutine in this process.

    async def echo(runtime: FakeRuntime) -> int:
        while True:
            event = await runtime.next()
            await runtime.respond(event.request_id, event.payload)

    backend = FakeBackend({"app.handler": echo})   # chosen by the function's _HANDLER

The coroutine talks to the real Runtime API over the environment's loopback listener, so
everything above the sandbox (assignment, timeouts, crashes, logs) runs unmodified.  Its
return value is the exit status; cancelling it (destroy) reads as SIGKILL.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from kiln.sandbox.types import SandboxSpec


@dataclass
class FakeEvent:
    request_id: str
    payload: bytes
    headers: dict[str, str]


class FakeRuntime:
    """A Runtime API client for fake programs (HTTP/1.1, one request at a time)."""

    def __init__(self, spec: SandboxSpec, address: tuple[str, int]) -> None:
        self.spec = spec
        self.env = spec.env
        self._address = address
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    def print(self, text: str) -> None:
        """Write a line of output, as the runtime's stdout would."""
        self.spec.on_output(text.encode() + b"\n")

    async def request(self, method: str, path: str, body: bytes = b"",
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        if self._writer is None:
            self._reader, self._writer = await asyncio.open_connection(*self._address)
        assert self._reader is not None
        lines = [f"{method} /2018-06-01{path} HTTP/1.1", "Host: fake",
                 f"Content-Length: {len(body)}"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        self._writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)
        head = await self._reader.readuntil(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        response_headers: dict[str, str] = {}
        for line in head.decode("latin-1").split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name:
                response_headers[name.strip().lower()] = value.strip()
        length = int(response_headers.get("content-length", "0"))
        payload = await self._reader.readexactly(length) if length else b""
        return status, response_headers, payload

    async def next(self) -> FakeEvent:
        status, headers, payload = await self.request("GET", "/runtime/invocation/next")
        if status != 200:
            raise RuntimeError(f"/next answered {status}")
        return FakeEvent(headers["lambda-runtime-aws-request-id"], payload, headers)

    async def respond(self, request_id: str, body: bytes) -> int:
        status, _, _ = await self.request("POST", f"/runtime/invocation/{request_id}/response",
                                          body, {"Content-Type": "application/json"})
        return status

    async def fail(self, request_id: str, body: bytes) -> int:
        status, _, _ = await self.request("POST", f"/runtime/invocation/{request_id}/error",
                                          body, {"Content-Type": "application/json"})
        return status

    async def init_error(self, error_type: str, body: bytes) -> int:
        status, _, _ = await self.request("POST", "/runtime/init/error", body,
                                          {"Lambda-Runtime-Function-Error-Type": error_type})
        return status

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()


Program = Callable[[FakeRuntime], Coroutine[Any, Any, int]]


class FakeSandbox:
    def __init__(self, spec: SandboxSpec, program: Program,
                 forget: Callable[[str], object]) -> None:
        self.env_id = spec.env_id
        self.spec = spec
        self.program = program
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(8)
        self.listener.setblocking(False)
        self.frozen = False
        self.destroyed = False
        self._forget = forget
        self._task: asyncio.Task[int] | None = None
        self._runtime: FakeRuntime | None = None

    async def start(self) -> None:
        host, port = self.listener.getsockname()[:2]
        self._runtime = FakeRuntime(self.spec, (host, port))
        self._task = asyncio.get_running_loop().create_task(self.program(self._runtime))

    async def wait(self) -> int:
        assert self._task is not None, "sandbox not started"
        try:
            return await asyncio.shield(self._task)
        except asyncio.CancelledError:
            if self._task.cancelled():
                return -signal.SIGKILL
            raise

    def drain_output(self) -> None:
        """Output is delivered synchronously by FakeRuntime.print."""

    def max_memory_used_mb(self) -> int:
        return 1

    async def freeze(self) -> None:
        self.frozen = True

    async def thaw(self) -> None:
        self.frozen = False

    async def destroy(self) -> None:
        if self.destroyed:
            return
        self.destroyed = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._runtime is not None:
            self._runtime.close()
        self.listener.close()
        self._forget(self.env_id)


class FakeBackend:
    """Runs the program registered under the function's handler name."""

    def __init__(self, programs: dict[str, Program]) -> None:
        self.programs = programs
        self.live: dict[str, FakeSandbox] = {}
        self.created = 0

    async def create(self, spec: SandboxSpec) -> FakeSandbox:
        handler = spec.env.get("_HANDLER", "")
        if handler not in self.programs:
            raise KeyError(f"no fake program for handler {handler!r}")
        self.created += 1
        sandbox = FakeSandbox(spec, self.programs[handler],
                              forget=lambda env_id: self.live.pop(env_id, None))
        self.live[spec.env_id] = sandbox
        return sandbox

    async def close(self) -> None:
        for sandbox in list(self.live.values()):
            await sandbox.destroy()
