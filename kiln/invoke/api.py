"""The Invoke operation (POST /2015-03-31/functions/{name}/invocations)."""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING
from urllib.parse import parse_qsl

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from kiln.aws.arn import FunctionId
from kiln.aws.early import early_answer
from kiln.aws.errors import AwsError
from kiln.aws.restjson import aws_endpoint, json_response, receive_body
from kiln.functions.api import function_id, qualified_function_id
from kiln.gateway.addressing import is_gateway
from kiln.invoke.service import InvokeRequest
from kiln.runtime.api import decode_client_context
from kiln.runtime.types import InvocationResult

if TYPE_CHECKING:
    from kiln.server import Kiln

SYNC_PAYLOAD_LIMIT = 6_291_456
ASYNC_PAYLOAD_LIMIT = 1_048_576
CLIENT_CONTEXT_LIMIT = 3583
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
_INVOKE_PATH = re.compile(r"^/2015-03-31/functions/([^/]+)/invocations/?$")
#: The request headers Invoke reads (the others are not decoded).
_HEADERS = frozenset({b"x-amz-invocation-type", b"x-amz-log-type", b"content-length",
                      b"x-amz-client-context", b"amz-sdk-invocation-id"})
#: Parsed function identifiers remembered, at most (then forgotten all at once).
_IDS_MAX = 4096
log = logging.getLogger("kiln")
#: ``read(limit, message, declared Content-Length)``: the request's payload (see InvokeApp.answer).
ReadPayload = Callable[[int, str, "str | None"], Awaitable[bytes]]


class InvokeApp:
    """ASGI front of the whole Kiln app that answers Invoke itself.

    Invoke is the hot path: it is served here on the bare ASGI scope, without Starlette's
    middleware, router, Request and Response (together a measurable share of a warm invoke);
    everything else goes on to ``app``.
    """

    def __init__(self, kiln: Kiln, app: ASGIApp) -> None:
        self.kiln = kiln
        self.app = app
        #: (name in the path, Qualifier) -> the function id and the ARN the function is told
        #: it was invoked as: both depend only on these strings, and callers repeat them.
        self._ids: dict[tuple[str, str | None], tuple[FunctionId, str]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        name = self.target(scope) if scope["type"] == "http" else None
        if name is not None:
            await self.invoke(scope, receive, send, name)
            return
        await self.app(scope, receive, send)

    def target(self, scope: Scope) -> str | None:
        """The function an Invoke request names; None for any other request (also for
        ``kiln.http_protocol``, which answers Invoke with ``answer`` rather than ASGI)."""
        if scope["method"] != "POST" or is_gateway(scope):
            return None
        match = _INVOKE_PATH.match(scope["path"])
        return match[1] if match else None

    async def invoke(self, scope: Scope, receive: Receive, send: Send, name: str) -> None:
        async def read(limit: int, message: str, declared: str | None) -> bytes:
            return await receive_body(receive, declared, limit, message)

        try:
            status, headers, body = await self.answer(scope, name, read)
        except ClientDisconnect:  # nobody is left to answer; not a server fault
            return
        headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def answer(self, scope: Scope, name: str, read: ReadPayload
                     ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """The Invoke response: status, headers (without Content-Length) and body; errors are
        answered in AWS's shape.  ``read(limit, message, declared)`` gives the payload, or
        raises RequestEntityTooLargeException with ``message`` past ``limit`` bytes.  A
        synchronous invoke's response (no log tail asked for) also goes to the scope's early
        answer (``kiln.aws.early``) the moment the function has its result; it is returned all
        the same."""
        try:
            return await self._invoke(scope, name, read)
        except AwsError as exc:
            return exc.wire()
        except ClientDisconnect:
            raise
        except Exception as exc:
            # Answered rather than raised: uvicorn would drop the keep-alive connection.
            log.exception("unhandled error in Invoke", exc_info=exc)
            return AwsError.service(f"Internal error: {type(exc).__name__}").wire()

    async def _invoke(self, scope: Scope, name: str, read: ReadPayload
                      ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        kiln = self.kiln
        headers = {key.decode("latin-1"): value.decode("latin-1")
                   for key, value in scope["headers"] if key in _HEADERS}
        query = scope["query_string"]
        qualifier = (dict(parse_qsl(query.decode("latin-1"), keep_blank_values=True))
                     .get("Qualifier") if query else None)
        known = self._ids.get((name, qualifier))
        if known is None:
            fid = qualified_function_id(kiln, name, qualifier)  # raises for a bad one
            if len(self._ids) >= _IDS_MAX:
                self._ids.clear()
            known = self._ids[name, qualifier] = (fid, kiln.arns.function(fid.name,
                                                                          fid.qualifier))
        fid, invoked_arn = known
        invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise AwsError.invalid_parameter(
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' "
                "failed to satisfy constraint: Member must satisfy enum value set: "
                "[Event, RequestResponse, DryRun]")
        log_type = headers.get("x-amz-log-type", "None")
        if log_type not in ("None", "Tail"):
            raise AwsError.invalid_parameter(
                f"1 validation error detected: Value '{log_type}' at 'logType' failed to "
                "satisfy constraint: Member must satisfy enum value set: [None, Tail]")
        record = kiln.functions.resolve(fid.name, fid.qualifier)
        declared = headers.get("content-length")
        if invocation_type == "Event":
            payload = await read(ASYNC_PAYLOAD_LIMIT,
                                 "{size} byte payload is too large for the Event invocation type "
                                 "(limit {limit} bytes)", declared)
        else:
            payload = await read(SYNC_PAYLOAD_LIMIT, "Request must be smaller than {limit} bytes "
                                 "for the InvokeFunction operation", declared)
        _check_json(payload)
        client_context = None
        raw_context = headers.get("x-amz-client-context")
        if raw_context:
            if len(raw_context) > CLIENT_CONTEXT_LIMIT:
                raise AwsError.invalid_parameter(
                    "Client context must be smaller than 3583 bytes when base64-encoded.")
            try:
                client_context = decode_client_context(raw_context)
            except ValueError:
                raise AwsError.invalid_content(
                    "Client context must be a valid Base64-encoded JSON object.") from None
        if invocation_type == "DryRun":
            return 204, [(b"x-amzn-requestid", str(uuid.uuid4()).encode())], b""
        if invocation_type == "Event":
            event = InvokeRequest(payload=payload, invoked_arn=invoked_arn)
            await kiln.queue.enqueue(fid.name, fid.qualifier, event)
            # No X-Amz-Executed-Version: a weighted alias picks its version when the event runs.
            return 202, [(b"x-amzn-requestid", event.request_id.encode())], b""
        invocation_id = headers.get("amz-sdk-invocation-id")
        sync = InvokeRequest(
            payload=payload,
            invoked_arn=invoked_arn,
            client_context=client_context,
            tail=log_type == "Tail",
            # A retried request (same SDK invocation id) gets the first attempt's outcome.
            dedupe_key=f"{invoked_arn}#{invocation_id}" if invocation_id else None,
        )
        early = early_answer(scope)
        if early is not None and not sync.tail:
            request_id, version = sync.request_id, record.version
            sync.on_result = lambda result: early(*_sync_answer(result, request_id, version))
        outcome = await kiln.invoker.invoke(record, sync)
        return _sync_answer(outcome.result, outcome.request_id, outcome.executed_version,
                            outcome.log_tail)


def routes(kiln: Kiln) -> list[Route]:
    @aws_endpoint("KilnReadLogs")
    async def read_logs(request: Request) -> Response:
        """Kiln's own: ``GET /kiln/v1/functions/{name}/logs?offset=N`` (what `kiln logs` polls)."""
        fid = function_id(kiln, request)
        raw = request.query_params.get("offset", "0")
        if not raw.isdigit():
            raise AwsError.invalid_parameter(
                f"Value '{raw}' at 'offset' failed to satisfy constraint: Member must be a "
                "non-negative integer")
        if not kiln.logs.path(fid.name).is_file():
            kiln.functions.get(fid.name)  # ResourceNotFoundException for unknown functions
        # On the event loop, not a thread: read() flushes the store's open (unlocked) files.
        text, next_offset = kiln.logs.read(fid.name, int(raw))
        return json_response({"text": text, "nextOffset": next_offset})

    return [
        Route("/kiln/v1/functions/{name}/logs", read_logs, methods=["GET"]),
    ]


def _sync_answer(result: InvocationResult, request_id: str, version: str,
                 log_tail: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    headers = [
        (b"content-type", result.content_type.encode("latin-1")),
        (b"x-amzn-requestid", request_id.encode()),
        (b"x-amz-executed-version", version.encode()),
    ]
    if result.error_type is not None:
        headers.append((b"x-amz-function-error", b"Unhandled"))
    if log_tail is not None:
        headers.append((b"x-amz-log-result", log_tail.encode()))
    return 200, headers, result.body


def _check_json(payload: bytes) -> None:
    if not payload.strip():
        return
    try:
        try:
            # Decoded first: json.loads sniffs the encoding of bytes (UTF-16/32) at some cost,
            # and payloads are UTF-8 but for the rare exception retried as bytes below.
            text = payload.decode()
        except UnicodeDecodeError:
            json.loads(payload)
        else:
            json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AwsError.invalid_content(
            f"Could not parse request body into json: Could not parse payload into json: {exc}"
        ) from None
