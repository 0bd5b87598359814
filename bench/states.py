"""Step Functions engine throughput, as ratios to a plain Python loop doing the same JSON work.

    python bench/states.py [--n 2000] [--items 10000] [--repeat 3] [--rounds 5]

Prints state transitions per second for (1) an Express Pass/Choice loop, (2) an Express inline
Map over 10,000 items, (3) the same Pass/Choice loop as a durable Standard execution (SQLite
history, checkpoint per transition), each with the cost relative to the plain loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.states.definition import parse_definition
from kiln.states.engine import ExecutionInfo, Interpreter, Services
from kiln.states.history import History
from kiln.states.service import ExecutionService
from kiln.states.store import StatesStore
from kiln.states.types import SystemClock
from kiln.store import Database


class NoFunctions:
    async def invoke(self, function_arn: str, payload: bytes) -> tuple[bytes, str | None]:
        raise AssertionError("the benchmark calls no functions")


def loop_machine(n: int) -> dict[str, Any]:
    return {"StartAt": "Init", "States": {
        "Init": {"Type": "Pass", "Parameters": {"i": 0, "data.$": "$.data"}, "Next": "Check"},
        "Check": {"Type": "Choice", "Choices": [
            {"Variable": "$.i", "NumericLessThan": n, "Next": "Inc"}], "Default": "Done"},
        "Inc": {"Type": "Pass", "Parameters": {"i.$": "States.MathAdd($.i, 1)",
                                               "data.$": "$.data"},
                "ResultPath": "$", "Next": "Check"},
        "Done": {"Type": "Succeed", "OutputPath": "$.i"},
    }}


def loop_plain(n: int, data: Any) -> Any:
    value = {"i": 0, "data": data}
    while True:
        if isinstance(value["i"], int) and value["i"] < n:
            value = {"i": value["i"] + 1, "data": value["data"]}
            continue
        return value["i"]


MAP_MACHINE = {"StartAt": "M", "States": {"M": {
    "Type": "Map", "ItemsPath": "$.items",
    "ItemProcessor": {"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Parameters": {"v.$": "States.MathAdd($.v, 1)", "k.$": "$.k"},
        "End": True}}},
    "End": True}}}


def map_plain(items: list[Any]) -> list[Any]:
    return [{"v": item["v"] + 1, "k": item["k"]} for item in items]


def services() -> Services:
    return Services(NoFunctions(), SystemClock(), "us-east-1", "123456789012")


async def run_express(definition: dict[str, Any], input_value: Any, repeat: int) -> float:
    machine = parse_definition(json.dumps(definition), express=True)
    svc = services()
    start = time.perf_counter()
    for i in range(repeat):
        info = ExecutionInfo(f"arn:aws:states:us-east-1:123456789012:express:b:{i}", str(i),
                             "arn:aws:states:us-east-1:123456789012:stateMachine:b", "b",
                             "arn:aws:iam::123456789012:role/r", input_value, time.time(),
                             express=True)
        outcome = await Interpreter(svc, machine, info, History(svc.clock, keep=False)).execute()
        assert outcome.status == "SUCCEEDED", outcome
    return time.perf_counter() - start


async def run_standard(definition: dict[str, Any], input_value: Any, repeat: int,
                       directory: Path) -> float:
    db = Database(directory / "bench.db")
    store = StatesStore(db)
    service = ExecutionService(store, NoFunctions(), "us-east-1", "123456789012",
                               SystemClock())
    text = json.dumps(definition)
    machine_row = {"arn": "arn:aws:states:us-east-1:123456789012:stateMachine:b", "name": "b",
                   "type": "STANDARD", "definition": text,
                   "role_arn": "arn:aws:iam::123456789012:role/r", "created": time.time(),
                   "revision_id": "r", "logging": {}, "tracing": {}}
    store.insert_machine(machine_row)
    row = store.machine(machine_row["arn"])
    assert row is not None
    input_text = json.dumps(input_value)
    start = time.perf_counter()
    for i in range(repeat):
        arn = f"arn:aws:states:us-east-1:123456789012:execution:b:{i}"
        service.start_standard(row, arn, str(i), input_text)
        outcome = await service.running[arn].done
        assert outcome.status == "SUCCEEDED", outcome
    elapsed = time.perf_counter() - start
    events = db.query_one("SELECT COUNT(*) AS n FROM states_events")
    assert events is not None and events["n"] > 0
    db.close()
    return elapsed


def timed(fn: Any, repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        fn()
    return time.perf_counter() - start


def report(label: str, transitions: int, seconds: float, plain_seconds: float) -> float:
    rate = transitions / seconds
    print(f"{label:<40} {transitions:>8} transitions {seconds:8.3f}s {rate:>11,.0f}/s"
          f"   {seconds / plain_seconds:8.1f}x plain loop")
    return rate


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000, help="Pass/Choice loop iterations")
    parser.add_argument("--items", type=int, default=10000, help="Map items")
    parser.add_argument("--repeat", type=int, default=3, help="executions per measurement")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (best kept)")
    args = parser.parse_args()
    data = {"payload": {"name": "kiln", "tags": ["a", "b"], "size": 3}}
    loop_transitions = 2 * args.n + 3  # Init, (Check, Inc) * n, Check, Done
    items = [{"v": i, "k": f"key-{i}"} for i in range(args.items)]
    map_transitions = args.items + 1

    # Interleaved rounds, best of each: the machine's load moves between measurements, and
    # SQLite's fsyncs suffer most from it.
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for round_no in range(args.rounds):
            directory = Path(tmp) / str(round_no)
            directory.mkdir()
            times = {
                "plain_loop": timed(lambda: loop_plain(args.n, data), args.repeat),
                "plain_map": timed(lambda: map_plain(items), args.repeat),
                "express_loop": await run_express(loop_machine(args.n), {"data": data},
                                                  args.repeat),
                "express_map": await run_express(MAP_MACHINE, {"items": items}, args.repeat),
                "standard_loop": await run_standard(loop_machine(args.n), {"data": data},
                                                    args.repeat, directory),
            }
            for key, value in times.items():
                best[key] = min(value, best.get(key, value))
    plain_loop, plain_map = best["plain_loop"], best["plain_map"]
    express_loop, express_map = best["express_loop"], best["express_map"]
    standard_loop = best["standard_loop"]

    print(f"plain Python loop: {args.n} iterations {plain_loop / args.repeat * 1e3:.2f} ms, "
          f"{args.items}-item map {plain_map / args.repeat * 1e3:.2f} ms")
    express = report("Express Pass/Choice loop", loop_transitions * args.repeat, express_loop,
                     plain_loop)
    report(f"Express inline Map over {args.items} items", map_transitions * args.repeat,
           express_map, plain_map)
    standard = report("Standard Pass/Choice loop (durable)", loop_transitions * args.repeat,
                      standard_loop, plain_loop)
    print(f"Standard/Express slowdown: {express / standard:.2f}x (target <= 4x); "
          f"Express target >= 5,000 transitions/s")


if __name__ == "__main__":
    asyncio.run(main())
