"""The data plane over raw HTTP/1.1: the requests Kiln's protocol answers itself (Invoke, HTTP
APIs and Function URLs with a body of known length) and the ones it leaves to uvicorn's ASGI
cycle (chunked bodies, Expect: 100-continue, HEAD, oversized), answered alike."""

from __future__ import annotations

import json
import socket
from typing import Any

import pytest

from tests.conftest import KilnServer, create_python_function

ECHO = "def handler(event, context):\n    return event\n"
# Through a gateway: the request body back, and the method in a header.
GATEWAY = """
def handler(event, context):
    method = event["requestContext"]["http"]["method"]
    if event.get("body") == "fail":
        raise RuntimeError("asked to")
    return {"statusCode": 200, "body": event.get("body") or "",
            "headers": {"x-method": method,
                        "x-source-ip": event["requestContext"]["http"]["sourceIp"],
                        "x-forwarded-for": event["headers"]["x-forwarded-for"]}}
"""


def send(server: KilnServer, raw: bytes, responses: int = 1) -> list[tuple[int, dict[str, str],
                                                                              bytes]]:
    """Write ``raw`` on one connection and read ``responses`` answers."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as conn:
        conn.sendall(raw)
        buffer = b""
        answers = []
        while len(answers) < responses:
            while b"\r\n\r\n" not in buffer:
                chunk = conn.recv(65536)
                assert chunk, f"connection closed after {len(answers)} answers"
                buffer += chunk
            head, _, buffer = buffer.partition(b"\r\n\r\n")
            status_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {k.lower(): v.strip() for k, _, v in (line.partition(":")
                                                             for line in lines)}
            length = int(headers["content-length"])
            while len(buffer) < length:
                chunk = conn.recv(65536)
                assert chunk
                buffer += chunk
            answers.append((int(status_line.split()[1]), headers, buffer[:length]))
            buffer = buffer[length:]
        return answers


def post(path: str, body: bytes, *extra: str, method: str = "POST") -> bytes:
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}",
            *extra]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


@pytest.fixture(scope="module")
def echo(lambda_client: Any) -> str:
    return create_python_function(lambda_client, ECHO)


@pytest.fixture(scope="module")
def api(kiln_server: KilnServer, lambda_client: Any) -> str:
    """An HTTP API's path prefix: every route runs GATEWAY."""
    name = create_python_function(lambda_client, GATEWAY)
    arn = lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    gw = kiln_server.client("apigatewayv2")
    api_id = gw.create_api(Name="raw", ProtocolType="HTTP", Target=arn)["ApiId"]
    return f"/_aws/execute-api/{api_id}"


def test_pipelined_invokes_are_answered_in_order(kiln_server: KilnServer, echo: str) -> None:
    path = f"/2015-03-31/functions/{echo}/invocations"
    raw = b"".join(post(path, json.dumps({"n": n}).encode()) for n in range(3))
    answers = send(kiln_server, raw, responses=3)
    assert [json.loads(body) for _, _, body in answers] == [{"n": 0}, {"n": 1}, {"n": 2}]
    for status, headers, _ in answers:
        assert status == 200
        assert headers["x-amz-executed-version"] == "$LATEST"
        assert headers["content-type"] == "application/json"
        assert "date" in headers and "server" in headers  # uvicorn's defaults, as elsewhere


def test_invoke_then_another_operation_on_one_connection(kiln_server: KilnServer,
                                                         echo: str) -> None:
    raw = (post(f"/2015-03-31/functions/{echo}/invocations", b'{"a": 1}')
           + b"GET /2015-03-31/functions/" + echo.encode()
           + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
           + post(f"/2015-03-31/functions/{echo}/invocations", b'{"a": 2}'))
    (s1, _, b1), (s2, _, b2), (s3, _, b3) = send(kiln_server, raw, responses=3)
    assert (s1, json.loads(b1)) == (200, {"a": 1})
    assert s2 == 200 and json.loads(b2)["Configuration"]["FunctionName"] == echo
    assert (s3, json.loads(b3)) == (200, {"a": 2})


def test_errors_have_the_aws_shape(kiln_server: KilnServer, echo: str) -> None:
    [(status, headers, body)] = send(
        kiln_server, post("/2015-03-31/functions/no-such-function-http/invocations", b"{}"))
    assert status == 404 and headers["x-amzn-errortype"] == "ResourceNotFoundException"
    assert json.loads(body)["Type"] == "User"
    [(status, headers, body)] = send(
        kiln_server, post(f"/2015-03-31/functions/{echo}/invocations", b"{not json"))
    assert status == 400 and headers["x-amzn-errortype"] == "InvalidRequestContentException"


def test_event_payload_over_its_limit_is_413(kiln_server: KilnServer, echo: str) -> None:
    body = json.dumps({"x": "y" * 1_100_000}).encode()  # within the sync limit, over Event's
    [(status, headers, answer)] = send(kiln_server, post(
        f"/2015-03-31/functions/{echo}/invocations", body, "X-Amz-Invocation-Type: Event"))
    assert status == 413 and headers["x-amzn-errortype"] == "RequestEntityTooLargeException"
    assert f"{len(body)} byte payload is too large" in json.loads(answer)["message"]


def test_sync_payload_over_the_limit_is_413_unread(kiln_server: KilnServer, echo: str) -> None:
    head = (f"POST /2015-03-31/functions/{echo}/invocations HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Length: 7000000\r\n\r\n").encode()
    [(status, headers, _)] = send(kiln_server, head)  # the body is never sent
    assert status == 413 and headers["x-amzn-errortype"] == "RequestEntityTooLargeException"


def test_chunked_and_expect_continue_bodies(kiln_server: KilnServer, echo: str) -> None:
    path = f"/2015-03-31/functions/{echo}/invocations"
    chunked = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "4\r\n{\"a\"\r\n4\r\n: 3}\r\n0\r\n\r\n").encode()
    [(status, _, body)] = send(kiln_server, chunked)
    assert (status, json.loads(body)) == (200, {"a": 3})
    with socket.create_connection(("127.0.0.1", kiln_server.port), timeout=30) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 8\r\n"
                     "Expect: 100-continue\r\n\r\n".encode())
        assert conn.recv(4096).startswith(b"HTTP/1.1 100 Continue")
        conn.sendall(b'{"a": 4}')
        answer = b""
        while not answer.endswith(b'{"a": 4}'):
            chunk = conn.recv(4096)
            assert chunk
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 OK")


def test_connection_close_is_honoured(kiln_server: KilnServer, echo: str) -> None:
    with socket.create_connection(("127.0.0.1", kiln_server.port), timeout=30) as conn:
        conn.sendall(post(f"/2015-03-31/functions/{echo}/invocations", b"[1]",
                          "Connection: close"))
        data = b""
        while chunk := conn.recv(65536):  # the server closes after its answer
            data += chunk
    assert data.startswith(b"HTTP/1.1 200 OK") and b"connection: close\r\n" in data.lower()
    assert data.endswith(b"[1]")


def test_client_gone_mid_body_leaves_the_server_serving(kiln_server: KilnServer,
                                                        echo: str) -> None:
    with socket.create_connection(("127.0.0.1", kiln_server.port), timeout=30) as conn:
        conn.sendall(f"POST /2015-03-31/functions/{echo}/invocations HTTP/1.1\r\n"
                     "Host: 127.0.0.1\r\nContent-Length: 100\r\n\r\n{\"half\":".encode())
    [(status, _, body)] = send(kiln_server, post(
        f"/2015-03-31/functions/{echo}/invocations", b'{"after": true}'))
    assert (status, json.loads(body)) == (200, {"after": True})


def test_api_host_with_an_invoke_path_goes_to_the_gateway(kiln_server: KilnServer,
                                                          echo: str) -> None:
    raw = (f"POST /2015-03-31/functions/{echo}/invocations HTTP/1.1\r\n"
           "Host: nosuchapi.execute-api.localhost\r\nContent-Length: 2\r\n\r\n{}").encode()
    [(status, _, body)] = send(kiln_server, raw)
    assert status == 404 and json.loads(body) == {"message": "Not Found"}



def test_pipelined_gateway_and_invoke_requests(kiln_server: KilnServer, echo: str,
                                               api: str) -> None:
    raw = (post(f"{api}/a", b"one") + post(f"/2015-03-31/functions/{echo}/invocations", b"2")
           + post(f"{api}/b", b"", method="GET") + post(f"{api}/c", b"three", method="PUT"))
    answers = send(kiln_server, raw, responses=4)
    assert [(status, body) for status, _, body in answers] == [
        (200, b"one"), (200, b"2"), (200, b""), (200, b"three")]
    assert [headers.get("x-method") for _, headers, _ in answers] == [
        "POST", None, "GET", "PUT"]
    assert all(headers["apigw-requestid"] for _, headers, _ in answers[2:])


def test_gateway_errors_and_other_framings(kiln_server: KilnServer, api: str) -> None:
    [(status, _, body)] = send(kiln_server, post(f"{api}/x", b"fail"))
    assert (status, json.loads(body)) == (502, {"message": "Internal Server Error"})
    chunked = (f"POST {api}/x HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n"
               "3\r\nabc\r\n0\r\n\r\n").encode()
    [(status, _, body)] = send(kiln_server, chunked)
    assert (status, body) == (200, b"abc")
    with socket.create_connection(("127.0.0.1", kiln_server.port), timeout=30) as conn:
        conn.sendall(f"HEAD {api}/x HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = conn.recv(65536)
    assert head.startswith(b"HTTP/1.1 200 OK") and b"x-method: HEAD" in head
    assert head.endswith(b"\r\n\r\n")  # a HEAD answer has no body
    big = b"x" * (10 * 1024 * 1024 + 1)
    [(status, _, body)] = send(kiln_server, post(f"{api}/x", big))
    assert (status, json.loads(body)) == (413, {"message": "Request Entity Too Large"})


def test_forwarded_for_from_a_trusted_proxy_is_applied(kiln_server: KilnServer, api: str) -> None:
    """uvicorn's proxy-headers rule (127.0.0.1 is trusted) holds on the gateways' lean path."""
    [(status, headers, _)] = send(kiln_server, post(f"{api}/x", b"", "X-Forwarded-For: 10.1.2.3"))
    assert status == 200
    assert headers["x-source-ip"] == "10.1.2.3"
    [(status, headers, _)] = send(kiln_server, post(f"{api}/x", b""))
    assert (headers["x-source-ip"], headers["x-forwarded-for"]) == ("127.0.0.1", "127.0.0.1")
