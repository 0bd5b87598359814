"""Map Runs: the record a Distributed Map keeps of its child workflow executions.

    run = runs.start(MapRun(arn, execution_arn, ...))   # on MapRunStarted
    run.child_started(index); run.child_finished(index, "SUCCEEDED", items=1)
    runs.finish(run, "SUCCEEDED")                       # on MapRunSucceeded/Failed
    runs.update(arn, max_concurrency=5)                 # UpdateMapRun: the live run obeys at once

Children run inside the parent's interpreter (one coroutine each), so their summaries live in
the run record (ListExecutions with ``mapRunArn``), not as separate executions with histories.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A Distributed Map without MaxConcurrency runs up to 10,000 children at once on AWS; Kiln caps
# the coroutines it keeps in flight (children are cheap, but 10,000 tasks at once are not free).
UNBOUNDED_CHILDREN = 1000
_COUNT_KEYS = ("pending", "running", "succeeded", "failed", "timedOut", "aborted")


def exceeds_tolerance(failed: int, total: int, count: float | None,
                      percentage: float | None) -> bool:
    """Whether ``failed`` of ``total`` items break ToleratedFailureCount/Percentage.

    With neither set any failure does; otherwise exceeding either set threshold does.
    """
    if not failed:
        return False
    if count is None and percentage is None:
        return True
    return (count is not None and failed > count) or (
        percentage is not None and 100.0 * failed / max(1, total) > percentage)


@dataclass(eq=False)
class Child:
    arn: str
    name: str
    items: int
    status: str = "PENDING"
    started: float | None = None
    stopped: float | None = None


@dataclass(eq=False)
class MapRun:
    arn: str
    execution_arn: str
    machine_arn: str  # the children's state machine: stateMachine:<parent>/<label>
    started: float
    max_concurrency: int
    tolerated_count: int | None  # None: not set (only failures beyond a set limit count)
    tolerated_percentage: float | None
    children: list[Child] = field(default_factory=list)
    status: str = "RUNNING"
    stopped: float | None = None
    error: str | None = None
    cause: str | None = None
    redrive_count: int = 0
    redrive_date: float | None = None
    changed: asyncio.Event | None = None  # set when UpdateMapRun changes the limits

    def limit(self) -> int:
        return self.max_concurrency or UNBOUNDED_CHILDREN

    def counts(self, items: bool) -> dict[str, int]:
        out = dict.fromkeys(_COUNT_KEYS, 0)
        key = {"PENDING": "pending", "RUNNING": "running", "SUCCEEDED": "succeeded",
               "FAILED": "failed", "TIMED_OUT": "timedOut", "ABORTED": "aborted"}
        for child in self.children:
            out[key[child.status]] += child.items if items else 1
        out["total"] = sum(out[k] for k in _COUNT_KEYS)
        out.update(resultsWritten=0, failuresNotRedrivable=0, pendingRedrive=0)
        return out

    def over_tolerance(self) -> bool:
        failed = sum(c.items for c in self.children if c.status in ("FAILED", "TIMED_OUT"))
        return exceeds_tolerance(failed, sum(c.items for c in self.children),
                                 self.tolerated_count, self.tolerated_percentage)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "mapRunArn": self.arn, "executionArn": self.execution_arn, "status": self.status,
            "startDate": self.started, "maxConcurrency": self.max_concurrency,
            "toleratedFailurePercentage": float(self.tolerated_percentage or 0),
            "toleratedFailureCount": int(self.tolerated_count or 0),
            "itemCounts": self.counts(items=True), "executionCounts": self.counts(items=False),
            "redriveCount": self.redrive_count,
        }
        if self.stopped is not None:
            out["stopDate"] = self.stopped
        if self.redrive_date is not None:
            out["redriveDate"] = self.redrive_date
        return out

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"executionArn": self.execution_arn, "mapRunArn": self.arn,
                               "stateMachineArn": self.machine_arn, "startDate": self.started}
        if self.stopped is not None:
            out["stopDate"] = self.stopped
        return out

    def executions(self, status: str | None) -> list[dict[str, Any]]:
        """ListExecutions(mapRunArn): children that have started, newest first."""
        out = []
        for child in reversed(self.children):
            if child.started is None or (status is not None and child.status != status):
                continue
            item: dict[str, Any] = {
                "executionArn": child.arn, "stateMachineArn": self.machine_arn,
                "name": child.name, "status": child.status, "startDate": child.started,
                "mapRunArn": self.arn, "itemCount": child.items, "redriveCount": 0,
            }
            if child.stopped is not None:
                item["stopDate"] = child.stopped
            out.append(item)
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "arn": self.arn, "execution_arn": self.execution_arn,
            "machine_arn": self.machine_arn, "started": self.started,
            "max_concurrency": self.max_concurrency, "tolerated_count": self.tolerated_count,
            "tolerated_percentage": self.tolerated_percentage, "status": self.status,
            "stopped": self.stopped, "error": self.error, "cause": self.cause,
            "redrive_count": self.redrive_count, "redrive_date": self.redrive_date,
            "children": [[c.arn, c.name, c.items, c.status, c.started, c.stopped]
                         for c in self.children],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> MapRun:
        children = [Child(*row) for row in data.pop("children")]
        return cls(children=children, **data)


class MapRuns:
    """Live Map Runs by ARN; ``save`` persists a run (Standard executions) when it changes and
    ``loader`` reads one back (a restarted or redriven execution continues its Map Run)."""

    def __init__(self, save: Callable[[MapRun], None] | None = None,
                 loader: Callable[[str], MapRun | None] | None = None) -> None:
        self.save = save
        self.loader = loader
        self.live: dict[str, MapRun] = {}

    def load(self, arn: str) -> MapRun | None:
        return self.loader(arn) if self.loader is not None else None

    def start(self, run: MapRun) -> MapRun:
        run.changed = asyncio.Event()
        self.live[run.arn] = run
        if self.save is not None:
            self.save(run)
        return run

    def finish(self, run: MapRun, status: str, stopped: float, error: str | None = None,
               cause: str | None = None) -> None:
        for child in run.children:
            if child.status in ("PENDING", "RUNNING"):
                child.status = "ABORTED"
                child.stopped = stopped if child.started is not None else None
        run.status, run.stopped, run.error, run.cause = status, stopped, error, cause
        self.live.pop(run.arn, None)
        if self.save is not None:
            self.save(run)

    def update(self, run: MapRun, max_concurrency: int | None, tolerated_count: int | None,
               tolerated_percentage: float | None) -> None:
        if max_concurrency is not None:
            run.max_concurrency = max_concurrency
        if tolerated_count is not None:
            run.tolerated_count = tolerated_count
        if tolerated_percentage is not None:
            run.tolerated_percentage = tolerated_percentage
        if run.changed is not None:
            run.changed.set()
        if self.save is not None:
            self.save(run)
