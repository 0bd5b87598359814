"""API Gateway WebSocket APIs: the connection lifecycle and the ``@connections`` API.

    apis = WebSocketApis(kiln.gateway, kiln.local, idle_seconds=600, max_seconds=7200)
    await apis.handle_websocket(scope, receive, send, api_id, stage)      # ASGI websocket scope
    await apis.handle_http(scope, receive, send, api_id, stage, path)     # /@connections/{id}

A handshake waits for the ``$connect`` integration: a 2xx ``statusCode`` (or a return without
one) accepts, with the returned headers on the 101; any other status denies the handshake with
that status and the returned body; a function error or timeout denies with 500/504.  Each
message is routed by the API's RouteSelectionExpression (``$request.body.action``,
``${request.body.a}/${request.body.b}``) to a custom route, else ``$default``; a route with a
RouteResponseSelectionExpression sends the integration's ``body`` back (two-way).  ``$disconnect``
runs after the client closes, a ``DELETE @connections/{id}``, the idle timeout or the maximum
duration (both close with 1001).  Frame and message limits are ``_ws_protocol``'s.

``requestContext.domainName`` is the Host the client connected to (with its port), so a
function reaches ``@connections`` at ``http://{domainName}/_aws/execute-api/{apiId}/{stage}``.
A push to a client that has stopped reading fails with LimitExceededException after
``connections.BACKLOG_WAIT_SECONDS`` rather than holding the caller.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from kiln.aws.errors import AwsError
from kiln.aws.restjson import empty_response, json_response, receive_body
from kiln.gateway._ws_protocol import MESSAGE_LIMIT
from kiln.gateway.connections import Backlogged, Connection, Connections, Gone, opaque_id
from kiln.gateway.types import WEBSOCKET, Api, Route, Stage
from kiln.invoke.local import InvokeFailed, LocalInvoker

log = logging.getLogger("kiln")

CONNECTIONS_PATH = "/@connections/"
_GOING_AWAY = 1001
_NORMAL = 1000
# ``${request.body.a.b}`` inside a template, or a whole expression ``$request.body.a.b``.
_TEMPLATE_VAR = re.compile(r"\$\{request\.body\.([^}]*)\}")
_WHOLE_VAR = "$request.body."
_INDEX = re.compile(r"^([^\[]*)((?:\[\d+\])*)$")


class DeployedApis(Protocol):
    def deployed(self, api_id: str) -> Api | None: ...


@dataclass(frozen=True)
class _Outcome:
    """What an integration answered: ``value`` (its JSON, or None) or a ``failure`` status."""

    value: Any = None
    raw: bytes = b""
    failure: int | None = None


@dataclass
class _Session:
    """One connection with what its events repeat: the handshake and the API it belongs to."""

    conn: Connection
    api: Api
    stage: Stage
    domain: str
    headers: dict[str, str]
    multi_headers: dict[str, list[str]]

    def context(self, route_key: str, event_type: str, request_id: str) -> dict[str, Any]:
        now = time.time()
        conn = self.conn
        return {
            "routeKey": route_key, "eventType": event_type, "extendedRequestId": request_id,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "messageDirection": "IN", "stage": self.stage.name,
            "connectedAt": int(conn.connected_at * 1000), "requestTimeEpoch": int(now * 1000),
            "identity": {"sourceIp": conn.source_ip, "userAgent": conn.user_agent},
            "requestId": request_id, "domainName": self.domain,
            "connectionId": conn.connection_id, "apiId": self.api.api_id,
        }


class WebSocketApis:
    def __init__(self, apis: DeployedApis, local: LocalInvoker, idle_seconds: float,
                 max_seconds: float) -> None:
        self.apis = apis
        self.local = local
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.connections = Connections()
        self._background: set[asyncio.Task[Any]] = set()

    # -- the WebSocket side ---------------------------------------------------------------------

    async def handle_websocket(self, scope: Scope, receive: Receive, send: Send, api_id: str,
                               stage: str) -> None:
        if (await receive())["type"] != "websocket.connect":
            return
        api = self.apis.deployed(api_id)
        deployed = api.stages.get(stage) if api and api.protocol == WEBSOCKET else None
        if api is None or deployed is None:
            await _deny(send, 403, b'{"message":"Forbidden"}')
            return
        headers, multi = _maps((name.decode("latin-1"), value.decode("latin-1"))
                               for name, value in scope.get("headers", ()))
        lower = {name.lower(): value for name, value in headers.items()}
        client = scope.get("client") or ("127.0.0.1", 0)
        conn = Connection(opaque_id(), api_id, stage, str(client[0]),
                          lower.get("user-agent", ""), send)
        session = _Session(conn, api, deployed, lower.get("host", ""), headers, multi)
        if not await self._connect(session, scope):
            return
        self.connections.add(conn)
        watchdog = asyncio.create_task(self._watch(conn))
        try:
            code, reason = await self._serve(session, receive)
        finally:
            watchdog.cancel()
            self.connections.forget(conn)
        await self._disconnect(session, code, reason)

    async def _connect(self, session: _Session, scope: Scope) -> bool:
        """Run ``$connect``; accept (True) or deny the handshake."""
        send = session.conn.send
        route = session.stage.route("$connect")
        accept_headers: dict[str, str] = {}
        if route is not None:
            request_id = opaque_id()
            query, multi_query = _maps(parse_qsl(scope.get("query_string", b"").decode("latin-1"),
                                                 keep_blank_values=True))
            event: dict[str, Any] = {
                "headers": session.headers, "multiValueHeaders": session.multi_headers,
                "requestContext": session.context("$connect", "CONNECT", request_id),
                "isBase64Encoded": False,
            }
            if query:
                event["queryStringParameters"] = query
                event["multiValueQueryStringParameters"] = multi_query
            outcome = await self._call(route, event)
            status, body, accept_headers = _connect_answer(outcome)
            if not 200 <= status < 300:
                await _deny(send, status, body)
                return False
        subprotocol = None
        extra: list[tuple[bytes, bytes]] = []
        for name, value in accept_headers.items():
            if name.lower() == "sec-websocket-protocol":
                subprotocol = value
            elif name.lower() not in _HANDSHAKE_HEADERS:
                extra.append((name.lower().encode("latin-1"), value.encode("latin-1")))
        await send({"type": "websocket.accept", "subprotocol": subprotocol, "headers": extra})
        return True

    async def _serve(self, session: _Session, receive: Receive) -> tuple[int, str]:
        """Route each message until the connection ends; its close (code, reason)."""
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return int(message.get("code", _NORMAL)), str(message.get("reason") or "")
            session.conn.touch()
            # Each message runs on its own, as on AWS: a slow function does not hold up the
            # next message.
            self._spawn(self._message(session, message))

    async def _watch(self, conn: Connection) -> None:
        """Close the connection after the idle timeout or the maximum duration (1001)."""
        ends_at = conn.connected_at + self.max_seconds
        while True:
            delay = min(conn.last_active_at + self.idle_seconds, ends_at) - time.time()
            if delay <= 0:
                with contextlib.suppress(Gone):
                    await conn.close(_GOING_AWAY, "Going away")
                return
            await asyncio.sleep(delay)

    async def _message(self, session: _Session, message: Message) -> None:
        conn = session.conn
        text: str | None = message.get("text")
        request_id = opaque_id()
        if text is not None:
            body, encoded = text, False
        else:
            body, encoded = base64.b64encode(message.get("bytes") or b"").decode(), True
        route = _select(session.api.route_selection_expression, session.stage, text)
        if route is None:
            await _tell(conn, {"message": "Forbidden", "connectionId": conn.connection_id,
                               "requestId": request_id})
            return
        context = session.context(route.route_key, "MESSAGE", request_id)
        context["messageId"] = opaque_id()
        outcome = await self._call(route, {"requestContext": context, "body": body,
                                           "isBase64Encoded": encoded})
        if outcome.failure is not None:
            await _tell(conn, {"message": _failure_message(outcome.failure),
                               "connectionId": conn.connection_id, "requestId": request_id})
        elif route.route_response_selection_expression is not None:
            reply = _reply(outcome)
            if reply is not None:
                with contextlib.suppress(Gone, Backlogged):
                    await conn.push(reply)

    async def _disconnect(self, session: _Session, code: int, reason: str) -> None:
        route = session.stage.route("$disconnect")
        if route is None:
            return
        context = session.context("$disconnect", "DISCONNECT", opaque_id())
        context["disconnectStatusCode"] = code
        context["disconnectReason"] = reason
        await self._call(route, {"headers": session.headers,
                                 "multiValueHeaders": session.multi_headers,
                                 "requestContext": context, "isBase64Encoded": False})

    async def _call(self, route: Route, event: dict[str, Any]) -> _Outcome:
        """Invoke the route's function within its integration timeout."""
        integration = route.integration
        if integration is None:
            return _Outcome(failure=500)
        task = self._spawn(self.local.invoke(integration.function_arn,
                                             json.dumps(event).encode()))
        # The invoke is not cancelled at the timeout: the function runs to its own end, as on
        # AWS, and only the answer is dropped.
        done, _ = await asyncio.wait({task}, timeout=integration.timeout_ms / 1000)
        if not done:
            return _Outcome(failure=504)
        try:
            raw, error_type = task.result()
        except InvokeFailed as exc:
            log.warning("websocket integration %s: %s", integration.function_arn, exc)
            return _Outcome(failure=500)
        if error_type is not None:
            return _Outcome(raw=raw, failure=500)
        try:
            return _Outcome(json.loads(raw), raw)
        except ValueError:
            return _Outcome(None, raw)

    def _spawn(self, work: Any) -> asyncio.Task[Any]:
        task: asyncio.Task[Any] = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    # -- the @connections management API -------------------------------------------------------

    async def handle_http(self, scope: Scope, receive: Receive, send: Send, api_id: str,
                          stage: str, path: str) -> None:
        try:
            response = await self._manage(scope, receive, api_id, stage, path)
        except AwsError as exc:
            response = exc.to_response()
        except ClientDisconnect:
            return
        await response(scope, receive, send)

    async def _manage(self, scope: Scope, receive: Receive, api_id: str, stage: str,
                      path: str) -> Response:
        api = self.apis.deployed(api_id)
        connection_id = path[len(CONNECTIONS_PATH):] if path.startswith(CONNECTIONS_PATH) else ""
        method = scope["method"]
        if (api is None or api.protocol != WEBSOCKET or stage not in api.stages
                or not connection_id or "/" in connection_id
                or method not in ("POST", "GET", "DELETE")):
            raise AwsError("ForbiddenException", "Forbidden", 403)
        if method == "POST":
            declared = dict(scope["headers"]).get(b"content-length", b"").decode("latin-1")
            try:
                data = await receive_body(receive, declared or None, MESSAGE_LIMIT,
                                          "Message too long")
            except AwsError as exc:
                raise AwsError("PayloadTooLargeException", exc.message, 413) from None
        try:
            conn = self.connections.get(api_id, connection_id)
            if method == "POST":
                await conn.push(data)
                return empty_response(200)
            if method == "DELETE":
                await conn.close(_NORMAL, "Connection Closed Normally")  # as AWS reports it
                return empty_response(204)
        except Gone:
            raise AwsError("GoneException", f"Connection {connection_id} is gone", 410) from None
        except Backlogged:
            raise AwsError("LimitExceededException", "The client is not reading: its buffer is "
                           "full", 429) from None
        return json_response({"connectedAt": _iso(conn.connected_at),
                              "identity": {"sourceIp": conn.source_ip,
                                           "userAgent": conn.user_agent},
                              "lastActiveAt": _iso(conn.last_active_at)})


# Headers of the 101 that the WebSocket handshake itself owns.
_HANDSHAKE_HEADERS = frozenset({"connection", "upgrade", "sec-websocket-accept",
                                "sec-websocket-extensions", "content-length", "date"})


def _connect_answer(outcome: _Outcome) -> tuple[int, bytes, dict[str, str]]:
    """(status, body, headers) of a ``$connect`` integration's answer."""
    if outcome.failure is not None:
        return (outcome.failure,
                json.dumps({"message": _failure_message(outcome.failure)}).encode(), {})
    value = outcome.value
    if not isinstance(value, dict) or "statusCode" not in value:
        return 200, b"", {}
    status, headers, body = value["statusCode"], value.get("headers") or {}, value.get("body")
    if (not isinstance(status, int) or not 100 <= status < 600 or not isinstance(headers, dict)
            or not isinstance(body, str | None)):
        return 502, b'{"message":"Internal server error"}', {}
    return status, (body or "").encode(), {str(k): str(v) for k, v in headers.items()}


def _failure_message(status: int) -> str:
    """API Gateway's message for an integration that timed out (504) or failed."""
    return "Endpoint request timed out" if status == 504 else "Internal server error"


def _reply(outcome: _Outcome) -> bytes | None:
    """The message a two-way route sends back: the proxy response's ``body``."""
    value = outcome.value
    if not isinstance(value, dict):
        return outcome.raw or None
    body = value.get("body")
    if not isinstance(body, str):
        return None
    if value.get("isBase64Encoded") is True:
        try:
            return base64.b64decode(body, validate=True)
        except ValueError:
            return None
    return body.encode()


def _select(expression: str, stage: Stage, text: str | None) -> Route | None:
    """The route a message goes to: the expression's value as a custom route key, else
    ``$default`` (binary and non-JSON messages always go to ``$default``)."""
    if text is not None:
        try:
            key = _evaluate(expression, json.loads(text))
        except ValueError:  # not JSON
            key = ""
        route = stage.route(key) if key and not key.startswith("$") else None
        if route is not None:
            return route
    return stage.route("$default")


def _evaluate(expression: str, body: Any) -> str:
    if _TEMPLATE_VAR.search(expression):
        return _TEMPLATE_VAR.sub(lambda match: _stringify(_lookup(body, match[1])), expression)
    if expression.startswith(_WHOLE_VAR):
        return _stringify(_lookup(body, expression[len(_WHOLE_VAR):]))
    return expression


def _lookup(value: Any, path: str) -> Any:
    """``a.b[0].c`` in ``value``; None where it does not exist."""
    for part in path.split("."):
        match = _INDEX.match(part)
        if match is None:
            return None
        name, indexes = match[1], match[2]
        if name:
            value = value.get(name) if isinstance(value, dict) else None
        for index in re.findall(r"\d+", indexes):
            value = value[int(index)] if isinstance(value, list) and int(index) < len(value) \
                else None
    return value


def _stringify(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"))


def _maps(pairs: Iterable[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
    """REST-style single (last value wins) and multi-value maps of headers or query keys."""
    single: dict[str, str] = {}
    multi: dict[str, list[str]] = {}
    for name, value in pairs:
        single[name] = value
        multi.setdefault(name, []).append(value)
    return single, multi


async def _deny(send: Send, status: int, body: bytes) -> None:
    await send({"type": "websocket.http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json")]})
    await send({"type": "websocket.http.response.body", "body": body})


async def _tell(conn: Connection, payload: dict[str, str]) -> None:
    with contextlib.suppress(Gone, Backlogged):
        await conn.push(json.dumps(payload).encode())


def _iso(epoch: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch)) + \
        f".{int(epoch * 1000) % 1000:03d}Z"
