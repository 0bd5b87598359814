"""The durable queue behind Event (async) invokes, with AWS's retries and destinations.

An event is committed to SQLite before the caller gets its 202, and leaves the queue only in
the transaction that also queues what its outcome produces (a destination's invocation record
or a dead letter).  So every accepted event runs at least once and its outcome is delivered
exactly once, even across ``kill -9`` and restart.

What happens to an event follows its function's event invoke config
(kiln/functions/event_config.py), for the qualifier it was invoked with:

- a function error or timeout is retried MaximumRetryAttempts times (default 2), after
  ``async_retry_base_seconds`` and then twice that (AWS: about 1 and 2 minutes), with the
  same request id;
- a throttled event (or one Kiln failed to start) is retried with exponential backoff from
  ``async_throttle_base_seconds`` up to 5 minutes, for as long as it is younger than
  MaximumEventAgeInSeconds (default 6 hours);
- then its invocation record goes to the OnSuccess or OnFailure destination (condition
  Success, RetriesExhausted or EventAgeExceeded), or, for a failure with no OnFailure
  destination, the original event goes to the function's DeadLetterConfig target.  Kiln
  delivers to Lambda functions, as Event invokes through this same queue; a target it cannot
  deliver to (missing, or a queue, topic or bus) is reported in the function's log.

    await queue.enqueue(name, qualifier, request)   # -> request id, once committed
    await queue.start()                       # also picks up events left by a previous process
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

from kiln.aws.arn import FunctionId, parse_function_id
from kiln.aws.errors import AwsError
from kiln.config import Settings
from kiln.functions.event_config import EventInvokeConfigs
from kiln.functions.service import FunctionService
from kiln.functions.types import FunctionRecord
from kiln.invoke import destinations
from kiln.invoke.service import InvokeOutcome, Invoker, InvokeRequest, new_request_id
from kiln.store import Database

log = logging.getLogger(__name__)
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS async_events (
        request_id TEXT PRIMARY KEY,
        function TEXT NOT NULL,
        qualifier TEXT,
        invoked_arn TEXT NOT NULL,
        payload BLOB NOT NULL,
        enqueued REAL NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        throttles INTEGER NOT NULL DEFAULT 0,
        not_before REAL NOT NULL DEFAULT 0
    )""",
]
#: Columns added since the first schema, for queues a previous Kiln left behind.
_ADDED_COLUMNS = {"throttles": "INTEGER NOT NULL DEFAULT 0",
                  "not_before": "REAL NOT NULL DEFAULT 0"}
#: AWS's longest wait between two tries of a throttled event.
MAX_BACKOFF_SECONDS = 300.0
#: How long outcomes wait to share a commit: far below any retry delay that follows.
WRITE_BEHIND_SECONDS = 0.005
_INSERT = ("INSERT INTO async_events (request_id, function, qualifier, invoked_arn, payload, "
           "enqueued) VALUES (?, ?, ?, ?, ?, ?)")
#: Payload bytes of accepted events also kept in memory, which spares a read per run; past
#: this, a backlog is read back from the table.
MEMORY_BYTES = 64 << 20


@dataclass
class _Event:
    """One row of ``async_events``."""

    request_id: str
    function: str
    qualifier: str | None
    invoked_arn: str
    payload: bytes
    enqueued: float
    attempts: int = 0
    throttles: int = 0

    @classmethod
    def from_row(cls, row: sqlite3.Row) -> _Event:
        return cls(row["request_id"], row["function"], row["qualifier"], row["invoked_arn"],
                   bytes(row["payload"]), row["enqueued"], row["attempts"], row["throttles"])

    def insert(self) -> tuple[str, tuple[Any, ...]]:
        return _INSERT, (self.request_id, self.function, self.qualifier, self.invoked_arn,
                         self.payload, self.enqueued)


class AsyncQueue:
    def __init__(self, db: Database, functions: FunctionService, configs: EventInvokeConfigs,
                 invoker: Invoker, settings: Settings,
                 clock: Callable[[], float] = time.time) -> None:
        self.db = db
        self.functions = functions
        self.configs = configs
        self.invoker = invoker
        self.settings = settings
        #: Wall-clock seconds: event ages and retry times outlive the process.
        self.clock = clock
        db.migrate(SCHEMA)
        present = {row["name"] for row in db.query("PRAGMA table_info(async_events)")}
        for column, declaration in _ADDED_COLUMNS.items():
            if column not in present:
                db.execute(f"ALTER TABLE async_events ADD COLUMN {column} {declaration}")
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        # Outcomes are written behind, several per transaction (see _record).
        self._writes: list[tuple[str, tuple[Any, ...]]] = []
        self._then: list[Callable[[], None]] = []
        self._flush_handle: asyncio.Handle | None = None
        self._events: dict[str, _Event] = {}
        self._event_bytes = 0
        self._accepting: list[_Event] = []
        self._accept_done: asyncio.Future[None] | None = None

    async def enqueue(self, name: str, qualifier: str | None, request: InvokeRequest) -> str:
        """Returns once the event is committed.  Events accepted in the same event-loop step
        share one transaction (group commit): the commit, not the insert, is what costs."""
        event = _Event(request.request_id, name, qualifier, request.invoked_arn,
                       request.payload, self.clock())
        self._accepting.append(event)
        if self._accept_done is None:
            loop = asyncio.get_running_loop()
            self._accept_done = loop.create_future()
            loop.call_soon(self._commit_accepted)
        await self._accept_done
        return event.request_id

    def _commit_accepted(self) -> None:
        events, self._accepting = self._accepting, []
        done, self._accept_done = self._accept_done, None
        assert done is not None
        try:
            with self.db.transaction() as tx:
                tx.executemany(_INSERT, [event.insert()[1] for event in events])
        except Exception as exc:  # noqa: BLE001 - every waiting caller answers the failure
            done.set_exception(exc)
            return
        for event in events:
            self._accepted(event)
        done.set_result(None)

    def _accepted(self, event: _Event) -> None:
        """Keep a committed event in memory (within MEMORY_BYTES) and make it ready."""
        if self._event_bytes + len(event.payload) <= MEMORY_BYTES:
            self._events[event.request_id] = event
            self._event_bytes += len(event.payload)
        self._ready.put_nowait(event.request_id)

    async def start(self) -> None:
        self._ready = asyncio.Queue()  # the table is the truth: each event once
        self._events, self._event_bytes = {}, 0
        for row in self.db.query(
                "SELECT request_id, not_before FROM async_events ORDER BY enqueued"):
            self._schedule(row["request_id"], row["not_before"])
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.settings.async_workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._flush()

    async def _work(self) -> None:
        while True:
            request_id = await self._ready.get()
            try:
                await self._run(request_id)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("async invocation %s failed in the platform", request_id)

    async def _run(self, request_id: str) -> None:
        event = self._events.get(request_id)
        if event is None:
            row = self.db.query_one("SELECT * FROM async_events WHERE request_id = ?",
                                    (request_id,))
            if row is None:
                return
            event = _Event.from_row(row)
        try:
            record = self.functions.resolve(event.function, event.qualifier)
        except AwsError as exc:
            # Deleted after the event was accepted: nothing is left to run it.
            log.warning("dropped async invocation %s: %s", request_id, exc.message)
            self._forget(event)
            self._record([("DELETE FROM async_events WHERE request_id = ?", (request_id,))], None)
            return
        config = self.configs.effective(event.function, event.qualifier)
        expires = event.enqueued + config.max_age
        if self.clock() >= expires:
            self._finish(event, record, "EventAgeExceeded", None)
            return
        request = InvokeRequest(payload=event.payload, invoked_arn=event.invoked_arn,
                                request_id=request_id)
        try:
            outcome = await self.invoker.invoke(record, request)
        except Exception as exc:
            # Throttled (429), or Kiln could not start it: it did not run; try again later.
            if not (isinstance(exc, AwsError) and exc.status == 429):
                log.warning("async invocation %s did not start", request_id, exc_info=exc)
            backoff = min(self.settings.async_throttle_base_seconds * 2 ** event.throttles,
                          MAX_BACKOFF_SECONDS)
            event.throttles += 1
            self._retry(event, min(self.clock() + backoff, expires))
            return
        event.attempts += 1
        if outcome.result.error_type is None:
            self._finish(event, record, "Success", outcome)
        elif event.attempts <= config.retries:
            delay = self.settings.async_retry_base_seconds * event.attempts
            self._retry(event, min(self.clock() + delay, expires))
        else:
            self._finish(event, record, "RetriesExhausted", outcome)

    def _retry(self, event: _Event, at: float) -> None:
        self._record([("UPDATE async_events SET attempts = ?, throttles = ?, not_before = ? "
                       "WHERE request_id = ?",
                       (event.attempts, event.throttles, at, event.request_id))],
                     partial(self._schedule, event.request_id, at))

    def _forget(self, event: _Event) -> None:
        if self._events.pop(event.request_id, None) is not None:
            self._event_bytes -= len(event.payload)

    def _record(self, writes: list[tuple[str, tuple[Any, ...]]],
                then: Callable[[], None] | None) -> None:
        """Write an event's outcome, and once it is committed, call ``then``.

        Outcomes finishing within WRITE_BEHIND_SECONDS of each other share one transaction,
        a fraction of a commit each.  A crash before that commit only means the events
        concerned run again: the queue promises at least once; and each event's writes stay
        atomic, so its outcome is still delivered exactly once."""
        self._writes += writes
        if then is not None:
            self._then.append(then)
        if self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                WRITE_BEHIND_SECONDS, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:  # when stop() flushes ahead of the loop
            self._flush_handle.cancel()
        writes, then = self._writes, self._then
        self._writes, self._then, self._flush_handle = [], [], None
        if writes:
            with self.db.transaction() as tx:
                # In order; a run of the same statement (the common case: deletes) as one
                # executemany, much cheaper than one execute per event.
                for sql, run in itertools.groupby(writes, key=lambda write: write[0]):
                    tx.executemany(sql, [params for _, params in run])
        for call in then:
            call()

    def _schedule(self, request_id: str, at: float) -> None:
        delay = at - self.clock()
        if delay <= 0:
            self._ready.put_nowait(request_id)
        else:
            asyncio.get_running_loop().call_later(delay, self._ready.put_nowait, request_id)

    def _finish(self, event: _Event, record: FunctionRecord, condition: str,
                outcome: InvokeOutcome | None) -> None:
        """Remove the event and, in the same transaction, queue what its outcome produces."""
        self._forget(event)
        writes: list[tuple[str, tuple[Any, ...]]] = [
            ("DELETE FROM async_events WHERE request_id = ?", (event.request_id,))]
        delivery = self._delivery(event, record, condition, outcome)
        target = self._deliverable(event, delivery[0]) if delivery else None
        if delivery is None or target is None:
            self._record(writes, None)
            return
        delivered = _Event(new_request_id(), target.name, target.qualifier, delivery[0],
                           delivery[1], self.clock())
        writes.append(delivered.insert())
        self._record(writes, partial(self._accepted, delivered))

    def _delivery(self, event: _Event, record: FunctionRecord, condition: str,
                  outcome: InvokeOutcome | None) -> tuple[str, bytes] | None:
        """(target ARN, payload) of what a finished event produces, if anything."""
        config = self.configs.effective(event.function, event.qualifier)
        destination = config.on_success if condition == "Success" else config.on_failure
        if destination:
            function_arn = event.invoked_arn if event.qualifier else \
                f"{event.invoked_arn}:$LATEST"
            return destination, json.dumps(destinations.invocation_record(
                condition, event.request_id, function_arn, event.attempts, event.payload,
                outcome)).encode()
        target = record.config.get("DeadLetterConfig", {}).get("TargetArn")
        if condition == "Success" or not target:
            return None
        if outcome is not None:
            code, message = "200", destinations.error_message(outcome)
        else:  # never ran to an end: 429 if it never ran at all
            code = "200" if event.attempts else "429"
            message = f"Event age exceeded MaximumEventAgeInSeconds ({config.max_age})"
        return target, json.dumps(destinations.dead_letter_event(
            event.payload, event.request_id, code, message, target,
            self.settings.region)).encode()

    def _deliverable(self, event: _Event, arn: str) -> FunctionId | None:
        """The function at ``arn``, or None after saying in the log of the event's function
        why Kiln cannot deliver there."""
        try:
            if arn.split(":")[2:3] != ["lambda"]:
                raise AwsError.invalid_parameter("Kiln delivers to Lambda functions only")
            target = parse_function_id(arn, self.settings.account_id)
            self.functions.get(target.name, target.qualifier)
        except AwsError as exc:
            line = (f"{destinations.iso_now()} {event.request_id} Kiln could not deliver the "
                    f"async invocation's outcome to {arn}: {exc.message}")
            log.warning("%s: %s", event.function, line)
            self.invoker.logs.append(event.function, line + "\n")
            return None
        return target
