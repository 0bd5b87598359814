"""ALB-style targets: a listener per port whose requests become Application Load Balancer
events for one function (as a target group of type ``lambda``).

    albs = AlbTargets(parse_targets("8081=web 8082=api:live,multi,health=/ping"), kiln.local,
                      kiln.arns)
    await albs.start("127.0.0.1") ... await albs.stop()

Events follow ELB's Lambda target contract: ``requestContext.elb.targetGroupArn``, the raw
(still percent-encoded) path and query, lower-case headers plus ALB's ``x-forwarded-*`` and
``x-amzn-trace-id``, text bodies as-is and other bodies in base64.  With ``multi``
(``lambda.multi_value_headers.enabled``) the event has only ``multiValueHeaders`` /
``multiValueQueryStringParameters`` and the response must use ``multiValueHeaders``; without it,
the last value of a repeated header or key.  The response's ``statusDescription`` is the status
line's reason phrase.  A malformed response, a function error or an unreachable function is a
502 (503 when throttled); a request body over 1 MB is a 413; WebSocket upgrades are a 400.

Health checks are off by default, as for Lambda target groups.  ``health=/PATH`` turns them on:
a request for PATH invokes the function with ELB's health-check event (``user-agent:
ELB-HealthChecker/2.0``) and answers 200 ``{"state":"healthy"}`` when the function returns
status 200 (ELB's default matcher), else 503 with ``"unhealthy"`` and ELB's reason code.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import time
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any, cast

import httptools

from kiln.aws.arn import ArnBuilder
from kiln.invoke.local import InvokeFailed, LocalInvoker

BODY_LIMIT = 1024 * 1024  # request body and response JSON, per ELB's Lambda quotas
_TEXT_TYPES = ("application/json", "application/javascript", "application/xml")
_HOP_BY_HOP = frozenset({"connection", "transfer-encoding", "content-length", "keep-alive",
                         "upgrade"})
_HEALTH_AGENT = "ELB-HealthChecker/2.0"


@dataclass(frozen=True)
class AlbTarget:
    port: int
    function: str  # name, name:qualifier or ARN
    multi_value: bool = False
    health_path: str | None = None


def parse_targets(text: str) -> list[AlbTarget]:
    """``PORT=FUNCTION[,multi][,health=/PATH] ...`` (the ``alb_targets`` setting); ValueError
    names the bad entry."""
    targets: list[AlbTarget] = []
    for entry in text.split():
        port, _, rest = entry.partition("=")
        function, *options = rest.split(",")
        health: str | None = None
        for option in options:
            if option.startswith("health=/"):
                health = option[len("health="):]
            elif option != "multi":
                raise ValueError(f"alb target {entry!r}: unknown option {option!r}")
        if not port.isdigit() or not 0 < int(port) < 65536 or not function:
            raise ValueError(f"alb target {entry!r}: expected PORT=FUNCTION[,multi]"
                             "[,health=/PATH]")
        targets.append(AlbTarget(int(port), function, "multi" in options, health))
    if len({target.port for target in targets}) != len(targets):
        raise ValueError("alb targets: a port is named twice")
    return targets


@dataclass
class _Request:
    method: str
    target: str  # the raw request target: path?query
    headers: list[tuple[str, str]]  # lower-case names, in order
    body: bytes
    client: str
    keep_alive: bool = True


@dataclass(frozen=True)
class _Answer:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def encode(self, keep_alive: bool, head: bool = False) -> bytes:
        """The response on the wire (``head``: without the body, for a HEAD request)."""
        lines = [f"HTTP/1.1 {self.status} {self.reason}",
                 f"Date: {formatdate(usegmt=True)}", "Server: awselb/2.0",
                 f"Content-Length: {len(self.body)}"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        lines.append("Connection: keep-alive" if keep_alive else "Connection: close")
        head_bytes = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return head_bytes if head else head_bytes + self.body


def _error_page(status: int) -> _Answer:
    """ELB's own error page."""
    title = f"{status} {HTTPStatus(status).phrase}"
    page = (f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
            f"<center><h1>{title}</h1></center>\r\n</body>\r\n</html>\r\n")
    return _Answer(status, HTTPStatus(status).phrase,
                   [("Content-Type", "text/html")], page.encode())


class _Malformed(Exception):
    """The function's answer is not an ALB response."""


class _TargetGroup:
    """One target group: turns requests into events and responses back."""

    def __init__(self, target: AlbTarget, local: LocalInvoker, target_group_arn: str) -> None:
        self.target = target
        self.local = local
        self.target_group_arn = target_group_arn

    async def answer(self, request: _Request) -> _Answer:
        path, _, query = request.target.partition("?")
        if self.target.health_path is not None and path == self.target.health_path:
            return await self._health_check()
        # ALB passes query keys and values as sent: not percent-decoded.
        pairs = [(name, value) for name, _, value in
                 (item.partition("=") for item in query.split("&") if item)]
        headers = [*request.headers, *self._forwarding(request)]
        return await self._forward(self._event(request.method, path, pairs, headers,
                                               request.body))

    def _event(self, method: str, path: str, pairs: list[tuple[str, str]],
               headers: list[tuple[str, str]], raw_body: bytes) -> dict[str, Any]:
        content_type = next((v for n, v in reversed(headers) if n == "content-type"), "")
        body, encoded = _event_body(raw_body, content_type)
        event: dict[str, Any] = {"requestContext": {"elb": {"targetGroupArn":
                                                             self.target_group_arn}},
                                 "httpMethod": method, "path": path}
        if self.target.multi_value:
            event["multiValueQueryStringParameters"] = _multi(pairs)
            event["multiValueHeaders"] = _multi(headers)
        else:
            event["queryStringParameters"] = dict(pairs)
            event["headers"] = dict(headers)
        event["body"] = body
        event["isBase64Encoded"] = encoded
        return event

    def _forwarding(self, request: _Request) -> list[tuple[str, str]]:
        """The headers ALB adds (appending to an existing X-Forwarded-For)."""
        forwarded = next((v for n, v in reversed(request.headers) if n == "x-forwarded-for"),
                         None)
        chain = f"{forwarded}, {request.client}" if forwarded else request.client
        trace = f"Root=1-{int(time.time()):08x}-{random.getrandbits(96):024x}"
        return [("x-amzn-trace-id", trace), ("x-forwarded-for", chain),
                ("x-forwarded-port", str(self.target.port)), ("x-forwarded-proto", "http")]

    async def _invoke(self, event: dict[str, Any]) -> _Answer:
        """Invoke; the mapped response, raising _Malformed for anything ALB would reject."""
        raw, error_type = await self.local.invoke(self.target.function,
                                                  json.dumps(event).encode())
        if error_type is not None or len(raw) > BODY_LIMIT:
            raise _Malformed
        return self._response(raw)

    async def _forward(self, event: dict[str, Any]) -> _Answer:
        try:
            return await self._invoke(event)
        except _Malformed:
            return _error_page(502)
        except InvokeFailed as exc:
            return _error_page(503 if exc.code == "TooManyRequestsException" else 502)

    async def _health_check(self) -> _Answer:
        """ELB's health check: its event (only a user-agent header), matcher 200."""
        event = self._event("GET", str(self.target.health_path), [],
                            [("user-agent", _HEALTH_AGENT)], b"")
        try:
            answer = await self._invoke(event)
            reason = None if answer.status == 200 else "Target.ResponseCodeMismatch"
        except (_Malformed, InvokeFailed):
            reason = "Target.FailedHealthChecks"
        state = {"state": "healthy"} if reason is None else {"state": "unhealthy",
                                                             "reason": reason}
        status = 200 if reason is None else 503
        return _Answer(status, HTTPStatus(status).phrase,
                       [("Content-Type", "application/json")], json.dumps(state).encode())

    def _response(self, raw: bytes) -> _Answer:
        try:
            value = json.loads(raw)
        except ValueError:
            raise _Malformed from None
        if not isinstance(value, dict):
            raise _Malformed
        status = value.get("statusCode")
        if isinstance(status, str) and status.isdigit():
            status = int(status)
        if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status < 600:
            raise _Malformed
        headers = self._response_headers(value)
        body = value.get("body")
        if body is None:
            data = b""
        elif not isinstance(body, str):
            raise _Malformed
        elif value.get("isBase64Encoded") is True:
            try:
                data = base64.b64decode(body, validate=True)
            except ValueError:
                raise _Malformed from None
        else:
            data = body.encode()
        return _Answer(status, _reason(status, value.get("statusDescription")), headers, data)

    def _response_headers(self, value: dict[str, Any]) -> list[tuple[str, str]]:
        key = "multiValueHeaders" if self.target.multi_value else "headers"
        given = value.get(key) or {}
        if not isinstance(given, dict):
            raise _Malformed
        headers: list[tuple[str, str]] = []
        for name, values in given.items():
            items = values if self.target.multi_value else [values]
            if not isinstance(items, list):
                raise _Malformed
            for item in items:
                if not isinstance(item, str | int | float) or isinstance(item, bool):
                    raise _Malformed
                text = str(item)
                if _unsafe(name) or _unsafe(text):
                    raise _Malformed
                if name.lower() not in _HOP_BY_HOP:
                    headers.append((name, text))
        return headers


def _event_body(body: bytes, content_type: str) -> tuple[str, bool]:
    """ALB passes text types as they are and base64-encodes everything else."""
    if not body:
        return "", False
    media = content_type.partition(";")[0].strip().lower()
    if media.startswith("text/") or media in _TEXT_TYPES:
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode(), True


def _multi(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name, []).append(value)
    return out


def _reason(status: int, description: Any) -> str:
    """The reason phrase: ``statusDescription`` minus its leading code (``"200 OK"``)."""
    if isinstance(description, str):
        code, _, phrase = description.partition(" ")
        text = phrase if code == str(status) else description
        if text and not _unsafe(text):
            return text
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _unsafe(text: str) -> bool:
    """Not sendable in an HTTP/1.1 header or status line."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return True
    return any(char in text for char in "\r\n\0")


class _Protocol(asyncio.Protocol):
    """HTTP/1.1 with keep-alive, one request at a time per connection (httptools)."""

    def __init__(self, listener: _TargetGroup, connections: set[_Protocol]) -> None:
        self.listener = listener
        self.connections = connections
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.client = "127.0.0.1"
        self.url = b""
        self.headers: list[tuple[str, str]] = []
        self.body: list[bytes] = []
        self.size = 0
        self.pending: list[_Request] = []
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.client = str(peer[0])
        self.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.connections.discard(self)
        if self.task is not None:
            self.task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400)  # ALB refuses WebSocket upgrades to Lambda targets
        except httptools.HttpParserError:
            self._fail(400)

    def on_message_begin(self) -> None:
        self.url, self.headers, self.body, self.size = b"", [], [], 0

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers.append((name.decode("latin-1").lower(), value.decode("latin-1")))

    def on_headers_complete(self) -> None:
        length = next((v for n, v in self.headers if n == "content-length"), "")
        if length.isdigit() and int(length) > BODY_LIMIT:
            self._fail(413)  # before the body arrives
        elif ("expect", "100-continue") in self.headers and self.transport is not None:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")

    def on_body(self, body: bytes) -> None:
        self.size += len(body)
        if self.size <= BODY_LIMIT:
            self.body.append(body)

    def on_message_complete(self) -> None:
        if self.parser.should_upgrade():
            return
        if self.size > BODY_LIMIT:
            self._fail(413)
            return
        if self.transport is None or self.transport.is_closing():
            return
        self.pending.append(_Request(self.parser.get_method().decode("latin-1"),
                                     self.url.decode("latin-1"), self.headers,
                                     b"".join(self.body), self.client,
                                     self.parser.should_keep_alive()))
        if self.task is None:
            self.task = asyncio.get_running_loop().create_task(self._drain())

    async def _drain(self) -> None:
        try:
            while self.pending and self.transport is not None:
                request = self.pending.pop(0)
                answer = await self.listener.answer(request)
                if self.transport is not None:
                    self.transport.write(answer.encode(request.keep_alive,
                                                      head=request.method == "HEAD"))
                    if not request.keep_alive:
                        self.transport.close()
        finally:
            self.task = None

    def _fail(self, status: int) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(_error_page(status).encode(keep_alive=False))
            self.transport.close()


class AlbTargets:
    """Every configured ALB listener of this Kiln (``alb_targets``)."""

    def __init__(self, targets: list[AlbTarget], local: LocalInvoker, arns: ArnBuilder) -> None:
        self.listeners = [_TargetGroup(t, local, _target_group_arn(arns, t))
                          for t in targets]
        self._servers: list[asyncio.Server] = []
        self._connections: set[_Protocol] = set()

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        for listener in self.listeners:
            def protocol(listener: _TargetGroup = listener) -> _Protocol:
                return _Protocol(listener, self._connections)
            self._servers.append(await loop.create_server(protocol, host,
                                                          listener.target.port))

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        for connection in list(self._connections):
            if connection.transport is not None:
                connection.transport.close()
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()


def _target_group_arn(arns: ArnBuilder, target: AlbTarget) -> str:
    """A stable ARN naming the listener's port, like ``targetgroup/kiln-8081/<16 hex>``."""
    digest = hashlib.sha256(f"{target.port}:{target.function}".encode()).hexdigest()[:16]
    return (f"arn:aws:elasticloadbalancing:{arns.region}:{arns.account_id}:"
            f"targetgroup/kiln-{target.port}/{digest}")
