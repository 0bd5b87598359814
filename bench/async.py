"""Async (Event) invocation throughput and latency against sync invokes in the same run.

    python bench/async.py [--events 3000] [--clients 8]

- events drained per second: ``clients`` connections send Event invokes as fast as they are
  accepted; the rate is events over the time from the first POST to the last handler start.
  Baseline: the same clients doing sync invokes of the same function.  Target (issue 4):
  >= 0.8x.
- queue-to-start latency p50/p99, with one client sending one event after another (a queue
  that keeps up; under the load above, latency is just backlog over drain rate): from an Event
  POST being sent to its handler starting, by the handler's own clock in its log (an upper
  bound: it includes the POST's trip).  Baseline: a sync invoke's request to handler start.

Rounds of both kinds alternate and each async round is compared with the sync round next to
it, so that both see the same (noisy, shared) machine; the figure is the median of those ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import Connection
from bench.invoke import create_function, percentile
from tests.conftest import start_server

ROUNDS = 10
NAME = "drain"
HANDLER = """import time

def handler(event, context):
    print("STARTED", event["r"], event["i"], repr(time.time()))
    return event
"""
INVOKE = f"/2015-03-31/functions/{NAME}/invocations"
EVENT = {"X-Amz-Invocation-Type": "Event"}


async def log_offset(port: int) -> int:
    return (await read_log(port, 0))[1]


async def read_log(port: int, offset: int) -> tuple[str, int]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET /kiln/v1/functions/{NAME}/logs?offset={offset} HTTP/1.1\r\n"
                 "Host: bench\r\nConnection: close\r\n\r\n".encode())
    raw = await reader.read()
    writer.close()
    body = json.loads(raw.split(b"\r\n\r\n", 1)[1])
    return str(body["text"]), int(body["nextOffset"])


async def starts(port: int, offset: int, round_id: int, count: int) -> dict[int, float]:
    """Handler start times (its own clock) of round ``round_id``'s ``count`` events."""
    seen: dict[int, float] = {}
    text = ""
    deadline = time.monotonic() + 120
    while len(seen) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(seen)} of {count} events ran")
        await asyncio.sleep(0.05)
        chunk, offset = await read_log(port, offset)
        text += chunk
        lines, _, text = text.rpartition("\n")
        for line in lines.splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[0] == "STARTED" and int(parts[1]) == round_id:
                seen[int(parts[2])] = float(parts[3])
    return seen


async def run_round(port: int, round_id: int, clients: int, events: int,
                    asynchronous: bool) -> tuple[float, list[float]]:
    """(events per second, send-to-start latencies in ms) of one round."""
    offset = await log_offset(port)
    connections = [await Connection.open(port) for _ in range(clients)]
    sent: dict[int, float] = {}
    headers = EVENT if asynchronous else None
    expected = 202 if asynchronous else 200

    async def drive(client: int) -> None:
        conn = connections[client]
        for i in range(client, events, clients):
            payload = json.dumps({"r": round_id, "i": i}).encode()
            sent[i] = time.time()
            status, body = await conn.post(INVOKE, payload, headers)
            assert status == expected, (status, body)

    first = time.time()
    await asyncio.gather(*(drive(c) for c in range(clients)))
    for conn in connections:
        conn.close()
    started = await starts(port, offset, round_id, events)
    rate = events / (max(started.values()) - first)
    return rate, [(started[i] - sent[i]) * 1000 for i in range(events)]


def row(label: str, value: float, base: float, unit: str, target: str = "") -> str:
    return (f"{label:<30} {value:>9.2f} {unit:<4} sync {base:>9.2f} {unit:<4} "
            f"ratio {value / base:>5.2f}x {target}")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=8)
    args = parser.parse_args()
    per_round = args.events // ROUNDS
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data")
        try:
            await create_function(server.port, NAME, HANDLER)
            # Warm both paths' environments before measuring.
            await run_round(server.port, 0, args.clients, per_round, True)
            await run_round(server.port, 0, args.clients, per_round, False)
            rates: list[tuple[float, float]] = []
            sync_lat: list[float] = []
            async_lat: list[float] = []
            for n in range(1, ROUNDS + 1):
                sync_rate, _ = await run_round(server.port, 4 * n, args.clients, per_round,
                                               False)
                async_rate, _ = await run_round(server.port, 4 * n + 1, args.clients,
                                                per_round, True)
                rates.append((async_rate, sync_rate))
                sync_lat += (await run_round(server.port, 4 * n + 2, 1, 50, False))[1]
                async_lat += (await run_round(server.port, 4 * n + 3, 1, 50, True))[1]
        finally:
            server.stop()
    ratio = statistics.median(a / s for a, s in rates)
    print(f"{args.clients} clients, {ROUNDS} rounds of {per_round} events each way")
    print(f"{'events/s (async drained)':<30} {statistics.median(a for a, _ in rates):>9.0f} /s   "
          f"sync {statistics.median(s for _, s in rates):>9.0f} /s   "
          f"ratio {ratio:>5.2f}x (median of per-round ratios; target >= 0.8x)")
    print(row("queue-to-start p50, 1 client", statistics.median(async_lat),
              statistics.median(sync_lat), "ms"))
    print(row("queue-to-start p99, 1 client", percentile(async_lat, 0.99),
              percentile(sync_lat, 0.99), "ms"))


if __name__ == "__main__":
    asyncio.run(main())
