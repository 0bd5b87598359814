"""Task tokens (``.waitForTaskToken``, activities) and activity task queues.

One ``TaskTokens`` and one ``ActivityBroker`` live in each service instance; the interpreter
registers a token before it hands it out, and ``SendTask*`` calls resolve it.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from kiln.states.types import JSON, Clock, StatesFailure


def new_token(execution_arn: str) -> str:
    raw = json.dumps({"e": execution_arn, "n": secrets.token_hex(16)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def token_execution(token: str) -> str | None:
    """The execution a token belongs to, or None if it is not a Kiln token."""
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("e"), str):
        return None
    return str(data["e"])


@dataclass(eq=False)
class Waiter:
    token: str
    execution_arn: str
    result: asyncio.Future[JSON] = field(default_factory=asyncio.Future)
    beat: asyncio.Event = field(default_factory=asyncio.Event)


class TaskTokens:
    def __init__(self) -> None:
        self._waiters: dict[str, Waiter] = {}

    def register(self, token: str, execution_arn: str) -> Waiter:
        waiter = Waiter(token, execution_arn)
        self._waiters[token] = waiter
        return waiter

    def discard(self, token: str) -> None:
        self._waiters.pop(token, None)

    def get(self, token: str) -> Waiter | None:
        waiter = self._waiters.get(token)
        if waiter is None or waiter.result.done():
            return None
        return waiter

    def succeed(self, token: str, output: JSON) -> bool:
        waiter = self.get(token)
        if waiter is None:
            return False
        waiter.result.set_result(output)
        return True

    def fail(self, token: str, error: str | None, cause: str | None) -> bool:
        waiter = self.get(token)
        if waiter is None:
            return False
        waiter.result.set_exception(StatesFailure(error or "", cause))
        return True

    def heartbeat(self, token: str) -> bool:
        waiter = self.get(token)
        if waiter is None:
            return False
        waiter.beat.set()
        return True


async def wait_for_token(waiter: Waiter, clock: Clock, timeout: float | None,
                         heartbeat: float | None) -> JSON:
    """The token's result; StatesFailure("States.Timeout") when a deadline passes."""
    deadline = None if timeout is None else clock.now() + timeout
    while True:
        limits = []
        if deadline is not None:
            limits.append(deadline - clock.now())
        if heartbeat is not None:
            limits.append(heartbeat)
        beat = asyncio.ensure_future(waiter.beat.wait())
        timer = asyncio.ensure_future(clock.sleep(min(limits))) if limits else None
        waits: set[asyncio.Future[Any]] = {waiter.result, beat}
        if timer is not None:
            waits.add(timer)
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            beat.cancel()
            if timer is not None:
                timer.cancel()
        if waiter.result.done():
            return waiter.result.result()
        if waiter.beat.is_set():
            waiter.beat.clear()
            if deadline is None or clock.now() < deadline:
                continue
        heartbeat_hit = deadline is None or clock.now() < deadline
        raise StatesFailure("States.Timeout", None, heartbeat=heartbeat_hit)


@dataclass(eq=False)
class ActivityTask:
    token: str
    input: str
    started: asyncio.Future[str] = field(default_factory=asyncio.Future)


class ActivityBroker:
    """Activity tasks waiting for workers, and workers waiting for tasks (long polls)."""

    def __init__(self) -> None:
        self._tasks: dict[str, deque[ActivityTask]] = {}
        self._pollers: dict[str, deque[asyncio.Future[ActivityTask]]] = {}

    def schedule(self, activity_arn: str, token: str, input_text: str) -> ActivityTask:
        task = ActivityTask(token, input_text)
        pollers = self._pollers.get(activity_arn)
        while pollers:
            poller = pollers.popleft()
            if not poller.done():
                poller.set_result(task)
                return task
        self._tasks.setdefault(activity_arn, deque()).append(task)
        return task

    def cancel(self, activity_arn: str, task: ActivityTask) -> None:
        queue = self._tasks.get(activity_arn)
        if queue and task in queue:
            queue.remove(task)

    async def poll(self, activity_arn: str, worker: str, clock: Clock,
                   timeout: float) -> ActivityTask | None:
        queue = self._tasks.get(activity_arn)
        task = queue.popleft() if queue else await self._wait(activity_arn, clock, timeout)
        if task is not None and not task.started.done():
            task.started.set_result(worker)
        return task

    async def _wait(self, activity_arn: str, clock: Clock,
                    timeout: float) -> ActivityTask | None:
        poller: asyncio.Future[ActivityTask] = asyncio.get_running_loop().create_future()
        pollers = self._pollers.setdefault(activity_arn, deque())
        pollers.append(poller)
        timer: asyncio.Future[Any] = asyncio.ensure_future(clock.sleep(timeout))
        try:
            await asyncio.wait({poller, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not poller.done():  # no task came: leave no stale poller behind
                poller.cancel()
                pollers.remove(poller)
        return None if poller.cancelled() else poller.result()

    def drop(self, activity_arn: str) -> list[ActivityTask]:
        """Forget an activity's queue (DeleteActivity); returns the tasks that were waiting."""
        self._pollers.pop(activity_arn, None)
        return list(self._tasks.pop(activity_arn, deque()))
