"""The async queue over the in-memory FakeBackend, with a clock the tests move: event ages,
retry schedules that outlive the process, dead letters, and queues from an older Kiln."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from kiln.config import Settings
from kiln.invoke.queue import AsyncQueue
from kiln.invoke.service import InvokeRequest
from kiln.sandbox.fake import FakeBackend, FakeRuntime
from kiln.server import Kiln
from tests.invoke.test_service import Program, create, echo, fails

START = 1_800_000_000.0


@dataclass
class Node:
    """One Kiln process's worth of services on ``data_dir``, its queue on a movable clock."""

    data_dir: Path
    received: list[Any] = field(default_factory=list)
    now: float = START
    kiln: Kiln | None = None

    def clock(self) -> float:
        return self.now

    def open(self) -> Kiln:
        async def collect(runtime: FakeRuntime) -> int:
            while True:
                event = await runtime.next()
                self.received.append(json.loads(event.payload))
                await runtime.respond(event.request_id, b"null")

        programs: dict[str, Program] = {"echo.h": echo, "fails.h": fails, "collect.h": collect}
        settings = Settings.from_env(environ={}, data_dir=self.data_dir,
                                     async_retry_base_seconds=60.0,
                                     async_throttle_base_seconds=0.01)
        kiln = Kiln(settings, backend=FakeBackend(programs))
        kiln.queue = AsyncQueue(kiln.db, kiln.functions, kiln.event_configs, kiln.invoker,
                                settings, clock=self.clock)
        self.kiln = kiln
        return kiln

    def row(self, request_id: str) -> sqlite3.Row | None:
        assert self.kiln is not None
        return self.kiln.db.query_one("SELECT * FROM async_events WHERE request_id = ?",
                                      (request_id,))


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    node = Node(tmp_path)
    yield node
    if node.kiln is not None:
        await node.kiln.stop()


async def send(kiln: Kiln, name: str, payload: bytes = b'{"a": 1}') -> str:
    request = InvokeRequest(payload=payload, invoked_arn=kiln.arns.function(name))
    return await kiln.queue.enqueue(name, None, request)


async def settle(predicate: Callable[[], bool]) -> None:
    """Let the loop run until ``predicate`` holds (the FakeBackend runs in this loop)."""
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("never settled")


def starts(kiln: Kiln, name: str, request_id: str) -> int:
    return kiln.logs.read(name)[0].count(f"START RequestId: {request_id} ")


async def test_an_event_older_than_its_maximum_age_fails_without_running(node: Node) -> None:
    kiln = node.open()
    create(kiln, "fails.h")
    create(kiln, "collect.h")
    kiln.event_configs.put("fails", None, {
        "MaximumEventAgeInSeconds": 60,
        "DestinationConfig": {"OnFailure": {"Destination": kiln.arns.function("collect")}}})
    request_id = await send(kiln, "fails")
    node.now += 61  # the server was down for a minute
    await kiln.start()
    await settle(lambda: bool(node.received))
    [record] = node.received
    assert record["requestContext"] == {
        "requestId": request_id, "functionArn": kiln.arns.function("fails", "$LATEST"),
        "condition": "EventAgeExceeded", "approximateInvokeCount": 0}
    assert record["requestPayload"] == {"a": 1}
    assert "responseContext" not in record and "responsePayload" not in record
    assert starts(kiln, "fails", request_id) == 0
    assert node.row(request_id) is None


async def test_throttled_until_its_age_runs_out_then_dead_lettered(node: Node) -> None:
    kiln = node.open()
    create(kiln, "collect.h")
    name = create(kiln, "echo.h")
    await kiln.functions.update_configuration(
        name, {"DeadLetterConfig": {"TargetArn": kiln.arns.function("collect")}})
    kiln.functions.put_concurrency(name, {"ReservedConcurrentExecutions": 0}, 1000)
    kiln.event_configs.put(name, None, {"MaximumEventAgeInSeconds": 120})
    await kiln.start()
    request_id = await send(kiln, name, b'{"keep": "me"}')

    def throttled() -> bool:
        row = node.row(request_id)
        return row is not None and row["throttles"] >= 3

    await settle(throttled)
    assert not node.received
    node.now += 121
    await settle(lambda: bool(node.received))
    [letter] = node.received
    [message] = letter["Records"]
    assert message["body"] == '{"keep": "me"}'
    attributes = message["messageAttributes"]
    assert attributes["RequestID"]["stringValue"] == request_id
    assert attributes["ErrorCode"]["stringValue"] == "429"  # it never ran
    assert "MaximumEventAgeInSeconds (120)" in attributes["ErrorMessage"]["stringValue"]
    assert starts(kiln, name, request_id) == 0


async def test_retry_schedule_outlives_the_process(node: Node) -> None:
    """AWS's waits (here 60 s, then 120 s) are kept in the queue: a restart neither forgets a
    retry nor runs it early."""
    kiln = node.open()
    name = create(kiln, "fails.h")
    await kiln.start()
    request_id = await send(kiln, name)

    def attempted(count: int) -> Callable[[], bool]:
        def check() -> bool:
            row = node.row(request_id)
            return row is not None and row["attempts"] == count
        return check

    await settle(attempted(1))
    row = node.row(request_id)
    assert row is not None and row["not_before"] == START + 60
    await kiln.stop()

    node.now = START + 30  # restarted too early: nothing runs
    kiln = node.open()
    await kiln.start()
    await asyncio.sleep(0.2)
    assert starts(kiln, name, request_id) == 1
    await kiln.stop()

    node.now = START + 61
    kiln = node.open()
    await kiln.start()
    await settle(attempted(2))
    row = node.row(request_id)
    assert row is not None and row["not_before"] == START + 61 + 120
    await kiln.stop()

    node.now = START + 182
    kiln = node.open()
    await kiln.start()
    await settle(lambda: node.row(request_id) is None)  # retries exhausted, nowhere to go
    assert starts(kiln, name, request_id) == 3


async def test_a_queue_left_by_an_older_kiln_is_upgraded_and_drained(node: Node) -> None:
    with sqlite3.connect(node.data_dir / "kiln.sqlite3") as old:
        old.execute("""CREATE TABLE async_events (
            request_id TEXT PRIMARY KEY, function TEXT NOT NULL, qualifier TEXT,
            invoked_arn TEXT NOT NULL, payload BLOB NOT NULL, enqueued REAL NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0)""")
        old.execute("INSERT INTO async_events VALUES (?, ?, ?, ?, ?, ?, 0)",
                    ("old-1", "collect", None, "arn:aws:lambda:us-east-1:000000000000:"
                     "function:collect", b'{"from": "before"}', START))
    kiln = node.open()
    create(kiln, "collect.h")
    await kiln.start()
    await settle(lambda: bool(node.received))
    assert node.received == [{"from": "before"}]
    await settle(lambda: node.row("old-1") is None)
