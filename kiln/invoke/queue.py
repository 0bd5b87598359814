"""The durable queue behind Event (async) invokes.

An event is committed to SQLite before the caller gets its 202 and deleted only after a run
finished, so every accepted event runs at least once, even across ``kill -9`` and restart.

    queue.enqueue(record, request)   # -> request id
    await queue.start()              # also picks up events left by a previous process
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from kiln.aws.errors import AwsError
from kiln.functions.service import FunctionService
from kiln.invoke.service import Invoker, InvokeRequest
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
        attempts INTEGER NOT NULL DEFAULT 0
    )""",
]
_THROTTLE_RETRY_SECONDS = 1.0


class AsyncQueue:
    def __init__(self, db: Database, functions: FunctionService, invoker: Invoker,
                 workers: int) -> None:
        self.db = db
        self.functions = functions
        self.invoker = invoker
        self.workers = workers
        db.migrate(SCHEMA)
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []

    def enqueue(self, name: str, qualifier: str | None, request: InvokeRequest) -> str:
        self.db.execute(
            "INSERT INTO async_events (request_id, function, qualifier, invoked_arn, payload, "
            "enqueued) VALUES (?, ?, ?, ?, ?, ?)",
            (request.request_id, name, qualifier, request.invoked_arn, request.payload,
             time.time()))
        self._ready.put_nowait(request.request_id)
        return request.request_id

    def pending(self) -> int:
        row = self.db.query_one("SELECT COUNT(*) AS n FROM async_events")
        return int(row["n"]) if row else 0

    async def start(self) -> None:
        for row in self.db.query("SELECT request_id FROM async_events ORDER BY enqueued"):
            self._ready.put_nowait(row["request_id"])
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._work()) for _ in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

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
        row = self.db.query_one("SELECT * FROM async_events WHERE request_id = ?", (request_id,))
        if row is None:
            return
        try:
            record = self.functions.resolve(row["function"], row["qualifier"])
        except AwsError:
            # The function was deleted after the event was accepted: nothing left to run.
            self.db.execute("DELETE FROM async_events WHERE request_id = ?", (request_id,))
            return
        request = InvokeRequest(payload=bytes(row["payload"]), invoked_arn=row["invoked_arn"],
                                request_id=request_id)
        self.db.execute("UPDATE async_events SET attempts = attempts + 1 WHERE request_id = ?",
                        (request_id,))
        try:
            await self.invoker.invoke(record, request)
        except AwsError as exc:
            if exc.status == 429:  # throttled: nothing ran; try again shortly
                asyncio.get_running_loop().call_later(
                    _THROTTLE_RETRY_SECONDS, self._ready.put_nowait, request_id)
                return
            raise
        self.db.execute("DELETE FROM async_events WHERE request_id = ?", (request_id,))
