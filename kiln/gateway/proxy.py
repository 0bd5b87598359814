"""The HTTP data plane: HTTP API requests and Function URL requests run Kiln functions.

Answers as API Gateway does: 404 ``{"message":"Not Found"}`` with no matching stage or route,
502 ``{"message":"Internal Server Error"}`` when the function fails or answers a malformed
response, 500 when it cannot be invoked at all, 504 when the integration's TimeoutInMillis
passes (the function keeps running, as on AWS), 413 past the 10 MB payload limit (6 MB for
Function URLs, Lambda's synchronous limit).

    proxy = HttpProxy(kiln.gateway, kiln.function_urls, kiln.local, settings)
    await proxy.api(scope, receive, send, api, stage, path)
    await proxy.function_url(scope, receive, send, url_id, path)
"""

from __future__ import annotations

import asyncio
import json
import logging

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from kiln.aws.early import EarlyAnswer, early_answer
from kiln.aws.errors import AwsError
from kiln.aws.restjson import receive_body
from kiln.config import Settings
from kiln.functions.service import is_version
from kiln.gateway.addressing import raw_route_path
from kiln.gateway.cors import is_preflight, preflight_headers, with_cors
from kiln.gateway.events import (
    Context,
    Headers,
    HttpRequest,
    Malformed,
    event_v1,
    event_v2,
    response_v1,
    response_v2,
)
from kiln.gateway.store import DEFAULT_STAGE, GatewayStore
from kiln.gateway.types import Api, Cors
from kiln.gateway.urls import FunctionUrls, sigv4_access_key
from kiln.invoke.local import InvokeFailed, LocalInvoker

log = logging.getLogger("kiln")
API_PAYLOAD_MAX = 10 * 1024 * 1024
URL_PAYLOAD_MAX = 6 * 1024 * 1024
URL_TIMEOUT_MS = 900_000  # a Function URL waits for the function's own timeout
_NOT_FOUND = (404, {"message": "Not Found"})
_FAILED = (502, {"message": "Internal Server Error"})
_UNINVOKABLE = (500, {"message": "Internal Server Error"})
_TIMED_OUT = (504, {"message": "Endpoint request timed out"})
_TOO_LARGE = (413, {"message": "Request Entity Too Large"})
#: One encoder for every gateway-made answer: json.dumps with options builds one per call.
_COMPACT = json.JSONEncoder(separators=(",", ":"))


class HttpProxy:
    def __init__(self, store: GatewayStore, urls: FunctionUrls, local: LocalInvoker,
                 settings: Settings) -> None:
        self.store = store
        self.urls = urls
        self.local = local
        self.account_id = settings.account_id
        self.init_timeout = settings.init_timeout_seconds
        # Invocations that outlived their integration timeout, kept until they finish.
        self._overdue: set[asyncio.Task[tuple[bytes, str | None]]] = set()

    async def api(self, scope: Scope, receive: Receive, send: Send, api: Api | None,
                  stage_name: str, path: str) -> None:
        """One request to an HTTP API (``api`` None: no such API)."""
        stage = api.stages.get(stage_name) if api is not None else None
        if api is None or stage is None:
            await send_json(send, *_NOT_FOUND)
            return
        if api.endpoint_disabled:
            await send_json(send, 403, {"message": "Forbidden"})
            return
        request = await _request(scope, receive, send, API_PAYLOAD_MAX, api.cors, 204)
        if request is None:
            return
        found = stage.table.match(request.method, path)
        integration = found[0].integration if found is not None else None
        if found is None or integration is None:
            await send_json(send, *_NOT_FOUND, cors=api.cors, request=request)
            return
        route, params = found
        host = f"{api.api_id}.execute-api.localhost"
        raw_path = raw_route_path(scope, path)
        if stage_name != DEFAULT_STAGE:
            raw_path = f"/{stage_name}{raw_path}"
        context = Context(api_id=api.api_id, domain_name=host, stage=stage_name,
                          route_key=route.route_key, raw_path=raw_path, path=path,
                          resource_id=route.route_id, path_parameters=params,
                          stage_variables=stage.variables, account_id=self.account_id)
        version = integration.payload_format_version
        event = event_v2(request, context) if version == "2.0" else event_v1(request, context)
        await self._run(send, request, integration.function_arn, event,
                        integration.timeout_ms, version, api.cors,
                        [("apigw-requestid", context.request_id)], early_answer(scope))

    async def function_url(self, scope: Scope, receive: Receive, send: Send, url_id: str,
                           path: str) -> None:
        config = self.urls.by_id(url_id)
        if config is None:
            await send_json(send, *_NOT_FOUND)
            return
        request = await _request(scope, receive, send, URL_PAYLOAD_MAX, config.cors, 200)
        if request is None:
            return
        authorizer = None
        if config.auth_type == "AWS_IAM":
            access_key = sigv4_access_key(request.header("authorization"),
                                          request.header("x-amz-date"))
            if access_key is None:
                await send_json(send, 403, {"Message": "Forbidden"})
                return
            authorizer = {"iam": {"accessKey": access_key, "accountId": self.account_id,
                                  "callerId": access_key, "cognitoIdentity": None,
                                  "principalOrgId": None,
                                  "userArn": f"arn:aws:iam::{self.account_id}:user/kiln",
                                  "userId": access_key}}
        context = Context(api_id=url_id, domain_name=f"{url_id}.lambda-url.localhost",
                          stage=DEFAULT_STAGE, route_key=DEFAULT_STAGE,
                          raw_path=raw_route_path(scope, path),
                          path=path, account_id=self.account_id, authorizer=authorizer)
        await self._run(send, request, config.function_arn, event_v2(request, context),
                        URL_TIMEOUT_MS, "2.0", config.cors,
                        [("x-amzn-requestid", context.request_id)], early_answer(scope))

    async def _run(self, send: Send, request: HttpRequest, function_arn: str,
                   event: dict[str, object], timeout_ms: int, version: str, cors: Cors | None,
                   extra: Headers, early: EarlyAnswer | None) -> None:
        """Invoke, map the result, answer."""
        # orjson: encoding the event with json took as long as the rest of the gateway's work.
        payload = orjson.dumps(event)
        answered = False

        def answer_now(body: bytes, error_type: str | None) -> None:
            # Written from the Runtime API's callback, if the server offers it (kiln.aws.early).
            nonlocal answered
            status, headers, answer = self._mapped(body, error_type, function_arn, version,
                                                   cors, request)
            answered = bool(early and early(status, _wire([*headers, *extra]), answer))

        try:
            if self._ends_before(function_arn, timeout_ms):
                body, error_type = await self.local.invoke(function_arn, payload,
                                                           answer_now if early else None)
                if answered:
                    return
            else:
                task = asyncio.ensure_future(self.local.invoke(function_arn, payload))
                done, _ = await asyncio.wait((task,), timeout=timeout_ms / 1000)
                if not done:
                    self._overdue.add(task)
                    task.add_done_callback(self._finished)
                    await send_json(send, *_TIMED_OUT, cors=cors, request=request)
                    return
                body, error_type = task.result()
        except InvokeFailed as exc:
            log.warning("gateway could not invoke %s: %s", function_arn, exc)
            await send_json(send, *_UNINVOKABLE, cors=cors, request=request)
            return
        status, headers, answer = self._mapped(body, error_type, function_arn, version, cors,
                                               request)
        await send_raw(send, status, [*headers, *extra], answer)

    def _mapped(self, body: bytes, error_type: str | None, function_arn: str, version: str,
                cors: Cors | None, request: HttpRequest) -> tuple[int, Headers, bytes]:
        """The function's result as the gateway answers it (502 for a failure or a
        malformed result)."""
        if error_type is not None:
            return _json_answer(*_FAILED, cors=cors, request=request)
        try:
            status, headers, payload = (response_v2 if version == "2.0" else response_v1)(body)
        except Malformed as exc:
            log.warning("malformed response from %s: %s", function_arn, exc)
            return _json_answer(*_FAILED, cors=cors, request=request)
        if cors is not None:
            headers = with_cors(cors, request, headers)
        return status, headers, payload

    def _ends_before(self, function_arn: str, timeout_ms: int) -> bool:
        """Whether the invoke surely ends (if need be as a function timeout) before the
        integration timeout, so it can be awaited without a watchdog task (the common case:
        3 s functions behind 30 s integrations).  Aliases may route to versions with other
        timeouts, so they always get the watchdog."""
        try:
            fid = self.local.function_id(function_arn)
            if fid.qualifier is not None and not is_version(fid.qualifier):
                return False
            record = self.local.functions.get(fid.name, fid.qualifier)
        except AwsError:
            return False  # the invoke itself reports it, at once
        return (record.timeout + self.init_timeout) * 1000 < timeout_ms

    def _finished(self, task: asyncio.Task[tuple[bytes, str | None]]) -> None:
        self._overdue.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.warning("overdue gateway invocation failed: %s", task.exception())


async def _request(scope: Scope, receive: Receive, send: Send, limit: int, cors: Cors | None,
                   preflight_status: int) -> HttpRequest | None:
    """The request with its body; None when it has been answered here already (too large,
    a CORS preflight) or the client left."""
    try:
        body = await receive_body(receive, _header(scope, b"content-length"), limit, "")
    except AwsError:
        await send_json(send, *_TOO_LARGE)
        return None
    except ClientDisconnect:
        return None
    server = scope.get("server")
    request = HttpRequest.from_scope(scope, body, server[1] if server else 80)
    if cors is not None and is_preflight(request):
        await send_raw(send, preflight_status, preflight_headers(cors, request), b"")
        return None
    return request


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            text: str = value.decode("latin-1")
            return text
    return None


async def send_json(send: Send, status: int, body: dict[str, str], cors: Cors | None = None,
                request: HttpRequest | None = None) -> None:
    """A gateway-made JSON answer (errors), with CORS headers when configured."""
    await send_raw(send, *_json_answer(status, body, cors, request))


def _json_answer(status: int, body: dict[str, str], cors: Cors | None = None,
                 request: HttpRequest | None = None) -> tuple[int, Headers, bytes]:
    headers: Headers = [("content-type", "application/json")]
    if cors is not None and request is not None:
        headers = with_cors(cors, request, headers)
    return status, headers, _COMPACT.encode(body).encode()


async def send_raw(send: Send, status: int, headers: Headers, body: bytes) -> None:
    raw = _wire(headers)
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def _wire(headers: Headers) -> list[tuple[bytes, bytes]]:
    """Headers as HTTP sends them: lower-case names in bytes, without Content-Length."""
    return [(k.lower().encode("latin-1"), v.encode("latin-1", "replace")) for k, v in headers
            if k.lower() != "content-length"]
