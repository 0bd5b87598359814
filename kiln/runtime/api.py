"""The Runtime API one execution environment talks to.

It is served on the environment's own listener (``AWS_LAMBDA_RUNTIME_API``) by the host's event
loop, over a small HTTP/1.1 server (``kiln.runtime._http``), because every invoke crosses it twice.

    api = RuntimeApi(env_id)
    server = await api.serve(listener)
    await api.ready.wait()        # the runtime asked for its first event: INIT is over
    api.submit(invocation)        # handed out by the runtime's pending /next
    result = await invocation.result
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import re
import socket

from kiln.runtime._http import HttpRequest, HttpResponse, Responder, serve_http
from kiln.runtime.types import Invocation, InvocationResult

PREFIX = "/2018-06-01"
# RIE's cap on a buffered response: 6 MB plus a little room for framing.
MAX_RESPONSE_BYTES = 6 * 1024 * 1024 + 100
_ERROR_TYPE_RE = re.compile(r"^(Runtime|Function)\.[A-Z][a-zA-Z]+$")
_INVOCATION_RE = re.compile(r"^/2018-06-01/runtime/invocation/([^/]+)/(response|error)$")
_NEXT = f"{PREFIX}/runtime/invocation/next"
_INIT_ERROR = f"{PREFIX}/runtime/init/error"


def _json(status: int, body: object) -> HttpResponse:
    return HttpResponse(status, json.dumps(body).encode(), "application/json")


def _error(status: int, error_type: str, message: str) -> HttpResponse:
    return _json(status, {"errorType": error_type, "errorMessage": message})


_ACCEPTED = _json(202, {"status": "OK"})


class RuntimeApi:
    """Runtime API state of one environment: at most one invocation in flight."""

    def __init__(self, env_id: str, max_response_bytes: int = MAX_RESPONSE_BYTES) -> None:
        self.env_id = env_id
        self.max_response_bytes = max_response_bytes
        #: Set when the runtime first calls /next (its INIT phase is over).
        self.ready = asyncio.Event()
        #: The error a runtime posted to /runtime/init/error, as served to the first invoke.
        self.init_error: InvocationResult | None = None
        self.init_error_posted = asyncio.Event()
        self._queued: Invocation | None = None
        self._current: Invocation | None = None
        #: The runtime's /next, parked until there is an event to answer it with.
        self._next_waiting: Responder | None = None
        self._server: asyncio.Server | None = None

    async def serve(self, listener: socket.socket) -> None:
        self._server = await serve_http(listener, self.handle)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        self._next_waiting = None

    def submit(self, invocation: Invocation) -> None:
        """Queue the next event; the runtime's pending /next (or its next one) receives it,
        the pending one right now: written before this returns."""
        if self._queued is not None:
            raise RuntimeError("an invocation is already queued for this environment")
        self._queued = invocation
        respond, self._next_waiting = self._next_waiting, None
        if respond is not None and respond(self._hand_out(invocation)):
            self._queued = None

    # -- the HTTP side ------------------------------------------------------------------------

    def handle(self, request: HttpRequest, respond: Responder) -> HttpResponse | None:
        path = request.path
        if path == _NEXT and request.method == "GET":
            return self._next(respond)
        match = _INVOCATION_RE.match(path)
        if match and request.method == "POST":
            if match[2] == "response":
                return self._response(match[1], request)
            return self._invocation_error(match[1], request)
        if path == _INIT_ERROR and request.method == "POST":
            return self._init_error(request)
        if path == f"{PREFIX}/ping":
            return HttpResponse(200, b"pong", "text/plain")
        if path in ("/2020-08-15/logs", "/2022-07-01/telemetry") and request.method == "PUT":
            kind = "Logs" if "logs" in path else "Telemetry"
            return _error(202, f"{kind}.NotSupported", f"{kind} API is not supported")
        return _error(404, "NotFound", f"{request.method} {path} is not part of the Runtime API")

    def _next(self, respond: Responder) -> HttpResponse | None:
        if self._current is not None and not self._current.result.done():
            return _error(403, "InvalidStateTransition", "State transition from Invoke to Next "
                          "failed: the current invocation has no response yet")
        self._current = None
        self.ready.set()
        if self._queued is None:
            # A runtime that reconnected replaces its earlier, abandoned /next.
            self._next_waiting = respond
            return None
        invocation, self._queued = self._queued, None
        return self._hand_out(invocation)

    def _hand_out(self, invocation: Invocation) -> HttpResponse:
        self._current = invocation
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": invocation.invoked_function_arn,
            "Lambda-Runtime-Trace-Id": invocation.trace_id,
        }
        if invocation.client_context is not None:
            headers["Lambda-Runtime-Client-Context"] = invocation.client_context
        if invocation.cognito_identity is not None:
            headers["Lambda-Runtime-Cognito-Identity"] = invocation.cognito_identity
        return HttpResponse(200, invocation.payload, "application/json", headers)

    def _check_invocation(self, request_id: str) -> Invocation | HttpResponse:
        current = self._current
        if current is None or current.request_id != request_id:
            return _error(400, "InvalidRequestID", "Invalid request ID")
        if current.result.done():
            return _error(403, "InvalidStateTransition",
                          "State transition from Ready to InvocationResponse failed")
        return current

    def _response(self, request_id: str, request: HttpRequest) -> HttpResponse:
        current = self._check_invocation(request_id)
        if isinstance(current, HttpResponse):
            return current
        mode = request.headers.get("lambda-runtime-function-response-mode")
        if mode is not None and mode.lower() != "streaming":
            return _error(400, "InvalidFunctionResponseMode", f"Invalid response mode {mode!r}")
        if len(request.body) > self.max_response_bytes:
            current.finish(InvocationResult.platform_error(
                "Function.ResponseSizeTooLarge",
                # AWS's words, e.g. DataBiosphere/azul#7466.
                "Response payload size exceeded maximum allowed payload size "
                f"({self.max_response_bytes} bytes).",
            ))
            limit = self.max_response_bytes
            return _error(413, "RequestEntityTooLarge",
                          f"Exceeded maximum allowed payload size ({limit} bytes)")
        content_type = request.headers.get("content-type") or "application/json"
        current.finish(InvocationResult(request.body, content_type))
        return _ACCEPTED

    def _invocation_error(self, request_id: str, request: HttpRequest) -> HttpResponse:
        current = self._check_invocation(request_id)
        if isinstance(current, HttpResponse):
            return current
        current.finish(_error_result(request, default_type="Unhandled"))
        return _ACCEPTED

    def _init_error(self, request: HttpRequest) -> HttpResponse:
        if self.ready.is_set() or self.init_error is not None:
            return _error(403, "InvalidStateTransition",
                          "State transition from Ready to InitError failed")
        self.init_error = _error_result(request, default_type="Runtime.Unknown")
        self.init_error_posted.set()
        return _ACCEPTED


def _error_result(request: HttpRequest, default_type: str) -> InvocationResult:
    """An error posted by the runtime; a missing error-type header means Unhandled."""
    header = request.headers.get("lambda-runtime-function-error-type")
    error_type = default_type
    if header:
        if _ERROR_TYPE_RE.match(header):
            error_type = header
        else:
            error_type = "Function.Unknown" if header.startswith("Function.") else "Runtime.Unknown"
    body = request.body
    content_type = (request.headers.get("content-type") or "").split(";")[0].strip()
    if content_type == "application/vnd.aws.lambda.error.cause+json":
        body = _without_cause(body)
    if not body.strip():
        body = json.dumps({"errorType": error_type, "errorMessage": ""}).encode()
    elif error_type == default_type:
        # Prefer the errorType named in the body (awslambdaric sends no header).
        try:
            named = json.loads(body).get("errorType")
        except (ValueError, AttributeError):
            named = None
        if isinstance(named, str) and named and default_type != "Unhandled":
            error_type = named
    return InvocationResult(body, "application/json", error_type)


def _without_cause(body: bytes) -> bytes:
    """The error part of an ``error.cause+json`` body (which also holds an X-Ray cause)."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict):
        parsed.pop("cause", None)
        parsed.pop("errorCause", None)
        return json.dumps(parsed).encode()
    return body


def decode_client_context(header: str) -> str:
    """The JSON text of a base64 ``X-Amz-Client-Context`` header; raises ValueError if bad."""
    try:
        text = base64.b64decode(header, validate=True).decode()
        parsed = json.loads(text)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise ValueError(str(exc)) from None
    if not isinstance(parsed, dict):
        raise ValueError("client context is not a JSON object")
    return text
