"""WebSocket route selection and integration-answer mapping (no server)."""

from __future__ import annotations

import json

import pytest

from kiln.gateway.types import Route, Stage
from kiln.gateway.websocket import _connect_answer, _evaluate, _Outcome, _reply, _select


def _stage(*keys: str) -> Stage:
    return Stage("prod", {}, tuple(Route(f"r{i}", key, None) for i, key in enumerate(keys)),
                 True)


@pytest.mark.parametrize(("expression", "body", "expected"), [
    ("$request.body.action", {"action": "join"}, "join"),
    ("$request.body.action", {}, ""),
    ("$request.body.a.b", {"a": {"b": "deep"}}, "deep"),
    ("$request.body.list[1]", {"list": ["x", "y"]}, "y"),
    ("$request.body.list[5]", {"list": ["x"]}, ""),
    ("$request.body.n", {"n": 3}, "3"),
    ("$request.body.flag", {"flag": True}, "true"),
    ("$request.body.obj", {"obj": {"k": [1, 2]}}, '{"k":[1,2]}'),
    ("${request.body.service}/${request.body.action}", {"service": "chat", "action": "join"},
     "chat/join"),
    ("${request.body.service}/${request.body.action}", {"action": "join"}, "/join"),
    ("$request.body.action", ["not", "an", "object"], ""),
    ("fixed", {"action": "x"}, "fixed"),
])
def test_selection_expression(expression: str, body: object, expected: str) -> None:
    assert _evaluate(expression, body) == expected


def test_select_falls_back_to_default_and_never_to_predefined_routes() -> None:
    stage = _stage("$connect", "$default", "join")
    expression = "$request.body.action"
    assert _select(expression, stage, json.dumps({"action": "join"})).route_key == "join"
    assert _select(expression, stage, json.dumps({"action": "leave"})).route_key == "$default"
    assert _select(expression, stage, json.dumps({"action": "$connect"})).route_key == \
        "$default"
    assert _select(expression, stage, "not json").route_key == "$default"
    assert _select(expression, stage, None).route_key == "$default"  # binary frame
    assert _select(expression, _stage("join"), json.dumps({"action": "x"})) is None


@pytest.mark.parametrize(("value", "status", "body"), [
    (None, 200, b""),                                   # a bare return accepts
    ({"statusCode": 204}, 204, b""),
    ({"statusCode": 403, "body": "no"}, 403, b"no"),
    ({"statusCode": "200"}, 502, b'{"message":"Internal server error"}'),
    ({"statusCode": 200, "headers": ["x"]}, 502, b'{"message":"Internal server error"}'),
    ({"statusCode": 200, "body": {"x": 1}}, 502, b'{"message":"Internal server error"}'),
])
def test_connect_answers(value: object, status: int, body: bytes) -> None:
    assert _connect_answer(_Outcome(value, json.dumps(value).encode()))[:2] == (status, body)


def test_connect_failures_and_headers() -> None:
    assert _connect_answer(_Outcome(failure=500))[0] == 500
    assert _connect_answer(_Outcome(failure=504))[0] == 504
    answer = _connect_answer(_Outcome({"statusCode": 200, "headers": {"A": 1}}))
    assert answer[2] == {"A": "1"}


def test_two_way_replies() -> None:
    assert _reply(_Outcome({"statusCode": 200, "body": "hi"})) == b"hi"
    assert _reply(_Outcome({"body": "AAE=", "isBase64Encoded": True})) == b"\x00\x01"
    assert _reply(_Outcome({"body": "!!", "isBase64Encoded": True})) is None
    assert _reply(_Outcome({"statusCode": 200})) is None
    assert _reply(_Outcome("text", b'"text"')) == b'"text"'
