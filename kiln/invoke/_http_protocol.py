"""uvicorn's httptools protocol, answering Invoke without ASGI.

A warm invoke's own work is a few dozen microseconds, so the ASGI layers around it (the
middleware stack, ``receive``, two ``send`` calls that validate every header and write the
head and the body separately) are a large share of it.  Every request still arrives through
uvicorn's parser and connection handling (keep-alive, pipelining, flow control, graceful
shutdown); only once its head is parsed, an Invoke request with a declared body within the
limit (``InvokeApp.target``) is answered here, in one write, by the same ``InvokeApp.answer``
as the ASGI path.  Everything else goes to the ASGI app as usual.

    config = uvicorn.Config(app, http=functools.partial(InvokeHttpProtocol, invoke=invoke_app))
"""

from __future__ import annotations

import logging
from typing import Any, cast

from starlette.types import Scope
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)

from kiln.aws.errors import AwsError
from kiln.invoke.api import InvokeApp

log = logging.getLogger("kiln")


class InvokeHttpProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, invoke: InvokeApp, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._invoke = invoke

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # Called with a request's head parsed (or when a pipelined one's turn comes).
        name = self._invoke.target(cast(Scope, cycle.scope))
        if name is None or cycle.waiting_for_100_continue:
            super()._start_asgi_task(cycle, app)
            return
        task = self.loop.create_task(self._run(cycle, name))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    async def _run(self, cycle: RequestResponseCycle, name: str) -> None:
        try:
            await self._answer(cycle, name)
        except BaseException as exc:
            # As uvicorn does when an ASGI app fails: the connection cannot be trusted.
            log.error("Exception in Invoke", exc_info=exc)
            self.transport.close()
            if not isinstance(exc, Exception):
                raise  # cancellation, interpreter exit

    async def _answer(self, cycle: RequestResponseCycle, name: str) -> None:
        # The body, as uvicorn's ``receive`` collects it (reading resumes as it is consumed).
        while cycle.more_body and not cycle.disconnected:
            self.flow.resume_reading()
            await cycle.message_event.wait()
            cycle.message_event.clear()
        if cycle.disconnected:
            return
        payload = bytes(cycle.body)
        cycle.body = bytearray()

        async def read(limit: int, message: str, declared: str | None) -> bytes:
            if len(payload) > limit:
                raise AwsError.too_large(message.format(limit=limit, size=len(payload)))
            return payload

        status, headers, body = await self._invoke.answer(cast(Scope, cycle.scope), name, read)
        if self.flow.write_paused and not cycle.disconnected:
            await self.flow.drain()
        if cycle.disconnected:
            return
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
