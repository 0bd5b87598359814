"""rest-json helpers: JSON bodies in, JSON responses out, AWS errors for bad input."""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive

from kiln.aws.errors import AwsError

log = logging.getLogger("kiln")
Endpoint = Callable[[Request], Awaitable[Response]]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        json.dumps(body),
        status_code=status,
        headers={"x-amzn-RequestId": str(uuid.uuid4()), **(headers or {})},
        media_type="application/json",
    )


def empty_response(status: int = 204) -> Response:
    return Response(b"", status_code=status, headers={"x-amzn-RequestId": str(uuid.uuid4())})


async def json_body(request: Request, limit: int) -> dict[str, Any]:
    """The request's JSON object, or InvalidRequestContentException / RequestEntityTooLarge."""
    raw = await read_body(request, limit, "Request must be smaller than {limit} bytes for the "
                          "{op} operation")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AwsError.invalid_content(
            f"Could not parse request body into json: Could not parse payload into json: {exc}"
        ) from None
    if not isinstance(body, dict):
        raise AwsError.invalid_content(
            "Could not parse request body into json: Could not parse payload into json: "
            "expected a JSON object"
        )
    return body


async def read_body(request: Request, limit: int, message: str) -> bytes:
    """Read at most ``limit`` bytes; past it raise 413 without buffering the rest."""
    op = str(request.scope.get("kiln.operation", "request"))
    return await receive_body(request.receive, request.headers.get("content-length"), limit,
                              message.replace("{op}", op))


async def receive_body(receive: Receive, declared: str | None, limit: int,
                       message: str) -> bytes:
    """``read_body`` for a bare ASGI ``receive``; ``declared`` is the Content-Length header.
    ``message`` may name ``{limit}`` and ``{size}``; a disconnect is ClientDisconnect."""

    def too_large(size: int) -> AwsError:
        return AwsError.too_large(message.format(limit=limit, size=size))

    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared))
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large(size)
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def aws_endpoint(operation: str) -> Callable[[Endpoint], Endpoint]:
    """Decorate an endpoint: name the operation and turn AwsError into its wire shape."""

    def wrap(func: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            request.scope["kiln.operation"] = operation
            try:
                return await func(request)
            except AwsError as exc:
                return exc.to_response()
            except ClientDisconnect:  # nobody is left to answer; not a server fault
                return AwsError.invalid_content("The client disconnected.").to_response()
            except Exception as exc:
                # Answered here rather than by Starlette's last-resort handler, which re-raises
                # after answering: uvicorn then drops the keep-alive connection under the
                # client, whose next request on it fails.
                log.exception("unhandled error in %s", operation, exc_info=exc)
                return AwsError.service(f"Internal error: {type(exc).__name__}").to_response()

        endpoint.__name__ = func.__name__
        endpoint.__doc__ = func.__doc__
        return endpoint

    return wrap


class Fields:
    """Typed access to a JSON request body; a wrong type is InvalidRequestContentException."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def _get(self, key: str, kinds: tuple[type, ...], label: str) -> Any:
        value = self.body.get(key)
        if value is None:
            return None
        if isinstance(value, bool) and bool not in kinds:
            value = object()  # a JSON boolean is not a number here
        if not isinstance(value, kinds):
            raise AwsError.invalid_content(
                "Could not parse request body into json: Could not parse payload into json: "
                f"Cannot deserialize value of type `{label}` for field '{key}'"
            )
        return value

    def string(self, key: str) -> str | None:
        value: str | None = self._get(key, (str,), "java.lang.String")
        return value

    def integer(self, key: str) -> int | None:
        value = self._get(key, (int, float), "java.lang.Integer")
        if isinstance(value, float):
            if not value.is_integer():
                raise AwsError.invalid_content(
                    f"Could not parse request body into json: field '{key}' must be an integer"
                )
            value = int(value)
        return int(value) if value is not None else None

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self._get(key, (bool,), "java.lang.Boolean")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._get(key, (dict,), "java.util.Map")
        return value

    def array(self, key: str) -> list[Any] | None:
        value: list[Any] | None = self._get(key, (list,), "java.util.List")
        return value
