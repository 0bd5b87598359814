"""Kiln's HTTP/1.1 protocol: uvicorn's httptools protocol with a lean path for the data plane.

A warm invoke's own work is a few dozen microseconds, so the machinery around it matters:
uvicorn's ASGI cycle validates every response header and writes the head and the body
separately, and a client that reads eagerly then wakes twice per response (on the head, then
on the body).  Every request still arrives through uvicorn's parser and connection handling
(keep-alive, pipelining, flow control, graceful shutdown); once the head of a data-plane request
with a bounded body is parsed, it is answered here, in one write:

* Invoke by ``InvokeApp.answer`` directly, without ASGI;
* HTTP API, WebSocket API ``@connections`` and Function URL requests by the whole ASGI app
  (middleware included), given the collected body and a ``send`` that writes the response once
  it is complete.

A function's result is answered the moment it arrives: each of these requests is offered
``_write_now`` as its early answer (``kiln.aws.early``), which Invoke and the gateways call from
the Runtime API's callback, before the bookkeeping that follows.

Everything else (the control plane, streamed or unbounded bodies, ``Expect: 100-continue``,
HEAD) goes through uvicorn's own cycle as usual.

    config = uvicorn.Config(app, http=functools.partial(KilnHttpProtocol, invoke=invoke_app))
"""

from __future__ import annotations

import functools
import logging
from typing import Any, cast

from starlette.types import ASGIApp, Message, Scope
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from kiln.aws.early import EARLY_ANSWER
from kiln.aws.errors import AwsError
from kiln.gateway.addressing import is_gateway
from kiln.gateway.dispatch import GatewayDispatch
from kiln.gateway.proxy import API_PAYLOAD_MAX
from kiln.invoke.api import SYNC_PAYLOAD_LIMIT, InvokeApp

log = logging.getLogger("kiln")
_SERVER_ERROR = b"Internal Server Error"


class KilnHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, invoke: InvokeApp, gateway: GatewayDispatch,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._invoke = invoke
        self._gateway = gateway

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Called with a request's head parsed (or when a pipelined one's turn comes).
        scope = cast(Scope, cycle.scope)
        length, forwarded = _head(scope)
        if length is not None and not cycle.waiting_for_100_continue:
            name = self._invoke.target(scope)
            if name is not None and length <= SYNC_PAYLOAD_LIMIT:
                self._run(self._answer_invoke(cycle, name))
                return
            if scope["method"] != "HEAD" and is_gateway(scope) and length <= API_PAYLOAD_MAX:
                # Straight to the gateways, unless uvicorn's proxy-headers middleware (in
                # ``app``) has X-Forwarded-* headers to apply.
                self._run(self._answer_asgi(cycle, app if forwarded else self._gateway.gateway))
                return
        super()._start_asgi_task(cycle, app)

    def _run(self, answer: Any) -> None:
        task = self.loop.create_task(self._guarded(answer))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _guarded(self, answer: Any) -> None:
        try:
            await answer
        except BaseException as exc:
            # As uvicorn does when an ASGI app fails after answering: the connection cannot
            # be trusted any more.
            log.error("Exception in the data plane", exc_info=exc)
            self.transport.close()
            if not isinstance(exc, Exception):
                raise  # cancellation, interpreter exit

    async def _body(self, cycle: RequestResponseCycle) -> bytes | None:
        """The whole body, as uvicorn's ``receive`` collects it (reading resumes as it is
        consumed); None once the client is gone."""
        while cycle.more_body and not cycle.disconnected:
            self.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            return None
        body = bytes(cycle.body)
        cycle.body = bytearray()
        return body

    async def _answer_invoke(self, cycle: RequestResponseCycle, name: str) -> None:
        payload = await self._body(cycle)
        if payload is None:
            return

        async def read(limit: int, message: str, declared: str | None) -> bytes:
            assert payload is not None
            if len(payload) > limit:
                raise AwsError.too_large(message.format(limit=limit, size=len(payload)))
            return payload

        answer = await self._invoke.answer(self._offer_early(cycle), name, read)
        if not cycle.response_complete:
            await self._respond(cycle, *answer)

    async def _answer_asgi(self, cycle: RequestResponseCycle, app: ASGIApp) -> None:
        body = await self._body(cycle)
        if body is None:
            return
        scope = self._offer_early(cycle)
        received = False
        start: Message | None = None
        chunks: list[bytes] = []

        async def receive() -> Message:
            nonlocal received
            if not received:
                received = True
                return {"type": "http.request", "body": body, "more_body": False}
            while not cycle.disconnected and not cycle.response_complete:
                await cycle.message_event.wait()
                cycle.message_event.clear()
            return {"type": "http.disconnect"}

        async def send(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start" and start is None:
                start = message
            elif message["type"] == "http.response.body" and start is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False) and not cycle.response_complete:
                    headers = [(key.lower(), value) for key, value in start.get("headers", ())
                               if key.lower() != b"content-length"]
                    await self._respond(cycle, start["status"], headers, b"".join(chunks))
            else:
                raise RuntimeError(f"Unexpected ASGI message {message['type']!r}")

        try:
            await app(scope, receive, send)
        except Exception as exc:
            log.error("Exception in ASGI application", exc_info=exc)
            if cycle.response_complete:
                self.transport.close()  # as uvicorn does: the connection cannot be trusted
                return
        if not cycle.response_complete and not cycle.disconnected:
            # The app failed or returned without answering: uvicorn's 500, then close.
            cycle.keep_alive = False
            await self._respond(cycle, 500, [(b"content-type", b"text/plain; charset=utf-8")],
                                _SERVER_ERROR)

    async def _respond(self, cycle: RequestResponseCycle, status: int,
                       headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        """Write the response (head and body) in one write once the transport takes writes;
        ``headers`` without Content-Length."""
        if self.flow.write_paused and not cycle.disconnected:
            await self.flow.drain()
        if not cycle.disconnected:
            self._write(cycle, status, headers, body)

    def _offer_early(self, cycle: RequestResponseCycle) -> Scope:
        """The request's scope, with ``_write_now`` offered as its early answer."""
        scope = cast(Scope, cycle.scope)
        scope.setdefault("extensions", {})[EARLY_ANSWER] = functools.partial(self._write_now,
                                                                             cycle)
        return scope

    def _write_now(self, cycle: RequestResponseCycle, status: int,
                   headers: list[tuple[bytes, bytes]], body: bytes) -> bool:
        """The response written now, from a callback (the Runtime API's, when the function's
        result arrives); False when it is not (the client is slow to read, gone, or already
        answered): the request's task answers then."""
        if self.flow.write_paused or cycle.disconnected or cycle.response_complete:
            return False
        try:
            self._write(cycle, status, headers, body)
        except Exception as exc:  # the callback's caller (the runtime) is not to blame
            log.error("Exception writing a response early", exc_info=exc)
            return cycle.response_complete
        return True

    def _write(self, cycle: RequestResponseCycle, status: int,
               headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        head = [STATUS_LINE[status]]
        for key, value in (*self.server_state.default_headers, *headers):
            head += (key, b": ", value, b"\r\n")
        head.append(b"content-length: %d\r\n" % len(body))
        if not cycle.keep_alive:
            head.append(b"connection: close\r\n")
        head += (b"\r\n", body)
        self.transport.write(b"".join(head))
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        cycle.on_response()


def _head(scope: Scope) -> tuple[int | None, bool]:
    """The body's length when known from the head (no Content-Length and no Transfer-Encoding:
    none; None when it is not, or the head is contradictory), and whether the request has
    X-Forwarded-For or X-Forwarded-Proto headers."""
    length: int | None = 0
    forwarded = False
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = int(value) if value.isdigit() and length is not None else None
        elif key == b"transfer-encoding":
            length = None
        elif key in (b"x-forwarded-for", b"x-forwarded-proto"):
            forwarded = True
    return length, forwarded
