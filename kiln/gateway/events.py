"""Lambda proxy events (payload 1.0 and 2.0) from HTTP requests, and responses from results.

    request = HttpRequest.from_scope(scope, body, port=8900)
    event = event_v2(request, context)              # or event_v1(request, context)
    status, headers, body = response_v2(result)     # raises Malformed on a bad response
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

from starlette.types import Scope

_TEXT_TYPES = ("text/", "application/json", "application/javascript", "application/xml",
               "application/xhtml+xml", "application/ld+json", "application/graphql")

Headers = list[tuple[str, str]]


class Malformed(Exception):
    """The function's answer is not a valid proxy response (the gateway answers 502)."""


def new_request_id() -> str:
    """API Gateway's request id form: 10 random bytes in base64, e.g. ``JKJaXmPLvHcESHA=``."""
    return base64.b64encode(os.urandom(10)).decode()


def is_text(content_type: str) -> bool:
    """Whether a body of this media type goes to the function as text (else base64)."""
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(("+json", "+xml"))


# Made on every gateway request: slots, not frozen (a frozen dataclass's __init__ costs a
# microsecond or two more); treat instances as values all the same.
@dataclass(slots=True)
class HttpRequest:
    """The parts of an HTTP request every event shape is built from."""

    method: str
    raw_query: str
    headers: Headers  # lowercase names, in order, repeats kept
    body: bytes
    source_ip: str
    protocol: str

    @classmethod
    def from_scope(cls, scope: Scope, body: bytes, port: int) -> HttpRequest:
        """The request as the function sees it: with the X-Forwarded-For/-Port/-Proto headers
        API Gateway adds for ``port`` (an incoming X-Forwarded-For gets the client's address
        appended)."""
        client = scope.get("client")
        source_ip = client[0] if client else "127.0.0.1"
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1"))
                   for k, v in scope.get("headers", ())]
        return cls(
            method=scope["method"],
            raw_query=scope.get("query_string", b"").decode("latin-1"),
            headers=_forwarded(headers, source_ip, port),
            body=body,
            source_ip=source_ip,
            protocol=f"HTTP/{scope.get('http_version', '1.1')}",
        )

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def encoded_body(self) -> tuple[str | None, bool]:
        """(body as the event carries it, isBase64Encoded); None when there is no body."""
        if not self.body:
            return None, False
        content_type = self.header("content-type")
        if content_type is None or is_text(content_type):
            try:
                return self.body.decode("utf-8"), False
            except UnicodeDecodeError:
                pass
        return base64.b64encode(self.body).decode(), True

    def query_pairs(self) -> list[tuple[str, str]]:
        return parse_qsl(self.raw_query, keep_blank_values=True)


@dataclass(slots=True)  # as HttpRequest: a value, made per request
class Context:
    """Where a request arrived: the API (or Function URL) side of the event."""

    api_id: str
    domain_name: str
    stage: str
    route_key: str  # "GET /items/{id}", "$default"
    raw_path: str  # the request path as the client sent it (with a named stage's prefix)
    path: str  # the route path (without the stage)
    resource_id: str = ""
    path_parameters: dict[str, str] = field(default_factory=dict)
    stage_variables: dict[str, str] = field(default_factory=dict)
    account_id: str = "000000000000"
    authorizer: dict[str, Any] | None = None
    request_id: str = field(default_factory=new_request_id)
    epoch_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    def request_time(self) -> str:
        return time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(self.epoch_ms / 1000))


def _forwarded(headers: Headers, source_ip: str, port: int) -> Headers:
    chain: str | None = None
    kept = []
    for name, value in headers:
        if name == "x-forwarded-for":
            chain = value if chain is None else chain
        elif name not in ("x-forwarded-port", "x-forwarded-proto"):
            kept.append((name, value))
    kept += [("x-forwarded-for", f"{chain}, {source_ip}" if chain else source_ip),
             ("x-forwarded-port", str(port)), ("x-forwarded-proto", "http")]
    return kept


def event_v2(request: HttpRequest, context: Context) -> dict[str, Any]:
    """The HTTP API payload 2.0 event (also Function URLs'): lowercase headers with repeats
    comma-joined, cookies apart, empty groups omitted."""
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in request.headers:
        if name == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
        elif name in headers:
            headers[name] += "," + value
        else:
            headers[name] = value
    event: dict[str, Any] = {
        "version": "2.0", "routeKey": context.route_key, "rawPath": context.raw_path,
        "rawQueryString": request.raw_query,
    }
    if cookies:
        event["cookies"] = cookies
    event["headers"] = headers
    query: dict[str, str] = {}
    for key, value in request.query_pairs():
        query[key] = f"{query[key]},{value}" if key in query else value
    if query:
        event["queryStringParameters"] = query
    domain_prefix = context.domain_name.split(".", 1)[0]
    request_context: dict[str, Any] = {
        "accountId": context.account_id, "apiId": context.api_id,
        "domainName": context.domain_name, "domainPrefix": domain_prefix,
        "http": {"method": request.method, "path": context.raw_path,
                 "protocol": request.protocol, "sourceIp": request.source_ip,
                 "userAgent": headers.get("user-agent", "")},
        "requestId": context.request_id, "routeKey": context.route_key,
        "stage": context.stage, "time": context.request_time(), "timeEpoch": context.epoch_ms,
    }
    if context.authorizer is not None:
        request_context["authorizer"] = context.authorizer
    event["requestContext"] = request_context
    if context.path_parameters:
        event["pathParameters"] = context.path_parameters
    if context.stage_variables:
        event["stageVariables"] = context.stage_variables
    body, is_base64 = request.encoded_body()
    if body is not None:
        event["body"] = body
    event["isBase64Encoded"] = is_base64
    return event


def event_v1(request: HttpRequest, context: Context) -> dict[str, Any]:
    """The payload 1.0 event (REST proxy shape plus ``version``): last value per header and
    query key, every value in the multi-value forms, empty groups null."""
    headers: dict[str, str] = {}
    multi_headers: dict[str, list[str]] = {}
    for name, value in request.headers:
        headers[name] = value
        multi_headers.setdefault(name, []).append(value)
    query: dict[str, str] = {}
    multi_query: dict[str, list[str]] = {}
    for key, value in request.query_pairs():
        query[key] = value
        multi_query.setdefault(key, []).append(value)
    resource = context.route_key.partition(" ")[2] or context.route_key
    body, is_base64 = request.encoded_body()
    identity = dict.fromkeys(
        ("accessKey", "accountId", "caller", "cognitoAuthenticationProvider",
         "cognitoAuthenticationType", "cognitoIdentityId", "cognitoIdentityPoolId",
         "principalOrgId", "user", "userArn"))
    identity.update(sourceIp=request.source_ip, userAgent=headers.get("user-agent", ""))
    request_context: dict[str, Any] = {
        "accountId": context.account_id, "apiId": context.api_id,
        "domainName": context.domain_name,
        "domainPrefix": context.domain_name.split(".", 1)[0],
        "extendedRequestId": context.request_id, "httpMethod": request.method,
        "identity": identity, "path": context.raw_path, "protocol": request.protocol,
        "requestId": context.request_id, "requestTime": context.request_time(),
        "requestTimeEpoch": context.epoch_ms, "resourceId": context.resource_id,
        "resourcePath": resource, "stage": context.stage,
    }
    if context.authorizer is not None:
        request_context["authorizer"] = context.authorizer
    return {
        "version": "1.0", "resource": resource, "path": context.path,
        "httpMethod": request.method, "headers": headers, "multiValueHeaders": multi_headers,
        "queryStringParameters": query or None,
        "multiValueQueryStringParameters": multi_query or None,
        "requestContext": request_context,
        "pathParameters": context.path_parameters or None,
        "stageVariables": context.stage_variables or None,
        "body": body, "isBase64Encoded": is_base64,
    }


def response_v2(payload: bytes) -> tuple[int, Headers, bytes]:
    """Map a 2.0 result: a dict with ``statusCode`` is structured (an untyped body is
    text/plain); any other JSON is the body of a 200 ``application/json`` answer, verbatim."""
    parsed = _json(payload)
    if not isinstance(parsed, dict) or "statusCode" not in parsed:
        return 200, [("content-type", "application/json")], payload.strip()
    status, headers, body = _structured(parsed)
    cookies = parsed.get("cookies")
    if cookies is not None:
        if not isinstance(cookies, list) or not all(isinstance(c, str) for c in cookies):
            raise Malformed("cookies must be a list of strings")
        headers.extend(("set-cookie", cookie) for cookie in cookies)
    return status, _typed(headers, body, "text/plain; charset=utf-8"), body


def response_v1(payload: bytes) -> tuple[int, Headers, bytes]:
    """Map a 1.0 result: ``statusCode`` required; ``multiValueHeaders`` win over ``headers``
    for the same name."""
    parsed = _json(payload)
    if not isinstance(parsed, dict) or "statusCode" not in parsed:
        raise Malformed("a 1.0 response must be an object with statusCode")
    status, headers, body = _structured(parsed)
    multi = parsed.get("multiValueHeaders")
    if multi is not None:
        if not isinstance(multi, dict) or not all(isinstance(v, list) for v in multi.values()):
            raise Malformed("multiValueHeaders must map names to lists")
        replaced = {name.lower() for name in multi}
        headers = [(k, v) for k, v in headers if k.lower() not in replaced]
        headers.extend((name, _scalar(value)) for name, values in multi.items()
                       for value in values)
    return status, _typed(headers, body, "application/json"), body


def _typed(headers: Headers, body: bytes, default: str) -> Headers:
    """A body the function left untyped gets API Gateway's default content type (REST-style
    1.0: application/json; HTTP APIs' 2.0: text/plain)."""
    if body and not any(name.lower() == "content-type" for name, _ in headers):
        headers.append(("content-type", default))
    return headers


def _json(payload: bytes) -> Any:
    try:
        # Decoded first: json.loads sniffs the encoding of bytes (UTF-16/32) at some cost,
        # and a function's result is UTF-8 but for the rare exception handled below.
        return json.loads(payload.decode())
    except UnicodeDecodeError:
        pass
    except ValueError:
        raise Malformed("the function's result is not JSON") from None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        raise Malformed("the function's result is not JSON") from None


def _structured(parsed: dict[str, Any]) -> tuple[int, Headers, bytes]:
    status = parsed.get("statusCode")
    if isinstance(status, str) and status.isdigit():
        status = int(status)
    if not isinstance(status, int) or isinstance(status, bool) or not 100 <= status <= 599:
        raise Malformed("statusCode must be an HTTP status code")
    raw_headers = parsed.get("headers")
    if raw_headers is None:
        raw_headers = {}
    if not isinstance(raw_headers, dict):
        raise Malformed("headers must be an object")
    headers: Headers = [(str(k), _scalar(v)) for k, v in raw_headers.items()]
    body = parsed.get("body")
    if body is None:
        return status, headers, b""
    if not isinstance(body, str):
        raise Malformed("body must be a string")
    if parsed.get("isBase64Encoded") is True:
        try:
            return status, headers, base64.b64decode(body, validate=True)
        except binascii.Error:
            raise Malformed("body is not valid base64") from None
    return status, headers, body.encode()


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        raise Malformed("header values must be scalars")
    return str(value)
