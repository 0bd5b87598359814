"""Early answers: the front door's way to write a response from a callback.

Kiln's HTTP protocol (``kiln.http_protocol``) offers each data-plane request, in its ASGI scope's
``extensions``, a callable that writes the response at once; Invoke and the gateways hand it
their answer the moment the function's result arrives (from the Runtime API's callback), before
the bookkeeping that follows.  Elsewhere (another ASGI server, a test client) there is none, and
the answer goes out through ``send`` as usual.

    early = early_answer(scope)
    if early is not None and early(200, [(b"content-type", b"application/json")], body):
        ...   # written: send nothing more
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope

#: The scope extension's name.
EARLY_ANSWER = "kiln.early_answer"
#: ``early(status, headers without Content-Length, body)``: True if it wrote the response.
EarlyAnswer = Callable[[int, list[tuple[bytes, bytes]], bytes], bool]


def early_answer(scope: Scope) -> EarlyAnswer | None:
    """The request's early answer, if its server offers one."""
    extensions = scope.get("extensions")
    early: EarlyAnswer | None = extensions.get(EARLY_ANSWER) if extensions else None
    return early
