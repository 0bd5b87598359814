"""One execution environment: a sandbox, its Runtime API, and Lambda's lifecycle around them.

    env = Environment(env_id, record, sandbox)
    failure = await env.initialize(init_timeout, request_id)  # None once the runtime waits
    result = await env.invoke(invocation, timeout)   # Sandbox.Timedout / Runtime.ExitError too
"""

from __future__ import annotations

import asyncio
import signal
import time
from enum import Enum

from kiln.functions.types import FunctionRecord
from kiln.runtime.api import RuntimeApi
from kiln.runtime.types import Invocation, InvocationResult
from kiln.sandbox.types import ResourceLimited, Restorable, Sandbox


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


def _entrypoint_message(exc: OSError) -> str:
    """Lambda's words for a runtime that could not be started."""
    if isinstance(exc, FileNotFoundError):
        return f"Error: Couldn't find valid bootstrap(s): [{exc.filename}]"
    reason = (exc.strerror or type(exc).__name__).lower()
    return f"Error: fork/exec {exc.filename}: {reason}"


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
        #: A SnapStart fork's time from the fork request to ready (its first REPORT's).
        self.restore_duration_ms: float | None = None
        self.invocations = 0
        self.last_used = time.monotonic()
        self.retired = False
        self._exit: asyncio.Task[int] | None = None
        #: Held: on Python 3.11 every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()
        self._frozen = False
        self._freeze_timer: asyncio.TimerHandle | None = None
        self._freeze_delay = 0.0
        self._freezing: asyncio.Task[None] | None = None

    @property
    def alive(self) -> bool:
        """Not destroyed, and the runtime has not exited (it may die while idle, e.g. killed
        from outside)."""
        exited = self._exit is not None and self._exit.done()
        return self.state is not State.DEAD and not exited

    async def initialize(self, init_timeout: float, request_id: str) -> InvocationResult | None:
        """Start the runtime and wait for its first /next; otherwise the failure, as answered
        to ``request_id`` (the invoke that met the cold start)."""
        prefix = f"RequestId: {request_id} "
        await self.api.serve(self.sandbox.listener)
        started = time.perf_counter()
        try:
            await self.sandbox.start()
        except OSError as exc:  # no bootstrap, or one that cannot be executed
            self.init_duration_ms = (time.perf_counter() - started) * 1000
            failure = InvocationResult.platform_error(
                "Runtime.InvalidEntrypoint", prefix + _entrypoint_message(exc))
            await self.destroy()
            return failure
        self._exit = self.loop.create_task(self.sandbox.wait())
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
            if isinstance(self.sandbox, Restorable) and self.sandbox.restored:
                self.restore_duration_ms, self.init_duration_ms = self.init_duration_ms, None
            if isinstance(self.sandbox, ResourceLimited):
                self.sandbox.end_init()
            return None
        if self.api.init_error is not None:
            failure = self.api.init_error
        elif self._exit in done:
            failure = InvocationResult.platform_error(
                self._exit_error_type(),
                f"{prefix}Error: Runtime exited with error: "
                f"{exit_description(self._exit.result())}")
        else:
            failure = InvocationResult.platform_error(
                "Sandbox.Timedout",
                f"{prefix}Error: INIT phase timed out after {init_timeout:.2f} seconds")
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
        request_id = invocation.request_id
        status = "ok"

        # Whichever comes first settles the invocation: the runtime's answer, the runtime's
        # exit, or the timeout (callbacks rather than asyncio.wait: this is the hot path).
        def on_exit(exit_task: asyncio.Task[int]) -> None:
            nonlocal status
            if not exit_task.cancelled() and invocation.finish(InvocationResult.platform_error(
                    self._exit_error_type(),
                    f"RequestId: {request_id} Error: Runtime exited with error: "
                    f"{exit_description(exit_task.result())}")):
                status = "crash"

        def on_timeout() -> None:
            nonlocal status
            if invocation.finish(InvocationResult.platform_error(
                    "Sandbox.Timedout",
                    f"RequestId: {request_id} Error: Task timed out after {timeout:.2f} seconds")):
                status = "timeout"

        self._exit.add_done_callback(on_exit)
        timer = self.loop.call_later(timeout, on_timeout)
        self.api.submit(invocation)
        try:
            result = await invocation.result
        finally:
            timer.cancel()
            self._exit.remove_done_callback(on_exit)
        self.last_used = time.monotonic()
        if status != "ok":
            # A timeout fires from the timer phase, a crash may be seen before the output
            # pipe's last bytes: read them now.  An answer over the Runtime API needs no read:
            # the runtime wrote its output before its answer, so the loop's poll delivered the
            # output (its reader drains to the end) no later than the answer, and before this
            # coroutine resumed (one system call less per invoke).
            self.sandbox.drain_output()
            await self.destroy()
            return result, status
        self.state = State.IDLE
        return result, "ok" if result.error_type is None else "error"

    def _exit_error_type(self) -> str:
        """How Lambda names a runtime's death: the memory limit's kill is its own error."""
        if isinstance(self.sandbox, ResourceLimited) and self.sandbox.oom_killed():
            return "Runtime.OutOfMemory"
        return "Runtime.ExitError"

    def schedule_freeze(self, delay: float) -> None:
        """Freeze the idle environment ``delay`` seconds after its last use unless work arrives
        first.  One timer serves a run of invokes: when it fires early it re-arms for the rest,
        rather than being cancelled and created again on every invoke (the hot path)."""
        self._freeze_delay = delay
        if self._freeze_timer is None:
            self._freeze_timer = self.loop.call_later(delay, self._freeze_due)

    def _freeze_due(self) -> None:
        self._freeze_timer = None
        if self.state is not State.IDLE or self._frozen:
            return  # busy: its release schedules the freeze again
        remaining = self.last_used + self._freeze_delay - time.monotonic()
        if remaining > 0:
            self._freeze_timer = self.loop.call_later(remaining, self._freeze_due)
            return
        self._freezing = self.loop.create_task(self.freeze())

    async def freeze(self) -> None:
        if self.state is State.IDLE and not self._frozen:
            self._frozen = True
            await self.sandbox.freeze()

    async def destroy(self) -> None:
        if self.state is State.DEAD:
            return
        self.state = State.DEAD
        if self._freeze_timer is not None:
            self._freeze_timer.cancel()
        self.api.close()
        await self.sandbox.destroy()
        if self._exit is not None and not self._exit.done():
            self._exit.cancel()
