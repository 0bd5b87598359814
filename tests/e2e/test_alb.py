"""ALB-style targets (``kiln serve --alb-target``) driven with httpx against a started Kiln."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.conftest import KilnServer, create_python_function, free_port, start_server

ECHO = """
import json

def handler(event, context):
    if event["path"] == "/raise":
        raise RuntimeError("boom")
    if "multiValueHeaders" in event:
        agent = event["multiValueHeaders"].get("user-agent", [""])[-1]
        if agent == "ELB-HealthChecker/2.0":
            healthy = (event["multiValueQueryStringParameters"] == {} and event["body"] == ""
                       and event["multiValueHeaders"] == {"user-agent": [agent]})
            return {"statusCode": 200 if healthy else 500}
        return {"statusCode": 200, "statusDescription": "200 OK",
                "multiValueHeaders": {"Set-Cookie": ["a=1", "b=2"],
                                      "Content-Type": ["application/json"]},
                "body": json.dumps(event)}
    return {"statusCode": 201, "statusDescription": "201 Made It",
            "headers": {"Content-Type": "application/json", "X-Echo": "yes",
                        "Transfer-Encoding": "chunked"},
            "body": json.dumps(event)}
"""

MALFORMED = """
def handler(event, context):
    if event["path"] == "/binary":
        return {"statusCode": 200, "isBase64Encoded": True, "body": "AAEC/w==",
                "headers": {"content-type": "application/octet-stream"}}
    if event["path"] == "/string-status":
        return {"statusCode": "404", "body": "nope"}
    if event["path"] == "/bad-body":
        return {"statusCode": 200, "body": {"not": "a string"}}
    return "just a string"
"""

TARGET_GROUP = re.compile(
    r"^arn:aws:elasticloadbalancing:us-east-1:000000000000:targetgroup/kiln-\d+/[0-9a-f]{16}$")


@pytest.fixture(scope="module")
def alb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KilnServer, dict[str, str]]]:
    ports = {"single": free_port(), "multi": free_port(), "bad": free_port()}
    targets = (f"{ports['single']}=alb-echo {ports['multi']}=alb-echo,multi,health=/ping "
               f"{ports['bad']}=alb-bad,health=/healthz")
    server = start_server(tmp_path_factory.mktemp("alb") / "data", KILN_ALB_TARGETS=targets)
    client = server.client()
    create_python_function(client, ECHO, name="alb-echo")
    create_python_function(client, MALFORMED, name="alb-bad")
    yield server, {mode: f"http://127.0.0.1:{port}" for mode, port in ports.items()}
    server.stop()


def _event(response: httpx.Response) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(response.text)
    return event


def test_single_value_event_and_response(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    response = httpx.get(f"{urls['single']}/a/b%20c?x=1&x=2&y=%41&flag",
                         headers=[("X-Dup", "one"), ("X-Dup", "two"),
                                  ("X-Forwarded-For", "10.0.0.9")], timeout=60)
    assert response.status_code == 201
    assert response.reason_phrase == "Made It"
    assert response.headers["x-echo"] == "yes"
    assert "transfer-encoding" not in response.headers  # hop-by-hop: ALB drops it
    assert response.headers["content-length"] == str(len(response.content))
    event = _event(response)
    assert TARGET_GROUP.match(event["requestContext"]["elb"]["targetGroupArn"])
    assert event["httpMethod"] == "GET"
    assert event["path"] == "/a/b%20c"
    # ALB does not URL-decode query parameters; the last value of a repeated key wins.
    assert event["queryStringParameters"] == {"x": "2", "y": "%41", "flag": ""}
    headers = event["headers"]
    assert headers["x-dup"] == "two"
    assert headers["x-forwarded-for"] == "10.0.0.9, 127.0.0.1"
    assert headers["x-forwarded-port"] == urls["single"].rsplit(":", 1)[1]
    assert headers["x-forwarded-proto"] == "http"
    assert re.match(r"^Root=1-[0-9a-f]{8}-[0-9a-f]{24}$", headers["x-amzn-trace-id"])
    assert all(name == name.lower() for name in headers)
    assert "multiValueHeaders" not in event and "multiValueQueryStringParameters" not in event
    assert event["body"] == "" and event["isBase64Encoded"] is False


def test_bodies_text_and_binary(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    text = httpx.post(f"{urls['single']}/t", json={"k": "é"}, timeout=60)
    assert _event(text)["isBase64Encoded"] is False
    assert json.loads(_event(text)["body"]) == {"k": "é"}
    raw = bytes(range(256))
    binary = httpx.put(f"{urls['single']}/b", content=raw,
                       headers={"content-type": "application/octet-stream"}, timeout=60)
    event = _event(binary)
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw
    assert event["httpMethod"] == "PUT"


def test_multi_value_event_and_response(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    response = httpx.get(f"{urls['multi']}/m?x=1&x=2", headers=[("X-Dup", "one"),
                                                                 ("X-Dup", "two")], timeout=60)
    assert response.status_code == 200 and response.reason_phrase == "OK"
    assert response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    event = _event(response)
    assert event["multiValueQueryStringParameters"] == {"x": ["1", "2"]}
    assert event["multiValueHeaders"]["x-dup"] == ["one", "two"]
    assert "headers" not in event and "queryStringParameters" not in event


def test_health_checks(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    healthy = httpx.get(f"{urls['multi']}/ping", timeout=60)
    assert (healthy.status_code, healthy.json()) == (200, {"state": "healthy"})
    unhealthy = httpx.get(f"{urls['bad']}/healthz", timeout=60)
    assert unhealthy.status_code == 503
    assert unhealthy.json() == {"state": "unhealthy", "reason": "Target.FailedHealthChecks"}
    # Without health= the path is an ordinary request to the function.
    assert _event(httpx.get(f"{urls['single']}/ping", timeout=60))["path"] == "/ping"


def test_malformed_responses_and_errors_are_502(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    for url in (f"{urls['bad']}/x", f"{urls['bad']}/bad-body", f"{urls['single']}/raise"):
        response = httpx.get(url, timeout=60)
        assert response.status_code == 502, url
        assert "502 Bad Gateway" in response.text
    binary = httpx.get(f"{urls['bad']}/binary", timeout=60)
    assert binary.status_code == 200 and binary.content == b"\x00\x01\x02\xff"
    assert httpx.get(f"{urls['bad']}/string-status", timeout=60).status_code == 404


def test_limits(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    too_big = httpx.post(f"{urls['single']}/big", content=b"x" * (1024 * 1024 + 1), timeout=60)
    assert too_big.status_code == 413
    chunked = httpx.post(f"{urls['single']}/big", timeout=60,
                         content=iter([b"x" * 512 * 1024, b"x" * 512 * 1024, b"x"]))
    assert chunked.status_code == 413
    # The listener keeps serving, on the same client, after refusals; HEAD has no body.
    with httpx.Client(timeout=60) as client:
        head = client.head(f"{urls['single']}/a")
        assert head.status_code == 201 and head.content == b""
        assert int(head.headers["content-length"]) > 0
        assert client.get(f"{urls['single']}/b").status_code == 201


async def test_websocket_upgrades_are_refused(alb: tuple[KilnServer, dict[str, str]]) -> None:
    _server, urls = alb
    with pytest.raises(InvalidStatus) as refused:
        await connect(urls["single"].replace("http://", "ws://") + "/chat")
    assert refused.value.response.status_code == 400


def test_bad_target_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="alb target"):
        start_server(tmp_path / "data", KILN_ALB_TARGETS="notaport=fn")
