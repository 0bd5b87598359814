"""HTTP API and Function URL performance as a ratio to direct Invoke, measured in the same run.

    python bench/gateway.py [--requests 2000]

One started ``kiln serve``, one warm function.  Interleaved short rounds of: direct Invoke
(``POST /2015-03-31/functions/f/invocations``, the baseline), an HTTP API route (payload 2.0,
``POST /_aws/execute-api/{id}/echo``) and a Function URL; the same minimal keep-alive HTTP/1.1
client drives all three, so the ratio is the gateway's cost.  Latency p50/p99 and requests/s
with 1 and 8 concurrent clients.

Then WebSocket messages/s delivered through ``@connections`` to 100 connected clients, against
a bare ASGI push app on the same stack (``bench/gateway_websocket.py``, also runnable alone).

Target (issue 6): HTTP API latency <= 1.3x direct Invoke.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import gateway_websocket
from bench.invoke import percentile, row, run_load
from tests.conftest import create_python_function, start_server

ROUNDS = 10
# Invoked directly the event is the payload; through a gateway the payload is the event's body.
HANDLER = """
def handler(event, context):
    if "requestContext" in event:
        return {"statusCode": 200, "body": event["body"]}
    return event
"""


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    payload = b'{"hello": "world", "n": 12345}'
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            lam = server.client()
            name = create_python_function(lam, HANDLER, name="gwbench", MemorySize=1769)
            arn = lam.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
            gw = server.client("apigatewayv2")
            api_id = gw.create_api(Name="bench", ProtocolType="HTTP", Target=arn,
                                   RouteKey="POST /echo")["ApiId"]
            url = lam.create_function_url_config(FunctionName=name, AuthType="NONE")
            url_id = url["FunctionUrl"].split("//", 1)[1].split(".", 1)[0]
            targets = {"invoke": f"/2015-03-31/functions/{name}/invocations",
                       "http api": f"/_aws/execute-api/{api_id}/echo",
                       "function url": f"/_aws/lambda-url/{url_id}/"}
            print("baseline ('floor') = direct Invoke of the same function")
            for clients in (1, 8):
                latencies: dict[str, list[float]] = {k: [] for k in targets}
                rates: dict[str, list[float]] = {k: [] for k in targets}
                for _ in range(ROUNDS):
                    for label, path in targets.items():
                        lat, rps = await run_load(server.port, path, clients,
                                                  args.requests // ROUNDS, payload)
                        latencies[label] += lat
                        rates[label].append(rps)
                base = latencies["invoke"]
                base_rps = statistics.mean(rates["invoke"])
                for label in ("http api", "function url"):
                    lat = latencies[label]
                    target = "(target <= 1.3x)" if label == "http api" else ""
                    print(row(f"{label} p50, {clients} client(s)", statistics.median(lat),
                              statistics.median(base), "ms", target))
                    print(row(f"{label} p99, {clients} client(s)", percentile(lat, 0.99),
                              percentile(base, 0.99), "ms"))
                    rps = statistics.mean(rates[label])
                    print(row(f"{label} req/s, {clients} client(s)", rps, base_rps, "/s"))
        finally:
            server.stop()
    print()
    await gateway_websocket.run()


if __name__ == "__main__":
    asyncio.run(main())
