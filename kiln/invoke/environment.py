"""One execution environment: a sandbox, its Runtime API, and Lambda's lifecycle around them.

    env = Environment(env_id, record, sandbox)
    failure = await env.initialize(init_timeout)     # None once the runtime asked for work
    result = await env.invoke(invocation, timeout)   # Sandbox.Timedout / Runtime.ExitError too
"""

from __future__ import annotations

import asyncio
import signal
import time
from enum import Enum
from typing import Any

from kiln.functions.types import FunctionRecord
from kiln.runtime.api import RuntimeApi
from kiln.runtime.types import Invocation, InvocationResult
from kiln.sandbox.types import Sandbox


class State(Enum):
    INIT = "init"
    IDLE = "idle"
    BUSY = "busy"
    DEAD = "dead"


class Output:
    """Splits the runtime's output into lines, collected until taken."""

    def __init__(self) -> None:
        self._partial = b""
        self._lines: list[str] = []

    def feed(self, chunk: bytes) -> None:
        data = self._partial + chunk
        *complete, self._partial = data.split(b"\n")
        self._lines.extend(line.decode("utf-8", errors="replace") for line in complete)

    def take(self) -> list[str]:
        if self._partial:
            self._lines.append(self._partial.decode("utf-8", errors="replace"))
            self._partial = b""
        lines, self._lines = self._lines, []
        return lines


def exit_description(returncode: int) -> str:
    """How Lambda (in Go's words) describes a runtime's exit."""
    if returncode >= 0:
        return f"exit status {returncode}"
    names = {signal.SIGKILL: "killed", signal.SIGSEGV: "segmentation fault",
             signal.SIGABRT: "aborted", signal.SIGTERM: "terminated"}
    try:
        return f"signal: {names.get(signal.Signals(-returncode), signal.Signals(-returncode).name)}"
    except ValueError:
        return f"signal: {-returncode}"


class Environment:
    def __init__(self, env_id: str, record: FunctionRecord, sandbox: Sandbox,
                 output: Output) -> None:
        self.env_id = env_id
        self.record = record
        self.sandbox = sandbox
        self.output = output
        self.api = RuntimeApi(env_id)
        self.state = State.INIT
        self.init_duration_ms: float | None = None
        self.invocations = 0
        self.last_used = time.monotonic()
        self.retired = False
        self._init_failure: InvocationResult | None = None
        self._exit: asyncio.Task[int] | None = None
        self._frozen = False

    @property
    def alive(self) -> bool:
        return self.state is not State.DEAD

    async def initialize(self, init_timeout: float) -> InvocationResult | None:
        """Start the runtime and wait for its first /next; the failure result otherwise."""
        await self.api.serve(self.sandbox.listener)
        started = time.perf_counter()
        await self.sandbox.start()
        self._exit = asyncio.get_running_loop().create_task(self.sandbox.wait())
        ready = asyncio.ensure_future(self.api.ready.wait())
        init_error = asyncio.ensure_future(self.api.init_error_posted.wait())
        done, pending = await asyncio.wait(
            {ready, init_error, self._exit}, timeout=init_timeout,
            return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            if task is not self._exit:
                task.cancel()
        self.init_duration_ms = (time.perf_counter() - started) * 1000
        if ready in done and not self.api.init_error:
            self.state = State.IDLE
            return None
        if self.api.init_error is not None:
            failure = self.api.init_error
        elif self._exit in done:
            failure = InvocationResult.platform_error(
                "Runtime.ExitError",
                f"Error: Runtime exited with error: {exit_description(self._exit.result())}")
        else:
            failure = InvocationResult.platform_error(
                "Sandbox.Timedout", f"Error: INIT phase timed out after {init_timeout:.2f} seconds")
        self._init_failure = failure
        await self.destroy()
        return failure

    async def invoke(self, invocation: Invocation, timeout: float) -> tuple[InvocationResult, str]:
        """Run one invocation: (result, status) where status is ok | error | timeout | crash."""
        assert self._exit is not None and self.state is State.IDLE
        self.state = State.BUSY
        self.invocations += 1
        if self._frozen:
            await self.sandbox.thaw()
            self._frozen = False
        self.api.submit(invocation)
        waiting: set[asyncio.Future[Any]] = {invocation.result, self._exit}
        done, _ = await asyncio.wait(waiting, timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        self.sandbox.drain_output()
        self.last_used = time.monotonic()
        if invocation.result.done():
            self.state = State.IDLE
            result = invocation.result.result()
            return result, "ok" if result.error_type is None else "error"
        request_id = invocation.request_id
        if self._exit in done:
            failure = InvocationResult.platform_error(
                "Runtime.ExitError",
                f"RequestId: {request_id} Error: Runtime exited with error: "
                f"{exit_description(self._exit.result())}")
            invocation.finish(failure)
            await self.destroy()
            return failure, "crash"
        failure = InvocationResult.platform_error(
            "Sandbox.Timedout",
            f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds")
        invocation.finish(failure)
        await self.destroy()
        return failure, "timeout"

    async def freeze(self) -> None:
        if self.state is State.IDLE and not self._frozen:
            await self.sandbox.freeze()
            self._frozen = True

    async def destroy(self) -> None:
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        self.api.close()
        await self.sandbox.destroy()
        if self._exit is not None and not self._exit.done():
            self._exit.cancel()
