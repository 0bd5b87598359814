"""Test doubles for the States engine: a virtual clock, fake Lambda functions, a runner."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
from collections.abc import Awaitable, Callable
from typing import Any

from kiln.states.definition import parse_definition
from kiln.states.engine import ExecutionInfo, Interpreter, Outcome, Services
from kiln.states.history import History
from kiln.states.types import StatesFailure

START = 1_700_000_000.0  # 2023-11-14T22:13:20Z
REGION = "us-east-1"
ACCOUNT = "123456789012"


class Deadlock(AssertionError):
    pass


class FakeClock:
    """Virtual time: ``sleep`` parks until ``drive`` finds the loop idle and jumps ahead."""

    def __init__(self, start: float = START) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.t + seconds, next(self._seq), fut))
        await fut

    async def settle(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(100_000):
            await asyncio.sleep(0)
            if not loop._ready:  # type: ignore[attr-defined]
                return
        raise AssertionError("event loop never became idle")

    async def advance(self) -> bool:
        """Wake the earliest sleeper; False if nobody sleeps."""
        while self._sleepers:
            deadline, _, fut = heapq.heappop(self._sleepers)
            if fut.done():
                continue
            self.t = max(self.t, deadline)
            fut.set_result(None)
            return True
        return False

    async def drive(self, work: Awaitable[Any], until: Callable[[], bool] | None = None) -> Any:
        """Run ``work`` to completion, advancing virtual time whenever everything waits."""
        task = asyncio.ensure_future(work)
        while not task.done():
            await self.settle()
            if task.done() or (until is not None and until()):
                break
            if not await self.advance():
                task.cancel()
                raise Deadlock("every coroutine is waiting and no timer is pending")
        return task.result() if task.done() else None


class FakeFunctions:
    """Lambda functions by name; ``calls`` records (name, payload)."""

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.counts: dict[str, int] = {}
        self.clock = clock
        self.extra: dict[str, Callable[[Any], Awaitable[tuple[Any, str | None]]]] = {}

    async def invoke(self, function_arn: str, payload: bytes) -> tuple[bytes, str | None]:
        name = function_arn.split(":")[6]
        value = json.loads(payload)
        self.calls.append((name, value))
        self.counts[name] = self.counts.get(name, 0) + 1
        if name in self.extra:
            result, error = await self.extra[name](value)
            return json.dumps(result).encode(), error
        if name == "echo":
            return payload, None
        if name == "double":
            return json.dumps(value * 2).encode(), None
        if name == "missing":
            raise StatesFailure("Lambda.ResourceNotFoundException",
                                f"Function not found: {function_arn}")
        if name.startswith("fail"):
            # fail / fail-<ErrorType>
            error = name.split("-", 1)[1] if "-" in name else "Exception"
            return self.error(error, "boom"), "Unhandled"
        if name.startswith("flaky"):
            # flaky-<N>: fails N times with FlakyError, then echoes
            n = int(name.split("-")[1])
            if self.counts[name] <= n:
                return self.error("FlakyError", f"attempt {self.counts[name]}"), "Unhandled"
            return payload, None
        if name.startswith("sleep"):
            # sleep-<S>: takes S virtual seconds, then echoes
            assert self.clock is not None
            await self.clock.sleep(float(name.split("-")[1]))
            return payload, None
        raise StatesFailure("Lambda.ResourceNotFoundException",
                            f"Function not found: {function_arn}")

    @staticmethod
    def error(error_type: str, message: str) -> bytes:
        return json.dumps({"errorType": error_type, "errorMessage": message,
                           "trace": []}).encode()


def function_arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def make_services(clock: FakeClock, functions: FakeFunctions | None = None) -> Services:
    return Services(functions or FakeFunctions(clock), clock, REGION, ACCOUNT)


def interpreter(definition: dict[str, Any] | str, input_value: Any, services: Services,
                express: bool = False) -> tuple[Interpreter, History]:
    """An execution ``exec`` of state machine ``sm``, ready to ``execute()``."""
    text = definition if isinstance(definition, str) else json.dumps(definition)
    machine = parse_definition(text, express)
    info = ExecutionInfo(
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:sm:exec",
        "exec",
        f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm",
        "sm",
        f"arn:aws:iam::{ACCOUNT}:role/r",
        {} if input_value is None else input_value,
        services.clock.now(),
    )
    history = History(services.clock)
    return Interpreter(services, machine, info, history), history


async def run_machine(definition: dict[str, Any] | str, input_value: Any = None, *,
                      clock: FakeClock | None = None, services: Services | None = None,
                      express: bool = False) -> tuple[Outcome, History]:
    clock = clock or (services.clock if services else FakeClock())  # type: ignore[assignment]
    assert isinstance(clock, FakeClock)
    interp, history = interpreter(definition, input_value, services or make_services(clock),
                                  express)
    outcome = await clock.drive(interp.execute())
    return outcome, history


def run(definition: dict[str, Any] | str, input_value: Any = None, **kw: Any) -> tuple[
        Outcome, History]:
    return asyncio.run(run_machine(definition, input_value, **kw))


def expect_row(outcome: Outcome, expected: Any) -> None:
    """A table row's expectation: its output (same JSON type), or ``{"error": name}``."""
    if isinstance(expected, dict) and set(expected) == {"error"}:
        assert outcome.status == "FAILED", outcome
        assert outcome.error == expected["error"]
    else:
        assert outcome.status == "SUCCEEDED", outcome
        assert outcome.output == expected
        assert type(outcome.output) is type(expected)


class ScaledClock:
    """Real time sped up ``factor`` times, for tests that talk to the API from another thread."""

    def __init__(self, factor: float = 1000.0) -> None:
        import time

        self._time = time
        self.factor = factor
        self.base = START
        self.t0 = time.monotonic()

    def now(self) -> float:
        return self.base + (self._time.monotonic() - self.t0) * self.factor

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)
