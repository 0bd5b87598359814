"""Per-function invocation logs: START, the function's output, END, REPORT.

    logs.append("fn", text)                 # one invocation's block, as Lambda prints it
    logs.defer("fn", render)                # render() appended with the next flush
    text, offset = logs.read("fn", offset)  # what `kiln logs fn --follow` polls
"""

from __future__ import annotations

import asyncio
import math
import os
import re
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

from kiln.aws.arn import NAME_RE

TAIL_BYTES = 4096
FLUSH_SECONDS = 0.05
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class LogStore:
    def __init__(self, root: Path, open_files: int = 128) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # Appending through an open file is much cheaper than opening one per invocation.
        self._open: OrderedDict[str, TextIO] = OrderedDict()
        self._max_open = open_files
        self._flush_timer: asyncio.TimerHandle | None = None
        self._deferred: list[tuple[str, Callable[[], str]]] = []

    def path(self, function_name: str) -> Path:
        name = function_name if NAME_RE.match(function_name) else _SAFE.sub("_", function_name)
        return self.root / f"{name}.log"

    def append(self, function_name: str, text: str) -> None:
        self._render_deferred()  # what came before, first
        self._write(function_name, text)
        self._schedule_flush()

    def defer(self, function_name: str, render: Callable[[], str]) -> None:
        """Append ``render()`` at the next flush (or before a later append, read or close):
        a warm invoke's log block is formatted with a batch, not on the invoke's own path."""
        self._deferred.append((function_name, render))
        self._schedule_flush()

    def _render_deferred(self) -> None:
        deferred, self._deferred = self._deferred, []
        for function_name, render in deferred:
            self._write(function_name, render())

    def _write(self, function_name: str, text: str) -> None:
        sink = self._open.get(function_name)
        if sink is None:
            sink = open(self.path(function_name), "a", encoding="utf-8", errors="replace")  # noqa: SIM115 - kept open on purpose
            self._open[function_name] = sink
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)[1].close()
        else:
            self._open.move_to_end(function_name)
        sink.write(text)

    def _schedule_flush(self) -> None:
        """Flush soon, once for many invocations, instead of one write per invocation."""
        if self._flush_timer is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        self._flush_timer = loop.call_later(FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        self._flush_timer = None
        self._render_deferred()
        for sink in self._open.values():
            sink.flush()

    def close(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        self._render_deferred()
        for sink in self._open.values():
            sink.close()
        self._open.clear()

    def read(self, function_name: str, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
        """Text from byte ``offset`` (at most ``limit`` bytes) and the offset after it."""
        self.flush()
        path = self.path(function_name)
        try:
            with open(path, "rb") as source:
                size = os.fstat(source.fileno()).st_size
                offset = min(max(0, offset), size)
                source.seek(offset)
                data = source.read(limit)
        except FileNotFoundError:
            return "", 0
        return data.decode("utf-8", errors="replace"), offset + len(data)

    def remove(self, function_name: str) -> None:
        self._deferred = [(name, render) for name, render in self._deferred
                          if name != function_name]
        sink = self._open.pop(function_name, None)
        if sink is not None:
            sink.close()
        self.path(function_name).unlink(missing_ok=True)


def report_line(request_id: str, duration_ms: float, memory_size: int, max_memory_used: int,
                init_duration_ms: float | None, status: str | None = None,
                error_type: str | None = None, restore_duration_ms: float | None = None) -> str:
    parts = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {duration_ms:.2f} ms",
        f"Billed Duration: {max(1, math.ceil(duration_ms))} ms",
        f"Memory Size: {memory_size} MB",
        f"Max Memory Used: {max_memory_used} MB",
    ]
    if init_duration_ms is not None:
        parts.append(f"Init Duration: {init_duration_ms:.2f} ms")
    if restore_duration_ms is not None:  # SnapStart: a fork of the version's template
        parts.append(f"Restore Duration: {restore_duration_ms:.2f} ms")
    if status is not None:
        parts.append(f"Status: {status}")
    if error_type is not None:
        parts.append(f"Error Type: {error_type}")
    return "\t".join(parts) + "\t"
