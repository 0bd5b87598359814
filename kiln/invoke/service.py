"""Synchronous invocation: lease, assign, run, log.

Once a function has started running, the caller always gets a 200 with the outcome (botocore
retries 429/5xx, which would run the function again), and a retried request with the same
``amz-sdk-invocation-id`` gets the first attempt's outcome instead of a second run.

    outcome = await invoker.invoke(record, request)
"""

from __future__ import annotations

import asyncio
import base64
import functools
import random
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.functions.types import FunctionRecord
from kiln.invoke.assignment import Assignment
from kiln.invoke.counting import Counting
from kiln.invoke.environment import Environment
from kiln.invoke.logs import TAIL_BYTES, LogStore, report_line
from kiln.runtime.types import Invocation, InvocationResult

_DEDUPE_MAX = 10_000
#: The platform's failures, each with its REPORT Status; their log blocks also carry an
#: error line stamped with the time it is written.
_FAILURES = {"timeout": "timeout", "crash": "error", "init": "error"}


# Values made on every invoke: slots rather than frozen (a frozen dataclass's __init__ sets
# each field through object.__setattr__); nothing changes them once made.
@dataclass(slots=True)
class InvokeRequest:
    payload: bytes
    invoked_arn: str
    client_context: str | None = None
    cognito_identity: str | None = None
    tail: bool = False
    dedupe_key: str | None = None
    request_id: str = field(default_factory=lambda: new_request_id())
    #: Told the result as soon as the function has one (``Invocation.on_finish``).
    on_result: Callable[[InvocationResult], object] | None = None


@dataclass(slots=True)
class InvokeOutcome:
    request_id: str
    result: InvocationResult
    executed_version: str
    status: str  # ok | error | timeout | crash | init
    log_tail: str | None = None  # base64 of the last 4 KB of the log, when asked for


class Invoker:
    def __init__(self, assignment: Assignment, counting: Counting, logs: LogStore,
                 dedupe_seconds: float) -> None:
        self.assignment = assignment
        self.counting = counting
        self.logs = logs
        self.dedupe_seconds = dedupe_seconds
        self._recent: OrderedDict[str, tuple[float, asyncio.Future[InvokeOutcome]]] = \
            OrderedDict()

    async def invoke(self, record: FunctionRecord, request: InvokeRequest) -> InvokeOutcome:
        """Run once; raises AwsError (429) only before the function runs."""
        if request.dedupe_key is None:
            with self.counting.lease(record.name):
                return await self._run(record, request)
        self._expire()
        known = self._recent.get(request.dedupe_key)
        if known is not None:
            return await asyncio.shield(known[1])
        with self.counting.lease(record.name):
            future: asyncio.Future[InvokeOutcome] = asyncio.get_running_loop().create_future()
            self._recent[request.dedupe_key] = (time.monotonic(), future)
            try:
                outcome = await self._run(record, request)
            except BaseException as exc:
                del self._recent[request.dedupe_key]
                future.set_exception(exc)
                future.exception()  # retrieved: callers that shared it re-raise on their own
                raise
            future.set_result(outcome)
            return outcome

    def _expire(self) -> None:
        horizon = time.monotonic() - self.dedupe_seconds
        while self._recent:
            key, (started, future) = next(iter(self._recent.items()))
            if (started >= horizon or not future.done()) and len(self._recent) <= _DEDUPE_MAX:
                break
            del self._recent[key]

    async def _run(self, record: FunctionRecord, request: InvokeRequest) -> InvokeOutcome:
        request_id = request.request_id
        env, failure = await self.assignment.acquire(record, request_id)
        init_lines = env.output.take()
        init_duration = env.init_duration_ms if env.invocations == 0 else None
        restore_duration = env.restore_duration_ms if env.invocations == 0 else None
        started = time.perf_counter()
        if failure is not None:
            result, status = failure, "init"
        else:
            invocation = Invocation(
                request_id=request_id,
                payload=request.payload,
                deadline_ms=int(time.time() * 1000) + record.timeout * 1000,
                invoked_function_arn=request.invoked_arn,
                trace_id=_trace_id(),
                client_context=request.client_context,
                cognito_identity=request.cognito_identity,
                result=env.loop.create_future(),
                on_finish=request.on_result,
            )
            try:
                result, status = await env.invoke(invocation, record.timeout)
            finally:
                await self.assignment.release(env)
        duration = (time.perf_counter() - started) * 1000
        # The block but for the memory peak (read once the caller has its answer).
        block = functools.partial(_lines, record, request_id, result, status, init_lines,
                                  env.output.take(), duration, init_duration, restore_duration)
        if not request.tail:
            env.loop.call_soon(self._log_later, record.name, env, status, block)
            return InvokeOutcome(request_id, result, record.version, status)
        lines = block(env.sandbox.max_memory_used_mb())
        self.logs.append(record.name, _text(lines))
        # This invocation's part only: init output belongs to the environment's log,
        # unless INIT failed and that output is the only account of why.
        shown = lines if status == "init" else lines[len(init_lines):]
        tail = base64.b64encode(_text(shown).encode()[-TAIL_BYTES:]).decode()
        return InvokeOutcome(request_id, result, record.version, status, tail)

    def _log_later(self, function_name: str, env: Environment, status: str,
                   block: Callable[[int], list[str]]) -> None:
        """Nobody waits for this log: read the memory peak for its REPORT (a system call),
        and format the block with the next batch."""
        lines = functools.partial(block, env.sandbox.max_memory_used_mb())
        if status in _FAILURES:  # its lines tell the time they are made: now
            self.logs.append(function_name, _text(lines()))
        else:
            self.logs.defer(function_name, lambda: _text(lines()))


def _text(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


def _lines(record: FunctionRecord, request_id: str, result: InvocationResult, status: str,
           init_lines: list[str], output: list[str], duration: float,
           init_duration: float | None, restore_duration: float | None,
           max_memory: int) -> list[str]:
    """The invocation's START ... REPORT block, as lines."""
    lines = [*init_lines, f"START RequestId: {request_id} Version: {record.version}"]
    lines.extend(output)
    if status in _FAILURES:
        error = result.error_json()
        lines.append(f"{_now_iso()} {request_id} {error.get('errorMessage', '')}")
        if status != "timeout":
            lines.append(str(error.get("errorType", "")))
    lines.append(f"END RequestId: {request_id}")
    lines.append(report_line(
        request_id, duration, record.memory_size, max_memory, init_duration,
        restore_duration_ms=restore_duration,
        status=_FAILURES.get(status),
        error_type=result.error_type if status in ("crash", "init") else None))
    return lines


def new_request_id() -> str:
    """A UUID4 from the process's PRNG: ids need uniqueness, not secrecy, and reading the
    kernel's entropy costs a system call per invoke.  Formatted by hand: uuid.UUID's
    constructor and __str__ are a measurable share of a warm invoke."""
    bits = random.getrandbits(128) & _UUID_CLEAR | _UUID_SET
    text = f"{bits:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


# RFC 4122 version 4: the version nibble (bits 76-79) is 4, the variant bits (62-63) are 10.
_UUID_CLEAR = ~((0xF000 << 64) | (0xC000 << 48))
_UUID_SET = (0x4000 << 64) | (0x8000 << 48)


def _trace_id() -> str:
    bits = f"{random.getrandbits(160):040x}"  # the root's 96 bits, then the parent's 64
    return f"Root=1-{int(time.time()):08x}-{bits[:24]};Parent={bits[24:]};Sampled=0"


def _now_iso() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
