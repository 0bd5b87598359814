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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import httptools

_REASONS = {200: "OK", 202: "Accepted", 400: "Bad Request", 403: "Forbidden", 404: "Not Found",
            413: "Payload Too Large", 500: "Internal Server Error"}


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass(slots=True)
class HttpResponse:
    status: int
    body: bytes
    content_type: str
    headers: dict[str, str] = field(default_factory=dict)

    def encode(self, keep_alive: bool) -> bytes:
        extra = "".join([f"{name}: {value}\r\n" for name, value in self.headers.items()])
        if not keep_alive:
            extra += "Connection: close\r\n"
        return (f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
                f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
                f"{extra}\r\n").encode("latin-1") + self.body


#: Answers a parked request later; False when its connection is gone (nothing was sent).
Responder = Callable[[HttpResponse], bool]
#: Answers a request now, or returns None having kept the responder to answer it later (the
#: Runtime API's /next waits for an event). Called from the protocol callbacks, so an answer goes
#: out in the same event-loop step that its request (or the event that completes it) came in.
Handler = Callable[[HttpRequest, Responder], "HttpResponse | None"]


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
        self._parked = False
        #: Inside data_received: answers are held until the whole chunk is parsed.
        self._feeding = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._feeding = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError:
            self._feeding = False
            self._write(HttpResponse(400, b'{"errorType":"BadRequest","errorMessage":"malformed '
                                          b'HTTP request"}', "application/json"), keep_alive=False)
            return
        self._feeding = False
        # Answers made while the chunk was parsed go out together (a pipelined request's with
        # the next one's); a parked /next holds them until its event.
        if self._held and not self._parked and self._transport is not None:
            self._transport.write(b"".join(self._held))
            self._held.clear()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None

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
        url = self._url  # parsed only when it has a query (Runtime API paths have none)
        path = (httptools.parse_url(url).path if b"?" in url else url).decode()
        self._pending.append(HttpRequest(method, path, self._headers, b"".join(self._body)))
        # Served as soon as it is complete: an invocation's result reaches its caller before
        # the rest of the chunk (the runtime's next /next) is parsed.
        if not self._parked:
            self._serve_pending()

    def _serve_pending(self) -> None:
        """Answer queued requests in order until one is parked."""
        while self._pending and self._transport is not None:
            request = self._pending.pop(0)
            try:
                response = self._handler(request, self._resume)
            except Exception as exc:  # noqa: BLE001 - a handler bug must not kill the runtime
                body = {"errorType": "InternalServerError", "errorMessage": type(exc).__name__}
                response = HttpResponse(500, json.dumps(body).encode(), "application/json")
            if response is None:
                self._parked = True
                return
            self._answer(response)

    def _answer(self, response: HttpResponse) -> None:
        if self._pending or self._feeding:
            # The client may have pipelined its next request (Kiln's runtimes send /response
            # and /next together): hold this answer and send both in one write.
            self._held.append(response.encode(keep_alive=True))
        else:
            self._write(response, keep_alive=True)

    def _resume(self, response: HttpResponse) -> bool:
        """The parked request's answer; then the requests queued behind it."""
        if not self._parked or self._transport is None or self._transport.is_closing():
            return False
        self._parked = False
        self._answer(response)
        self._serve_pending()
        return True

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
