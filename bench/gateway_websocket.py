"""WebSocket messages/s pushed through ``@connections`` to connected clients, as a ratio to a
baseline measured in the same run.

    python bench/gateway_websocket.py [--clients 100] [--messages 20000] [--pushers 16]

Kiln: a WebSocket API whose ``$connect`` function returns the connection id in a header;
``--clients`` real ``websockets`` clients connect, then ``--pushers`` keep-alive HTTP clients
POST ``/@connections/{id}`` round-robin over them until every client has received its share.
Baseline: a bare ASGI app (``push_app`` below) doing the same job, POST ``/push/{id}`` ->
``websocket.send``, served by the same uvicorn + uvloop + httptools + WebSocket stack: the floor
for relaying a message from an HTTP request to a socket.  Rounds alternate Kiln and baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from websockets.asyncio.client import ClientConnection, connect

from bench._http import Connection
from tests.conftest import create_python_function, free_port, start_server, wait_for
from tests.e2e.test_gateway_websocket import make_api

ROUNDS = 5
CONNECT = """
def handler(event, context):
    return {"statusCode": 200,
            "headers": {"X-Connection-Id": event["requestContext"]["connectionId"]}}
"""
_sockets: dict[str, Any] = {}


async def push_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The baseline: a WebSocket registry and an HTTP push endpoint, nothing else."""
    if scope["type"] == "websocket":
        await receive()
        connection_id = os.urandom(8).hex()
        await send({"type": "websocket.accept",
                    "headers": [(b"x-connection-id", connection_id.encode())]})
        _sockets[connection_id] = send
        try:
            while (await receive())["type"] != "websocket.disconnect":
                pass
        finally:
            del _sockets[connection_id]
    elif scope["type"] == "http":
        body, more = b"", True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        await _sockets[scope["path"].rsplit("/", 1)[1]]({"type": "websocket.send",
                                                         "text": body.decode()})
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", b"0")]})
        await send({"type": "http.response.body", "body": b""})


async def measure(port: int, ws_url: str, push_prefix: str, clients: int, messages: int,
                  pushers: int) -> float:
    """Messages/s delivered: from the first push until every client has its share."""
    sockets: list[ClientConnection] = [await connect(ws_url) for _ in range(clients)]
    ids = [ws.response.headers["X-Connection-Id"] for ws in sockets]
    share = messages // clients
    payload = b'{"message":"' + b"x" * 48 + b'"}'
    work = iter([connection_id for _ in range(share) for connection_id in ids])

    async def push() -> None:
        http = await Connection.open(port)
        try:
            for connection_id in work:
                status, _ = await http.post(f"{push_prefix}/{connection_id}", payload)
                assert status == 200, status
        finally:
            http.close()

    async def drain(ws: ClientConnection) -> None:
        for _ in range(share):
            await ws.recv()

    started = time.perf_counter()
    await asyncio.gather(*(push() for _ in range(pushers)), *(drain(ws) for ws in sockets))
    elapsed = time.perf_counter() - started
    await asyncio.gather(*(ws.close() for ws in sockets))
    return share * clients / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--pushers", type=int, default=16)
    args = parser.parse_args()
    await run(args.clients, args.messages, args.pushers)


async def run(clients: int = 100, messages: int = 20_000, pushers: int = 16) -> None:
    """Measure and print (``bench/gateway.py`` runs this too)."""
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        baseline_port = free_port()
        baseline = start_baseline(baseline_port)
        try:
            function = create_python_function(server.client(), CONNECT)
            api_id = make_api(server, function, {"$connect": False})
            prefix = f"/_aws/execute-api/{api_id}/prod"
            kiln_rates: list[float] = []
            base_rates: list[float] = []
            for _ in range(ROUNDS):
                kiln_rates.append(await measure(
                    server.port, f"ws://127.0.0.1:{server.port}{prefix}",
                    f"{prefix}/@connections", clients, messages, pushers))
                base_rates.append(await measure(
                    baseline_port, f"ws://127.0.0.1:{baseline_port}/", "/push",
                    clients, messages, pushers))
        finally:
            baseline.terminate()
            baseline.wait()
            server.stop()
    # Each round's pair ran back to back, so the median of per-round ratios is the figure
    # least moved by load drifting during the run.
    ratios = [k / b for k, b in zip(kiln_rates, base_rates, strict=True)]
    print(f"WebSocket pushes to {clients} clients ({pushers} pushers, "
          f"{messages} messages, median of {ROUNDS} rounds)")
    print(f"{'kiln @connections':<26} {statistics.median(kiln_rates):>9.0f} msg/s")
    print(f"{'baseline (bare ASGI push)':<26} {statistics.median(base_rates):>9.0f} msg/s")
    print(f"{'ratio kiln/baseline':<26} {statistics.median(ratios):>9.2f}x  "
          f"(per round {min(ratios):.2f}..{max(ratios):.2f})")


def start_baseline(port: int) -> subprocess.Popen[bytes]:
    """``push_app`` under uvicorn with Kiln's stack (its WebSocket protocol's base class, and
    like it without permessage-deflate)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "bench.gateway_websocket:push_app", "--port",
         str(port), "--loop", "uvloop", "--http", "httptools", "--ws", "websockets-sansio",
         "--ws-per-message-deflate", "false",
         "--log-level", "warning", "--no-access-log"], cwd=Path(__file__).resolve().parent.parent)

    def listening() -> bool:
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    if not wait_for(listening):
        process.kill()
        raise RuntimeError("baseline server did not start")
    return process


if __name__ == "__main__":
    asyncio.run(main())
