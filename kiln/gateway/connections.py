"""Open WebSocket connections of every API, so anyone (a function through ``@connections``, a
test, a benchmark) can push to any of them.

    connections.add(Connection(opaque_id(), api_id, stage, source_ip, user_agent, send))
    await connections.get(api_id, connection_id).push(b"hello")   # raises Gone / Backlogged
    connections.forget(conn)
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from dataclasses import dataclass, field
from typing import Any

from starlette.types import Send

#: How long a push waits for a client that is not reading (its socket buffers full) before it
#: fails with LimitExceededException, rather than holding the caller up indefinitely.
BACKLOG_WAIT_SECONDS = 1.0


class Gone(Exception):
    """The connection no longer exists (closed, or never did): ``GoneException``."""


class Backlogged(Exception):
    """The client is not reading what it is sent: ``LimitExceededException``."""


def opaque_id() -> str:
    """An id in API Gateway's form (``Dwz4leekPHcCG6Q=``: 11 random bytes in base64); ``-``/``_``
    stand in for ``+``/``/`` so an id is always one path segment."""
    return base64.b64encode(os.urandom(11), altchars=b"-_").decode()


@dataclass(eq=False)
class Connection:
    connection_id: str
    api_id: str
    stage: str
    source_ip: str
    user_agent: str
    send: Send
    connected_at: float = field(default_factory=time.time)
    last_active_at: float = field(default_factory=time.time)
    open: bool = True

    def touch(self) -> None:
        self.last_active_at = time.time()

    async def push(self, data: bytes) -> None:
        """Send one message: a text frame when ``data`` is UTF-8, else a binary frame."""
        if not self.open:
            raise Gone(self.connection_id)
        message: dict[str, Any] = {"type": "websocket.send"}
        try:
            message["text"] = data.decode()
        except UnicodeDecodeError:
            message["bytes"] = data
        try:
            # Safe to cancel: uvicorn waits for the socket to drain before it writes anything.
            async with asyncio.timeout(BACKLOG_WAIT_SECONDS):
                await self.send(message)
        except TimeoutError:
            raise Backlogged(self.connection_id) from None
        except (OSError, RuntimeError):
            # uvicorn raises ClientDisconnected (an OSError) or RuntimeError once the socket
            # is closing: the peer is gone even if we have not seen its close yet.
            self.open = False
            raise Gone(self.connection_id) from None
        self.touch()

    async def close(self, code: int, reason: str = "") -> None:
        """Start the closing handshake; the handler sees the disconnect and runs $disconnect."""
        if not self.open:
            raise Gone(self.connection_id)
        self.open = False
        try:
            await self.send({"type": "websocket.close", "code": code, "reason": reason})
        except (OSError, RuntimeError):
            raise Gone(self.connection_id) from None


class Connections:
    """Every open connection by id (ids are unique across APIs; lookups check the API)."""

    def __init__(self) -> None:
        self._open: dict[str, Connection] = {}

    def add(self, conn: Connection) -> None:
        self._open[conn.connection_id] = conn

    def get(self, api_id: str, connection_id: str) -> Connection:
        conn = self._open.get(connection_id)
        if conn is None or conn.api_id != api_id or not conn.open:
            raise Gone(connection_id)
        return conn

    def forget(self, conn: Connection) -> None:
        conn.open = False
        self._open.pop(conn.connection_id, None)
