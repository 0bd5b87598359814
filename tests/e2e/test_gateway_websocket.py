"""WebSocket APIs end to end: boto3's apigatewayv2 builds the API, real ``websockets`` clients
connect, boto3's apigatewaymanagementapi (in the test and inside a Kiln function) pushes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import socket
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import KilnServer, create_python_function, expect_error, start_server

# The chat function calls back into Kiln's @connections over loopback: on the default (isolated)
# backend that takes the network opt-in, as a deployment would.
EGRESS = {"kiln:egress": "allow"}

CHAT = """
import base64, json
import boto3

def _mgmt(ctx):
    url = f"http://{ctx['domainName']}/_aws/execute-api/{ctx['apiId']}/{ctx['stage']}"
    return boto3.client("apigatewaymanagementapi", endpoint_url=url, region_name="us-east-1",
                        aws_access_key_id="kiln", aws_secret_access_key="kiln")

def handler(event, context):
    ctx = event["requestContext"]
    route = ctx["routeKey"]
    if route == "$connect":
        query = event.get("queryStringParameters") or {}
        if "deny" in query:
            return {"statusCode": int(query["deny"]), "body": "denied by $connect"}
        if "crash" in query:
            raise RuntimeError("connect crashed")
        seen = base64.b64encode(json.dumps(event).encode()).decode()
        headers = {"X-Connect-Event": seen}
        offered = {k.lower(): v for k, v in event["headers"].items()}.get("sec-websocket-protocol")
        if offered:
            headers["Sec-WebSocket-Protocol"] = offered.split(",")[0].strip()
        return {"statusCode": 200, "headers": headers}
    if route == "$disconnect":
        headers = {k.lower(): v for k, v in event["headers"].items()}
        if "x-watcher" in headers:
            note = {"bye": ctx["connectionId"], "code": ctx["disconnectStatusCode"],
                    "reason": ctx["disconnectReason"], "eventType": ctx["eventType"]}
            _mgmt(ctx).post_to_connection(ConnectionId=headers["x-watcher"],
                                          Data=json.dumps(note).encode())
        return {"statusCode": 200}
    if route == "broadcast":
        body = json.loads(event["body"])
        mgmt, gone = _mgmt(ctx), []
        for target in body["to"]:
            try:
                mgmt.post_to_connection(ConnectionId=target, Data=json.dumps(
                    {"from": ctx["connectionId"], "text": body["text"]}).encode())
            except mgmt.exceptions.GoneException:
                gone.append(target)
        return {"statusCode": 200, "body": json.dumps({"gone": gone})}
    if event["isBase64Encoded"]:
        return {"statusCode": 200, "body": event["body"], "isBase64Encoded": True}
    return {"statusCode": 200, "body": json.dumps({"route": route, "event": event})}
"""

SLOW = """
import time

def handler(event, context):
    time.sleep(1)
    return {"statusCode": 200, "body": "too late"}
"""


class Chat:
    def __init__(self, server: KilnServer, api_id: str) -> None:
        self.server = server
        self.api_id = api_id
        self.ws_url = f"ws://127.0.0.1:{server.port}/_aws/execute-api/{api_id}/prod"
        self.mgmt = server.client("apigatewaymanagementapi",
                                  path=f"/_aws/execute-api/{api_id}/prod")


def make_api(server: KilnServer, function: str | None, routes: dict[str, bool],
             timeout_ms: int = 29_000) -> str:
    """A deployed WebSocket API (stage ``prod``); ``routes`` maps route key to two-way."""
    gateway = server.client("apigatewayv2")
    api_id = gateway.create_api(Name="chat", ProtocolType="WEBSOCKET",
                                RouteSelectionExpression="$request.body.action")["ApiId"]
    target = {}
    if function is not None:
        arn = server.client().get_function(FunctionName=function)["Configuration"]["FunctionArn"]
        integration = gateway.create_integration(ApiId=api_id, IntegrationType="AWS_PROXY",
                                                 IntegrationUri=arn,
                                                 TimeoutInMillis=timeout_ms)
        target = {"Target": f"integrations/{integration['IntegrationId']}"}
    for key, two_way in routes.items():
        extra = {"RouteResponseSelectionExpression": "$default"} if two_way else {}
        gateway.create_route(ApiId=api_id, RouteKey=key, **target, **extra)
    deployment = gateway.create_deployment(ApiId=api_id)["DeploymentId"]
    gateway.create_stage(ApiId=api_id, StageName="prod", DeploymentId=deployment)
    return api_id


@pytest.fixture(scope="module")
def chat(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chat]:
    server = start_server(tmp_path_factory.mktemp("ws") / "data")
    function = create_python_function(server.client(), CHAT, Timeout=30, Tags=EGRESS)
    api_id = make_api(server, function, {"$connect": False, "$disconnect": False,
                                         "$default": True, "echo": True, "broadcast": True})
    yield Chat(server, api_id)
    server.stop()


async def _json(ws: ClientConnection) -> Any:
    return json.loads(await asyncio.wait_for(ws.recv(), 60))


async def _whoami(ws: ClientConnection) -> str:
    await ws.send(json.dumps({"action": "echo"}))
    reply = await _json(ws)
    return str(reply["event"]["requestContext"]["connectionId"])


async def test_chat_room(chat: Chat) -> None:
    async with connect(chat.ws_url) as watcher:
        watcher_id = await _whoami(watcher)
        members = [await connect(chat.ws_url, additional_headers={"X-Watcher": watcher_id})
                   for _ in range(3)]
        ids = [await _whoami(ws) for ws in members]
        assert len(set(ids)) == 3
        # A member broadcasts through a Kiln function that calls @connections with boto3.
        await members[0].send(json.dumps({"action": "broadcast", "to": ids, "text": "hi all"}))
        for ws in members:
            assert await _json(ws) == {"from": ids[0], "text": "hi all"}
        assert await _json(members[0]) == {"gone": []}
        # The test pushes too, with boto3 from outside.
        for target in ids:
            chat.mgmt.post_to_connection(ConnectionId=target, Data=b"from outside")
        assert [await ws.recv() for ws in members] == ["from outside"] * 3
        # A member leaves: $disconnect runs (and tells the watcher); broadcasts report it gone.
        await members[2].close(reason="gotta go")
        assert await _json(watcher) == {"bye": ids[2], "code": 1000, "reason": "gotta go",
                                        "eventType": "DISCONNECT"}
        await members[1].send(json.dumps({"action": "broadcast", "to": ids, "text": "still?"}))
        assert await _json(members[0]) == {"from": ids[1], "text": "still?"}
        assert await _json(members[1]) == {"from": ids[1], "text": "still?"}
        assert await _json(members[1]) == {"gone": [ids[2]]}
        # A server-side DeleteConnection closes the client and runs $disconnect.
        chat.mgmt.delete_connection(ConnectionId=ids[0])
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(members[0].recv(), 60)
        assert members[0].close_code == 1000
        assert await _json(watcher) == {"bye": ids[0], "code": 1000,
                                        "reason": "Connection Closed Normally",
                                        "eventType": "DISCONNECT"}
        await members[1].close()


async def test_connect_event_and_message_event(chat: Chat) -> None:
    async with connect(f"{chat.ws_url}?room=a&room=b", additional_headers={"X-Custom": "v"},
                       user_agent_header="chat-test/1.0") as ws:
        seen = json.loads(base64.b64decode(ws.response.headers["X-Connect-Event"]))
        context = seen["requestContext"]
        assert context["routeKey"] == "$connect" and context["eventType"] == "CONNECT"
        assert context["apiId"] == chat.api_id and context["stage"] == "prod"
        assert context["identity"] == {"sourceIp": "127.0.0.1", "userAgent": "chat-test/1.0"}
        assert seen["queryStringParameters"] == {"room": "b"}
        assert seen["multiValueQueryStringParameters"] == {"room": ["a", "b"]}
        # uvicorn's HTTP layer hands the handshake over with lower-case names.
        assert seen["headers"]["x-custom"] == "v"
        assert seen["multiValueHeaders"]["x-custom"] == ["v"]
        assert seen["isBase64Encoded"] is False
        await ws.send(json.dumps({"action": "echo", "n": 1}))
        reply = await _json(ws)
        event, message = reply["event"], reply["event"]["requestContext"]
        assert reply["route"] == "echo"
        assert event["body"] == json.dumps({"action": "echo", "n": 1})
        assert event["isBase64Encoded"] is False
        assert message["eventType"] == "MESSAGE" and message["messageDirection"] == "IN"
        assert message["connectionId"] == context["connectionId"]
        assert message["connectedAt"] == context["connectedAt"]
        assert message["messageId"] and message["requestId"] and message["extendedRequestId"]
        assert re.fullmatch(r"\d\d/[A-Z][a-z]{2}/\d{4}:\d\d:\d\d:\d\d \+0000",
                            message["requestTime"])
        assert message["requestTimeEpoch"] >= message["connectedAt"]
        assert message["domainName"] == f"127.0.0.1:{chat.server.port}"
        info = chat.mgmt.get_connection(ConnectionId=message["connectionId"])
        assert isinstance(info["ConnectedAt"], datetime)
        assert isinstance(info["LastActiveAt"], datetime)
        assert info["Identity"] == {"SourceIp": "127.0.0.1", "UserAgent": "chat-test/1.0"}


async def test_host_addressing(chat: Chat) -> None:
    domain = f"{chat.api_id}.execute-api.localhost:{chat.server.port}"
    async with connect(f"ws://{domain}/prod", host="127.0.0.1", port=chat.server.port) as ws:
        await ws.send(json.dumps({"action": "echo"}))
        context = (await _json(ws))["event"]["requestContext"]
        assert (context["domainName"], context["stage"]) == (domain, "prod")
        info = chat.mgmt.get_connection(ConnectionId=context["connectionId"])
        assert info["Identity"]["SourceIp"] == "127.0.0.1"


async def test_subprotocol_chosen_by_connect(chat: Chat) -> None:
    async with connect(chat.ws_url, subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.subprotocol == "chat.v2"


async def test_integration_timeouts(chat: Chat) -> None:
    slow = create_python_function(chat.server.client(), SLOW, Timeout=10)
    connect_api = make_api(chat.server, slow, {"$connect": False}, timeout_ms=50)
    with pytest.raises(InvalidStatus) as timed_out:
        await connect(f"ws://127.0.0.1:{chat.server.port}/_aws/execute-api/{connect_api}/prod")
    assert timed_out.value.response.status_code == 504
    message_api = make_api(chat.server, slow, {"$default": True}, timeout_ms=50)
    async with connect(f"ws://127.0.0.1:{chat.server.port}/_aws/execute-api/{message_api}/prod"
                       ) as ws:
        await ws.send("hello")
        assert (await _json(ws))["message"] == "Endpoint request timed out"


async def test_route_selection_and_binary_frames(chat: Chat) -> None:
    async with connect(chat.ws_url) as ws:
        for text, route in ((json.dumps({"action": "echo"}), "echo"),
                            (json.dumps({"action": "nosuch"}), "$default"),
                            (json.dumps({"action": "$connect"}), "$default"),
                            (json.dumps(["not", "an", "object"]), "$default"),
                            ("plain text", "$default")):
            await ws.send(text)
            assert (await _json(ws))["route"] == route, text
        payload = bytes(range(256)) * 4
        await ws.send(payload)
        assert await asyncio.wait_for(ws.recv(), 60) == payload


async def test_denied_and_failing_connect(chat: Chat) -> None:
    with pytest.raises(InvalidStatus) as denied:
        await connect(f"{chat.ws_url}?deny=401")
    assert denied.value.response.status_code == 401
    assert denied.value.response.body == b"denied by $connect"
    with pytest.raises(InvalidStatus) as crashed:
        await connect(f"{chat.ws_url}?crash=1")
    assert crashed.value.response.status_code == 500
    with pytest.raises(InvalidStatus) as unknown:
        await connect(f"ws://127.0.0.1:{chat.server.port}/_aws/execute-api/nosuchapi/prod")
    assert unknown.value.response.status_code == 403


async def test_message_limits(chat: Chat) -> None:
    async with connect(chat.ws_url, max_size=None) as ws:
        # 100 KB in 32 KB frames is fine: it reaches the function and comes back.
        fragments = ["x" * 25_000] * 4
        await ws.send(fragments)
        assert (await _json(ws))["event"]["body"] == "".join(fragments)
    async with connect(chat.ws_url) as ws:
        await ws.send(["y" * 32_768] * 4 + ["y"])  # 128 KB + 1 in legal frames
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 60)
        assert ws.close_code == 1009
    async with connect(chat.ws_url) as ws:
        await ws.send("z" * (32 * 1024 + 1))  # one frame over 32 KB
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), 60)
        assert ws.close_code == 1009


async def test_connections_api_errors(chat: Chat) -> None:
    mgmt = chat.mgmt
    async with connect(chat.ws_url) as ws:
        connection_id = await _whoami(ws)
        expect_error(mgmt, "PayloadTooLargeException", 413, mgmt.post_to_connection,
                     ConnectionId=connection_id, Data=b"x" * (128 * 1024 + 1))
        mgmt.post_to_connection(ConnectionId=connection_id, Data=b"x" * (128 * 1024))
        assert len(await asyncio.wait_for(ws.recv(), 60)) == 128 * 1024
    for call in (mgmt.post_to_connection, mgmt.get_connection, mgmt.delete_connection):
        extra = {"Data": b"late"} if call == mgmt.post_to_connection else {}
        expect_error(mgmt, "GoneException", 410, call, ConnectionId=connection_id, **extra)
    expect_error(mgmt, "GoneException", 410, mgmt.get_connection, ConnectionId="Zm9vYmFyYmF6=")
    other = chat.server.client("apigatewaymanagementapi",
                               path=f"/_aws/execute-api/{chat.api_id}/nosuchstage")
    expect_error(other, "ForbiddenException", 403, other.get_connection,
                 ConnectionId=connection_id)


async def test_client_not_reading_is_limit_exceeded(chat: Chat) -> None:
    mgmt = chat.mgmt
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)  # no autotuning to 32 MB
    sock.connect(("127.0.0.1", chat.server.port))
    async with connect(chat.ws_url, sock=sock, max_queue=1, max_size=None,
                       close_timeout=0.1) as ws:  # it cannot read up to the close frame
        connection_id = await _whoami(ws)
        chunk = b"x" * (128 * 1024)
        # The client reads nothing more: its queue, then the socket buffers fill up.
        with pytest.raises(mgmt.exceptions.LimitExceededException) as caught:
            for _ in range(2000):
                mgmt.post_to_connection(ConnectionId=connection_id, Data=chunk)
        assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
        assert mgmt.get_connection(ConnectionId=connection_id)["Identity"]["SourceIp"]


async def test_no_default_route_answers_forbidden(chat: Chat) -> None:
    api_id = make_api(chat.server, None, {"known": False})
    async with connect(f"ws://127.0.0.1:{chat.server.port}/_aws/execute-api/{api_id}/prod") as ws:
        await ws.send(json.dumps({"action": "other"}))
        reply = await _json(ws)
        assert reply["message"] == "Forbidden" and reply["connectionId"] and reply["requestId"]
        await ws.send(json.dumps({"action": "known"}))  # a route with no integration
        assert (await _json(ws))["message"] == "Internal server error"


async def test_idle_timeout_and_maximum_duration(tmp_path: Path) -> None:
    server = start_server(tmp_path / "data", KILN_WEBSOCKET_IDLE_SECONDS="1",
                          KILN_WEBSOCKET_MAX_SECONDS="3")
    try:
        api_id = make_api(server, None, {"$default": False})
        url = f"ws://127.0.0.1:{server.port}/_aws/execute-api/{api_id}/prod"
        async with connect(url) as idle:
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(idle.recv(), 30)
            assert idle.close_code == 1001
        async with connect(url) as busy:
            closed = asyncio.ensure_future(busy.wait_closed())
            with contextlib.suppress(ConnectionClosed):
                while not closed.done():  # never idle for a whole second
                    await busy.send("ping")
                    await asyncio.wait([closed], timeout=0.3)
            await closed
            assert busy.close_code == 1001
    finally:
        server.stop()
