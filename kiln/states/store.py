"""SQLite persistence for state machines, executions, history events and activities."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Sequence
from typing import Any

from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS states_machines (
        arn TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        definition TEXT NOT NULL,
        role_arn TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL,
        revision_id TEXT NOT NULL,
        logging TEXT NOT NULL,
        tracing TEXT NOT NULL,
        description TEXT,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS states_executions (
        arn TEXT PRIMARY KEY,
        machine_arn TEXT NOT NULL,
        name TEXT NOT NULL,
        status TEXT NOT NULL,
        input TEXT NOT NULL,
        output TEXT,
        error TEXT,
        cause TEXT,
        started REAL NOT NULL,
        stopped REAL,
        definition TEXT NOT NULL,
        role_arn TEXT NOT NULL,
        revision_id TEXT NOT NULL,
        checkpoint TEXT,
        redrive_count INTEGER NOT NULL DEFAULT 0,
        redrive_date REAL,
        version_arn TEXT,
        alias_arn TEXT,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS states_executions_machine ON states_executions (machine_arn, seq)",
    "CREATE INDEX IF NOT EXISTS states_executions_status ON states_executions (status)",
    # History events in batches: one row holds a JSON array of consecutive events.
    """CREATE TABLE IF NOT EXISTS states_events (
        execution_arn TEXT NOT NULL,
        first_id INTEGER NOT NULL,
        last_id INTEGER NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (execution_arn, first_id)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS states_activities (
        arn TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created REAL NOT NULL,
        seq INTEGER NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS states_versions (
        arn TEXT PRIMARY KEY,
        machine_arn TEXT NOT NULL,
        version INTEGER NOT NULL,
        definition TEXT NOT NULL,
        role_arn TEXT NOT NULL,
        revision_id TEXT NOT NULL,
        description TEXT,
        created REAL NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS states_aliases (
        arn TEXT PRIMARY KEY,
        machine_arn TEXT NOT NULL,
        name TEXT NOT NULL,
        description TEXT,
        routing TEXT NOT NULL,
        created REAL NOT NULL,
        updated REAL
    )""",
    # Checkpoints of frames inside Parallel/Map states (path: /State[index]/...), so a restart
    # resumes each branch or iteration where it was.
    """CREATE TABLE IF NOT EXISTS states_frames (
        execution_arn TEXT NOT NULL,
        path TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (execution_arn, path)
    ) WITHOUT ROWID""",
    # Distributed Map runs: the MapRun record as JSON (children summaries included).
    """CREATE TABLE IF NOT EXISTS states_map_runs (
        arn TEXT PRIMARY KEY,
        execution_arn TEXT NOT NULL,
        status TEXT NOT NULL,
        body TEXT NOT NULL,
        seq INTEGER NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS states_map_runs_execution ON states_map_runs (execution_arn)",
    """CREATE TABLE IF NOT EXISTS states_tags (
        arn TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (arn, key)
    )""",
]


_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _next_seq(tx: sqlite3.Connection, table: str) -> int:
    """The insertion order number of ``table``'s next row (List* answers in this order)."""
    return int(tx.execute(f"SELECT COALESCE(MAX(seq), 0) + 1 FROM {table}").fetchone()[0])


class StatesStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)

    # ------------------------------------------------------------------ machines

    def machine(self, arn: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM states_machines WHERE arn = ?", (arn,))

    def machines(self) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM states_machines ORDER BY seq")

    def insert_machine(self, row: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            seq = _next_seq(tx, "states_machines")
            tx.execute(
                "INSERT INTO states_machines (arn, name, type, definition, role_arn, created, "
                "updated, revision_id, logging, tracing, description, seq) VALUES "
                "(?, ?, ?, ?, ?, ?, NULL, ?, ?, ?, ?, ?)",
                (row["arn"], row["name"], row["type"], row["definition"], row["role_arn"],
                 row["created"], row["revision_id"], _dumps(row["logging"]),
                 _dumps(row["tracing"]), row.get("description"), seq),
            )

    def update_machine(self, arn: str, fields: dict[str, Any]) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)
        self.db.execute(f"UPDATE states_machines SET {sets} WHERE arn = ?",
                        (*fields.values(), arn))

    def delete_machine(self, arn: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM states_machines WHERE arn = ?", (arn,))
            tx.execute("DELETE FROM states_versions WHERE machine_arn = ?", (arn,))
            tx.execute("DELETE FROM states_aliases WHERE machine_arn = ?", (arn,))
            tx.execute("DELETE FROM states_tags WHERE arn = ?", (arn,))

    # ------------------------------------------------------------------ versions / aliases

    def version(self, arn: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM states_versions WHERE arn = ?", (arn,))

    def versions(self, machine_arn: str) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM states_versions WHERE machine_arn = ? "
                             "ORDER BY version DESC", (machine_arn,))

    def insert_version(self, machine: sqlite3.Row, description: str | None,
                       created: float) -> str:
        with self.db.transaction() as tx:
            number = tx.execute("SELECT COALESCE(MAX(version), 0) + 1 FROM states_versions "
                                "WHERE machine_arn = ?", (machine["arn"],)).fetchone()[0]
            arn = f"{machine['arn']}:{number}"
            tx.execute(
                "INSERT INTO states_versions (arn, machine_arn, version, definition, role_arn, "
                "revision_id, description, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (arn, machine["arn"], number, machine["definition"], machine["role_arn"],
                 machine["revision_id"], description, created),
            )
        return arn

    def delete_version(self, arn: str) -> None:
        self.db.execute("DELETE FROM states_versions WHERE arn = ?", (arn,))

    def alias(self, arn: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM states_aliases WHERE arn = ?", (arn,))

    def aliases(self, machine_arn: str) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM states_aliases WHERE machine_arn = ? ORDER BY name",
                             (machine_arn,))

    def put_alias(self, arn: str, machine_arn: str, name: str, description: str | None,
                  routing: list[dict[str, Any]], created: float,
                  updated: float | None) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO states_aliases (arn, machine_arn, name, description, "
            "routing, created, updated) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (arn, machine_arn, name, description, _dumps(routing), created, updated),
        )

    def delete_alias(self, arn: str) -> None:
        self.db.execute("DELETE FROM states_aliases WHERE arn = ?", (arn,))

    # ------------------------------------------------------------------ executions

    def execution(self, arn: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM states_executions WHERE arn = ?", (arn,))

    def executions(self, machine_arn: str, status: str | None,
                   qualified: str | None = None) -> list[sqlite3.Row]:
        sql = ("SELECT arn, machine_arn, name, status, started, stopped, version_arn, alias_arn, "
               "redrive_count FROM states_executions WHERE machine_arn = ?")
        params: list[Any] = [machine_arn]
        if qualified:
            sql += " AND (version_arn = ? OR alias_arn = ?)"
            params += [qualified, qualified]
        if status:
            sql += " AND status = ?"
            params.append(status)
        return self.db.query(sql + " ORDER BY seq DESC", params)

    def running(self) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM states_executions WHERE status = 'RUNNING' "
                             "ORDER BY seq")

    def insert_execution(self, row: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            seq = _next_seq(tx, "states_executions")
            tx.execute(
                "INSERT INTO states_executions (arn, machine_arn, name, status, input, started, "
                "definition, role_arn, revision_id, version_arn, alias_arn, seq) VALUES "
                "(?, ?, ?, 'RUNNING', ?, ?, ?, ?, ?, ?, ?, ?)",
                (row["arn"], row["machine_arn"], row["name"], row["input"], row["started"],
                 row["definition"], row["role_arn"], row["revision_id"],
                 row.get("version_arn"), row.get("alias_arn"), seq),
            )

    def append(self, arn: str, events: list[dict[str, Any]],
               checkpoint: dict[str, Any] | None,
               frames: Sequence[tuple[str, dict[str, Any] | None]] = ()) -> None:
        """Write events and the resume checkpoints in one transaction (frames in order)."""
        with self.db.transaction() as tx:
            for path, body in frames:
                if body is None:
                    # Every path that starts with the prefix, as a range of the primary key.
                    tx.execute("DELETE FROM states_frames WHERE execution_arn = ? AND "
                               "path >= ? AND path < ?", (arn, path, path + "\U0010ffff"))
                else:
                    tx.execute("INSERT OR REPLACE INTO states_frames (execution_arn, path, body) "
                               "VALUES (?, ?, ?)", (arn, path, _dumps(body)))
            if events:
                tx.execute(
                    "INSERT OR REPLACE INTO states_events (execution_arn, first_id, last_id, "
                    "body) VALUES (?, ?, ?, ?)",
                    (arn, events[0]["id"], events[-1]["id"], _dumps(events)),
                )
            if checkpoint is not None:
                tx.execute("UPDATE states_executions SET checkpoint = ? WHERE arn = ?",
                           (_dumps(checkpoint), arn))

    def finish_execution(self, arn: str, status: str, stopped: float, output: str | None,
                         error: str | None, cause: str | None) -> None:
        # A failed execution keeps its checkpoint: RedriveExecution resumes from it.
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE states_executions SET status = ?, stopped = ?, output = ?, error = ?, "
                "cause = ?, checkpoint = CASE WHEN ? = 'SUCCEEDED' THEN NULL ELSE checkpoint "
                "END WHERE arn = ?",
                (status, stopped, output, error, cause, status, arn),
            )
            if status == "SUCCEEDED":  # otherwise a redrive reuses finished branches
                tx.execute("DELETE FROM states_frames WHERE execution_arn = ?", (arn,))

    def frames(self, arn: str) -> dict[str, dict[str, Any]]:
        rows = self.db.query("SELECT path, body FROM states_frames WHERE execution_arn = ?",
                             (arn,))
        return {r["path"]: json.loads(r["body"]) for r in rows}

    def redrive(self, arn: str, when: float) -> int:
        with self.db.transaction() as tx:
            tx.execute(
                "UPDATE states_executions SET status = 'RUNNING', stopped = NULL, error = NULL, "
                "cause = NULL, redrive_count = redrive_count + 1, redrive_date = ? "
                "WHERE arn = ?", (when, arn))
            row = tx.execute("SELECT redrive_count FROM states_executions WHERE arn = ?",
                             (arn,)).fetchone()
        return int(row[0])

    def events(self, arn: str) -> list[dict[str, Any]]:
        rows = self.db.query(
            "SELECT body FROM states_events WHERE execution_arn = ? ORDER BY first_id", (arn,))
        events: list[dict[str, Any]] = []
        for row in rows:
            events.extend(json.loads(row["body"]))
        return events

    def last_event_id(self, arn: str) -> int:
        row = self.db.query_one(
            "SELECT MAX(last_id) AS id FROM states_events WHERE execution_arn = ?", (arn,))
        return int(row["id"]) if row is not None and row["id"] is not None else 0

    # ------------------------------------------------------------------ map runs

    def map_run(self, arn: str) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT body FROM states_map_runs WHERE arn = ?", (arn,))
        return None if row is None else dict(json.loads(row["body"]))

    def map_runs(self, execution_arn: str) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT body FROM states_map_runs WHERE execution_arn = ? "
                             "ORDER BY seq DESC", (execution_arn,))
        return [json.loads(r["body"]) for r in rows]

    def put_map_run(self, arn: str, execution_arn: str, status: str,
                    body: dict[str, Any]) -> None:
        with self.db.transaction() as tx:
            updated = tx.execute(
                "UPDATE states_map_runs SET status = ?, body = ? WHERE arn = ?",
                (status, _dumps(body), arn)).rowcount
            if not updated:
                seq = _next_seq(tx, "states_map_runs")
                tx.execute("INSERT INTO states_map_runs (arn, execution_arn, status, body, seq) "
                           "VALUES (?, ?, ?, ?, ?)",
                           (arn, execution_arn, status, _dumps(body), seq))

    def running_map_runs(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT body FROM states_map_runs WHERE status = 'RUNNING'")
        return [json.loads(r["body"]) for r in rows]

    # ------------------------------------------------------------------ activities

    def activity(self, arn: str) -> sqlite3.Row | None:
        return self.db.query_one("SELECT * FROM states_activities WHERE arn = ?", (arn,))

    def activities(self) -> list[sqlite3.Row]:
        return self.db.query("SELECT * FROM states_activities ORDER BY seq")

    def insert_activity(self, arn: str, name: str, created: float) -> None:
        with self.db.transaction() as tx:
            seq = _next_seq(tx, "states_activities")
            tx.execute("INSERT INTO states_activities (arn, name, created, seq) "
                       "VALUES (?, ?, ?, ?)", (arn, name, created, seq))

    def delete_activity(self, arn: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM states_activities WHERE arn = ?", (arn,))
            tx.execute("DELETE FROM states_tags WHERE arn = ?", (arn,))

    # ------------------------------------------------------------------ tags

    def tags(self, arn: str) -> list[dict[str, str]]:
        rows = self.db.query("SELECT key, value FROM states_tags WHERE arn = ? ORDER BY key",
                             (arn,))
        return [{"key": r["key"], "value": r["value"]} for r in rows]

    def tag(self, arn: str, tags: list[dict[str, str]]) -> None:
        with self.db.transaction() as tx:
            tx.executemany(
                "INSERT OR REPLACE INTO states_tags (arn, key, value) VALUES (?, ?, ?)",
                [(arn, t["key"], t.get("value", "")) for t in tags],
            )

    def untag(self, arn: str, keys: list[str]) -> None:
        with self.db.transaction() as tx:
            tx.executemany("DELETE FROM states_tags WHERE arn = ? AND key = ?",
                           [(arn, k) for k in keys])
