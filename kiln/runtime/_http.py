"""A minimal HTTP/1.1 server on asyncio + httptools for the Runtime API.

Every invoke crosses the Runtime API twice (``/next`` and ``/response``), so this avoids the
weight of a general ASGI stack, and answers to pipelined requests go out in one write.
Requests on one connection are handled strictly in order;
every response carries ``Content-Type`` and ``Content-Length`` (awslambdaric crashes on a
response without a content type).
"""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            413: "Payload Too Large", 500: "Internal Server Error"}


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        lines = [
            f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}",
            f"Content-Type: {self.content_type}",
            f"Content-Length: {len(self.body)}",
        ]
        lines.extend(f"{name}: {value}" for name, value in self.headers.items())
        if not keep_alive:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + self.body


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class _Protocol(asyncio.Protocol):
    def __init__(self, handler: Handler) -> None:
        self._handler = handler
        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._body: list[bytes] = []
        self._pending: list[HttpRequest] = []
        self._held: list[bytes] = []
        self._busy = False
        self._task: asyncio.Task[None] | None = None

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._write(HttpResponse(400, b'{"errorType":"BadRequest","errorMessage":"malformed '
                                          b'HTTP request"}', "application/json"), keep_alive=False)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._task is not None:
            self._task.cancel()

    # httptools callbacks
    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self._parser.get_method().decode()
        path = httptools.parse_url(self._url).path.decode()
        self._pending.append(HttpRequest(method, path, self._headers, b"".join(self._body)))
        if not self._busy:
            self._busy = True
            self._task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self._pending and self._transport is not None:
                request = self._pending.pop(0)
                try:
                    response = await self._handler(request)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the runtime
                    body = {"errorType": "InternalServerError",
                            "errorMessage": type(exc).__name__}
                    response = HttpResponse(500, json.dumps(body).encode(), "application/json")
                if self._pending:
                    # The client pipelined its next request (Kiln's runtimes send /response
                    # and /next together): hold this answer and send both in one write.
                    self._held.append(response.encode(keep_alive=True))
                else:
                    self._write(response, keep_alive=True)
        finally:
            self._busy = False
            self._task = None

    def _write(self, response: HttpResponse, keep_alive: bool) -> None:
        if self._transport is None or self._transport.is_closing():
            return
        data = response.encode(keep_alive)
        if self._held:
            data = b"".join([*self._held, data])
            self._held.clear()
        self._transport.write(data)
        if not keep_alive:
            self._transport.close()


async def serve_http(listener: socket.socket, handler: Handler) -> asyncio.Server:
    """Serve ``handler`` on an already-bound, listening socket."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _Protocol(handler), sock=listener)
