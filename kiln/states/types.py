"""Shared types: the JSON alias, the clock and the Lambda invoker protocols, runtime failures."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol

JSON = Any
"""A decoded JSON value: dict, list, str, int, float, bool or None."""


class FunctionInvoker(Protocol):
    """Synchronously invokes a Kiln function.

    Returns (response body, function error type or None). A function that cannot be invoked at
    all (missing, throttled...) should raise ``StatesFailure("Lambda.ResourceNotFoundException",
    cause)`` or a similar service error name.
    """

    async def invoke(self, function_arn: str, payload: bytes) -> tuple[bytes, str | None]: ...


class Clock(Protocol):
    """Wall-clock time in epoch seconds and a sleep that tests can control."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def now(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class StatesFailure(Exception):
    """A failure inside an execution, named like AWS (``States.TaskFailed``, ``Lambda.X``...)."""

    def __init__(self, error: str, cause: str | None = None, *, heartbeat: bool = False) -> None:
        super().__init__(f"{error}: {cause}")
        self.error = error
        self.cause = cause
        self.heartbeat = heartbeat


class PathFailure(Exception):
    """A JSONPath/intrinsic evaluation problem; the engine turns it into ``States.Runtime``."""
