"""A small SQLite wrapper: WAL mode, one connection, explicit transactions.

Statements are short and local, so they run on the event loop thread: a thread hop would cost
more than the query.  Writes are committed before a caller is answered, so an acknowledged
change survives ``kill -9``.

    db = Database(path)
    db.migrate(["CREATE TABLE IF NOT EXISTS ..."])
    with db.transaction() as tx:
        tx.execute("INSERT ...", (...))
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class Database:
    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        self._conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._depth = 0

    def migrate(self, statements: Sequence[str]) -> None:
        """Apply a room's schema (idempotent ``CREATE ... IF NOT EXISTS`` statements)."""
        with self.transaction() as tx:
            for statement in statements:
                tx.execute(statement)

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """All-or-nothing: an exception rolls every statement back."""
        if self._depth:
            self._depth += 1
            try:
                yield self._conn
            finally:
                self._depth -= 1
            return
        self._depth = 1
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        else:
            self._conn.execute("COMMIT")
        finally:
            self._depth = 0

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        return self._conn.execute(sql, params).fetchall()

    def query_one(self, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(sql, params).fetchone()
        return row

    def execute(self, sql: str, params: Sequence[Any] = ()) -> int:
        """Run one write in its own transaction; returns the affected row count."""
        with self.transaction() as tx:
            return tx.execute(sql, params).rowcount

    def close(self) -> None:
        self._conn.close()
