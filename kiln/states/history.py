"""Execution history events in GetExecutionHistory's shape, buffered until persisted.

Events get increasing ids; ``previousEventId`` is the causal predecessor on the same branch.
``flush`` hands buffered events (and the interpreter's checkpoints: the top-level one, and nested
frames' as ``(path, checkpoint)``, or ``(prefix, None)`` to drop frames) to the sink in one call,
so the service can write them in one transaction before the engine acts on them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from kiln.states.types import Clock

Event = dict[str, Any]
FrameWrites = list[tuple[str, dict[str, Any] | None]]
Sink = Callable[[list[Event], dict[str, Any] | None, FrameWrites], None]

_NO_DETAILS = {
    "LambdaFunctionStarted", "ParallelStateStarted", "ParallelStateSucceeded",
    "ParallelStateFailed", "ParallelStateAborted", "MapStateSucceeded", "MapStateFailed",
    "MapStateAborted", "MapRunSucceeded",
}


def details_key(event_type: str) -> str | None:
    if event_type in _NO_DETAILS:
        return None
    if event_type.endswith("StateEntered"):
        return "stateEnteredEventDetails"
    if event_type.endswith("StateExited"):
        return "stateExitedEventDetails"
    return event_type[0].lower() + event_type[1:] + "EventDetails"


class History:
    def __init__(self, clock: Clock, sink: Sink | None = None, keep: bool = True,
                 first_id: int = 1) -> None:
        self.clock = clock
        self.sink = sink
        self.keep = keep
        self.next_id = first_id
        self.events: list[Event] = []
        self.pending: list[Event] = []

    def add(self, event_type: str, previous: int, details: dict[str, Any] | None = None) -> int:
        event_id = self.next_id
        self.next_id += 1
        if self.keep or self.sink is not None:
            event: Event = {
                "timestamp": self.clock.now(),
                "type": event_type,
                "id": event_id,
                "previousEventId": previous,
            }
            key = details_key(event_type)
            if key is not None and details is not None:
                event[key] = details
            if self.keep:
                self.events.append(event)
            if self.sink is not None:
                self.pending.append(event)
        return event_id

    def flush(self, checkpoint: dict[str, Any] | None = None,
              frames: FrameWrites | None = None) -> None:
        if self.sink is not None and (self.pending or checkpoint is not None or frames):
            pending, self.pending = self.pending, []
            self.sink(pending, checkpoint, frames or [])

    def types(self) -> list[str]:
        return [e["type"] for e in self.events]
