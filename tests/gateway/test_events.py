"""Proxy response mapping (1.0/2.0) and request body encoding."""

from __future__ import annotations

import base64
import json

import pytest

from kiln.gateway.events import HttpRequest, Malformed, is_text, response_v1, response_v2


def dumps(value: object) -> bytes:
    return json.dumps(value).encode()


def request(body: bytes, content_type: str | None) -> HttpRequest:
    headers = [("content-type", content_type)] if content_type else []
    return HttpRequest("POST", "", headers, body, "127.0.0.1", "HTTP/1.1")


def test_v2_inference_rule() -> None:
    assert response_v2(b'"Hello, world!"') == (
        200, [("content-type", "application/json")], b'"Hello, world!"')
    assert response_v2(b'{"a": 1}')[2] == b'{"a": 1}'
    assert response_v2(b"null")[0] == 200
    status, headers, body = response_v2(dumps({"statusCode": 404, "cookies": ["a=1"],
                                               "headers": {"x": 1, "y": True}}))
    assert (status, body) == (404, b"")
    assert headers == [("x", "1"), ("y", "true"), ("set-cookie", "a=1")]


def test_base64_bodies() -> None:
    raw = bytes(range(256))
    encoded = base64.b64encode(raw).decode()
    assert response_v2(dumps({"statusCode": 200, "isBase64Encoded": True,
                              "body": encoded}))[2] == raw
    assert response_v1(dumps({"statusCode": 200, "isBase64Encoded": True,
                              "body": encoded}))[2] == raw


@pytest.mark.parametrize("payload", [
    b"not json", {"statusCode": "abc"}, {"statusCode": 99}, {"statusCode": True},
    {"statusCode": 200, "body": 5}, {"statusCode": 200, "headers": []},
    {"statusCode": 200, "headers": {"x": {"nested": 1}}},
    {"statusCode": 200, "cookies": "a=1"},
    {"statusCode": 200, "isBase64Encoded": True, "body": "!!!"},
])
def test_malformed_v2(payload: object) -> None:
    with pytest.raises(Malformed):
        response_v2(payload if isinstance(payload, bytes) else dumps(payload))


@pytest.mark.parametrize("payload", [
    {"hello": "world"}, "text", [1], {"statusCode": 200, "multiValueHeaders": {"x": "1"}},
])
def test_malformed_v1(payload: object) -> None:
    with pytest.raises(Malformed):
        response_v1(dumps(payload))


def test_v1_multi_value_headers_win() -> None:
    status, headers, body = response_v1(dumps({
        "statusCode": "201", "headers": {"X-A": "a", "X-B": "old"},
        "multiValueHeaders": {"x-b": ["1", "2"]}, "body": "ok"}))
    assert (status, body) == (201, b"ok")
    assert headers == [("X-A", "a"), ("x-b", "1"), ("x-b", "2"),
                       ("content-type", "application/json")]


def test_body_encoding() -> None:
    assert request(b"", "text/plain").encoded_body() == (None, False)
    assert request(b"{}", "application/json; charset=utf-8").encoded_body() == ("{}", False)
    assert request(b"<a/>", "application/atom+xml").encoded_body() == ("<a/>", False)
    assert request(b"plain", None).encoded_body() == ("plain", False)
    assert request(b"\xff\xfe", None).encoded_body() == ("//4=", True)
    assert request(b"\xff", "text/plain").encoded_body() == ("/w==", True)
    assert request(b"abc", "image/png").encoded_body() == ("YWJj", True)
    assert not is_text("multipart/form-data; boundary=x")


def forwarded(headers: list[tuple[bytes, bytes]], port: int) -> HttpRequest:
    """A request from 127.0.0.1 as the gateway forwards it to the function on ``port``."""
    scope = {"method": "GET", "headers": headers, "client": ("127.0.0.1", 50000)}
    return HttpRequest.from_scope(scope, b"", port)


def test_forwarded_headers() -> None:
    plain = forwarded([], 8900)
    assert plain.headers[-3:] == [("x-forwarded-for", "127.0.0.1"),
                                  ("x-forwarded-port", "8900"), ("x-forwarded-proto", "http")]
    proxied = forwarded([(b"X-Forwarded-For", b"10.0.0.1"), (b"x-forwarded-proto", b"https")],
                        80)
    assert proxied.headers == [("x-forwarded-for", "10.0.0.1, 127.0.0.1"),
                               ("x-forwarded-port", "80"), ("x-forwarded-proto", "http")]


def test_default_content_types() -> None:
    assert response_v2(dumps({"statusCode": 200, "body": "hi"}))[1] == [
        ("content-type", "text/plain; charset=utf-8")]
    assert response_v1(dumps({"statusCode": 200, "body": "{}"}))[1] == [
        ("content-type", "application/json")]
    assert response_v2(dumps({"statusCode": 200, "headers": {"Content-Type": "text/html"},
                              "body": "<p/>"}))[1] == [("Content-Type", "text/html")]
    assert response_v1(dumps({"statusCode": 204}))[1] == []  # no body, no type
