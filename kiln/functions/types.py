"""A function as the control plane stores it."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any


def timestamp() -> str:
    """AWS's LastModified format: 2024-05-01T12:00:00.000+0000."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}+0000"


@dataclass(frozen=True)
class FunctionRecord:
    """One function version's configuration, in the API's FunctionConfiguration shape.

    ``config`` is exactly what GetFunctionConfiguration answers; ``code_sha_hex`` names the
    unpacked code in the CodeStore.
    """

    config: dict[str, Any]
    code_sha_hex: str
    # The fields read on every invoke are cached properties: a record is never changed (an
    # update makes a new one), and these are read many times per invoke.

    @cached_property
    def name(self) -> str:
        return str(self.config["FunctionName"])

    @cached_property
    def version(self) -> str:
        return str(self.config["Version"])

    @property
    def arn(self) -> str:
        return str(self.config["FunctionArn"])

    @property
    def runtime(self) -> str:
        return str(self.config.get("Runtime", ""))

    @property
    def handler(self) -> str:
        return str(self.config.get("Handler", ""))

    @cached_property
    def timeout(self) -> int:
        return int(self.config["Timeout"])

    @cached_property
    def memory_size(self) -> int:
        return int(self.config["MemorySize"])

    @property
    def ephemeral_storage(self) -> int:
        return int(self.config["EphemeralStorage"]["Size"])

    @cached_property
    def revision_id(self) -> str:
        return str(self.config["RevisionId"])

    @property
    def environment(self) -> dict[str, str]:
        variables = self.config.get("Environment", {}).get("Variables", {})
        return dict(variables)
