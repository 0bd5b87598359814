"""Per-function invocation logs: START, the function's output, END, REPORT.

    logs.append("fn", text)                 # one invocation's block, as Lambda prints it
    text, offset = logs.read("fn", offset)  # what `kiln logs fn --follow` polls
"""

from __future__ import annotations

import math
import os
import re
from pathlib import Path

from kiln.aws.arn import NAME_RE

TAIL_BYTES = 4096
_SAFE = re.compile(r"[^A-Za-z0-9_-]")


class LogStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def path(self, function_name: str) -> Path:
        name = function_name if NAME_RE.match(function_name) else _SAFE.sub("_", function_name)
        return self.root / f"{name}.log"

    def append(self, function_name: str, text: str) -> None:
        with open(self.path(function_name), "a", encoding="utf-8", errors="replace") as sink:
            sink.write(text)

    def read(self, function_name: str, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
        """Text from byte ``offset`` (at most ``limit`` bytes) and the offset after it."""
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
        self.path(function_name).unlink(missing_ok=True)


def report_line(request_id: str, duration_ms: float, memory_size: int, max_memory_used: int,
                init_duration_ms: float | None, status: str | None = None,
                error_type: str | None = None) -> str:
    parts = [
        f"REPORT RequestId: {request_id}",
        f"Duration: {duration_ms:.2f} ms",
        f"Billed Duration: {max(1, math.ceil(duration_ms))} ms",
        f"Memory Size: {memory_size} MB",
        f"Max Memory Used: {max_memory_used} MB",
    ]
    if init_duration_ms is not None:
        parts.append(f"Init Duration: {init_duration_ms:.2f} ms")
    if status is not None:
        parts.append(f"Status: {status}")
    if error_type is not None:
        parts.append(f"Error Type: {error_type}")
    return "\t".join(parts) + "\t"
