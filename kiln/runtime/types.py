"""What passes between the data plane and a runtime."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InvocationResult:
    """The outcome of one invocation.

    ``error_type`` is None on success; otherwise the body is the error JSON and the caller sees
    ``X-Amz-Function-Error: Unhandled``.
    """

    body: bytes
    content_type: str = "application/json"
    error_type: str | None = None

    @classmethod
    def platform_error(cls, error_type: str, message: str) -> InvocationResult:
        body = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
        return cls(body, "application/json", error_type)

    def error_json(self) -> dict[str, Any]:
        try:
            parsed = json.loads(self.body)
        except ValueError:
            return {}
        return parsed if isinstance(parsed, dict) else {}


@dataclass
class Invocation:
    """One event handed to a runtime through ``/runtime/invocation/next``."""

    request_id: str
    payload: bytes
    deadline_ms: int
    invoked_function_arn: str
    trace_id: str
    client_context: str | None = None
    cognito_identity: str | None = None
    result: asyncio.Future[InvocationResult] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    #: Told the outcome at once, before anyone awaiting ``result`` resumes (the caller's
    #: answer can go out from the Runtime API's own callback).
    on_finish: Callable[[InvocationResult], object] | None = None

    def finish(self, result: InvocationResult) -> bool:
        """Settle the invocation once; later outcomes are ignored."""
        if self.result.done():
            return False
        self.result.set_result(result)
        if self.on_finish is not None:
            self.on_finish(result)
        return True
