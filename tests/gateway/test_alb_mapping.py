"""ALB target settings and response mapping (a canned function answer, no server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from kiln.aws.arn import ArnBuilder
from kiln.gateway.alb import AlbTarget, AlbTargets, _Request, parse_targets


def test_parse_targets() -> None:
    assert parse_targets("") == []
    assert parse_targets("8081=web 8082=api:live,multi,health=/ping") == [
        AlbTarget(8081, "web"), AlbTarget(8082, "api:live", True, "/ping")]
    for bad in ("web", "x=web", "0=web", "8081=", "8081=web,bogus", "8081=a 8081=b",
                "8081=web,health=ping"):
        with pytest.raises(ValueError, match="alb target"):
            parse_targets(bad)


class _Canned:
    """A LocalInvoker stand-in answering one fixed response."""

    def __init__(self, answer: Any, error: str | None = None) -> None:
        self.raw = answer if isinstance(answer, bytes) else json.dumps(answer).encode()
        self.error = error
        self.events: list[dict[str, Any]] = []

    async def invoke(self, arn: str, payload: bytes) -> tuple[bytes, str | None]:
        self.events.append(json.loads(payload))
        return self.raw, self.error


def _answer(response: Any, multi: bool = False, error: str | None = None) -> Any:
    local = _Canned(response, error)
    group = AlbTargets([AlbTarget(8081, "fn", multi)], local,  # type: ignore[arg-type]
                       ArnBuilder("us-east-1", "000000000000")).listeners[0]
    request = _Request("GET", "/p?a=1", [("host", "x")], b"", "127.0.0.1")
    return asyncio.run(group.answer(request))


@pytest.mark.parametrize("response", [
    "a string", [1], {"body": "no status"}, {"statusCode": True}, {"statusCode": 99},
    {"statusCode": 200, "body": 5}, {"statusCode": 200, "headers": ["x"]},
    {"statusCode": 200, "headers": {"x": {"nested": 1}}},
    {"statusCode": 200, "headers": {"x": "a\r\nInjected: 1"}},
    {"statusCode": 200, "isBase64Encoded": True, "body": "not base64!"},
    b"not json",
])
def test_malformed_is_502(response: Any) -> None:
    assert _answer(response).status == 502


def test_function_error_is_502() -> None:
    assert _answer({"errorMessage": "x"}, error="Unhandled").status == 502


def test_status_description_and_headers() -> None:
    answer = _answer({"statusCode": 404, "statusDescription": "404 Gone Fishing",
                      "headers": {"X-A": "1", "Connection": "keep-alive"}})
    assert (answer.status, answer.reason) == (404, "Gone Fishing")
    assert answer.headers == [("X-A", "1")]
    assert _answer({"statusCode": 200}).reason == "OK"
    assert _answer({"statusCode": 200, "statusDescription": "Fine"}).reason == "Fine"
    assert _answer({"statusCode": 299}).reason == ""


def test_multi_value_mode_uses_multi_value_headers_only() -> None:
    answer = _answer({"statusCode": 200, "headers": {"X-Single": "ignored"},
                      "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"]}}, multi=True)
    assert answer.headers == [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    assert _answer({"statusCode": 200, "multiValueHeaders": {"X": "not a list"}},
                   multi=True).status == 502
