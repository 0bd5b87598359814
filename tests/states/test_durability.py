"""Standard executions survive a restart: Wait deadlines, retries, callbacks, in-flight tasks."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from kiln.states.api import StatesApi
from kiln.states.types import SystemClock
from kiln.store import Database
from tests.states.helpers import ACCOUNT, REGION, START, FakeClock, FakeFunctions

ROLE = f"arn:aws:iam::{ACCOUNT}:role/r"
ROOT = Path(__file__).resolve().parents[2]


class Node:
    """One server lifetime over a database file."""

    def __init__(self, path: Path, clock: Any, functions: FakeFunctions) -> None:
        self.db = Database(path)
        self.api = StatesApi(self.db, functions, REGION, ACCOUNT, clock)

    async def crash(self) -> None:
        await self.api.stop()
        self.db.close()


async def _create_and_start(api: StatesApi, definition: dict[str, Any],
                            input_value: Any = None) -> str:
    sm = await api.call("CreateStateMachine", {"name": "sm", "roleArn": ROLE,
                                                "definition": json.dumps(definition)})
    started = await api.call("StartExecution", {"stateMachineArn": sm["stateMachineArn"],
                                                "name": "e",
                                                "input": json.dumps(input_value or {})})
    return str(started["executionArn"])


async def _restart(node: Node, path: Path, clock: FakeClock, functions: FakeFunctions,
                   downtime: float = 0) -> Node:
    """Crash ``node``, let ``downtime`` pass, and start a new one over the same database."""
    await node.crash()
    clock.t += downtime
    node = Node(path, clock, functions)
    await node.api.start()
    return node


async def _finish(node: Node, clock: FakeClock, arn: str) -> dict[str, Any]:
    running = node.api.executions.running[arn]
    await clock.drive(asyncio.shield(running.done))
    return await node.api.call("DescribeExecution", {"executionArn": arn})


async def _history(node: Node, arn: str) -> list[dict[str, Any]]:
    events = (await node.api.call("GetExecutionHistory", {"executionArn": arn}))["events"]
    return list(events)


def _types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


def test_wait_keeps_its_deadline(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": 1, "ResultPath": "$.a", "Next": "W"},
            "W": {"Type": "Wait", "Seconds": 100, "Next": "B"},
            "B": {"Type": "Pass", "Result": 2, "ResultPath": "$.b", "End": True}}})
        await clock.settle()
        # The server is down for a while.
        node = await _restart(node, tmp_path / "db", clock, functions, 30)
        done = await _finish(node, clock, arn)
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == {"a": 1, "b": 2}
        assert clock.now() - START == 100
        events = await _history(node, arn)
        assert _types(events) == [
            "ExecutionStarted", "PassStateEntered", "PassStateExited", "WaitStateEntered",
            "WaitStateExited", "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]
        assert [e["id"] for e in events] == list(range(1, 9))
        assert events[4]["previousEventId"] == 4
        await node.crash()

    asyncio.run(scenario())


def test_retry_backoff_survives_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "T", "States": {"T": {
            "Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flaky-1",
            "Retry": [{"ErrorEquals": ["FlakyError"], "IntervalSeconds": 100}], "End": True}}},
            {"k": 1})
        await clock.settle()
        assert functions.counts == {"flaky-1": 1}
        node = await _restart(node, tmp_path / "db", clock, functions, 10)
        done = await _finish(node, clock, arn)
        assert done["status"] == "SUCCEEDED"
        assert clock.now() - START == 100
        assert functions.counts == {"flaky-1": 2}
        await node.crash()

    asyncio.run(scenario())


def test_in_flight_task_is_redispatched(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock()
        functions = FakeFunctions(clock)
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "T", "States": {"T": {
            "Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:sleep-50",
            "End": True}}}, {"v": 1})
        await clock.settle()
        node = await _restart(node, tmp_path / "db", clock, functions)
        done = await _finish(node, clock, arn)
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == {"v": 1}
        assert functions.counts == {"sleep-50": 2}
        assert _types(await _history(node, arn)) == [
            "ExecutionStarted", "TaskStateEntered", "LambdaFunctionScheduled",
            "LambdaFunctionStarted", "LambdaFunctionScheduled", "LambdaFunctionStarted",
            "LambdaFunctionSucceeded", "TaskStateExited", "ExecutionSucceeded"]
        await node.crash()

    asyncio.run(scenario())


def test_callback_token_survives_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        tokens: list[str] = []

        async def notify(payload: Any) -> tuple[Any, str | None]:
            tokens.append(payload["token"])
            return None, None

        functions.extra["notify"] = notify
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "Cb", "States": {"Cb": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "Parameters": {"FunctionName": "notify", "Payload": {"token.$": "$$.Task.Token"}},
            "End": True}}})
        await clock.settle()
        assert len(tokens) == 1
        node = await _restart(node, tmp_path / "db", clock, functions)
        await clock.settle()
        await node.api.call("SendTaskSuccess", {"taskToken": tokens[0], "output": '{"ok": 1}'})
        done = await _finish(node, clock, arn)
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == {"ok": 1}
        assert len(tokens) == 1  # the function was not invoked again
        assert _types(await _history(node, arn)) == [
            "ExecutionStarted", "TaskStateEntered", "TaskScheduled", "TaskStarted",
            "TaskSubmitted", "TaskSucceeded", "TaskStateExited", "ExecutionSucceeded"]
        await node.crash()

    asyncio.run(scenario())


def test_variables_survive_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Assign": {"x": 42}, "Next": "W"},
            "W": {"Type": "Wait", "Seconds": 5, "Next": "B"},
            "B": {"Type": "Pass", "Parameters": {"x.$": "$x"}, "End": True}}})
        await clock.settle()
        node = await _restart(node, tmp_path / "db", clock, functions)
        done = await _finish(node, clock, arn)
        assert json.loads(done["output"]) == {"x": 42}
        await node.crash()

    asyncio.run(scenario())


_CHILD = textwrap.dedent("""
    import asyncio, json, sys
    from kiln.states.api import StatesApi
    from kiln.states.types import SystemClock
    from kiln.store import Database

    class NoFunctions:
        async def invoke(self, arn, payload):
            raise AssertionError("no functions here")

    async def main():
        api = StatesApi(Database(sys.argv[1]), NoFunctions(), "us-east-1", "123456789012",
                        SystemClock())
        await api.start()
        sm = await api.call("CreateStateMachine", {"name": "sm", "roleArn": "arn:aws:iam::1:role/r",
            "definition": json.dumps({"StartAt": "W", "States": {
                "W": {"Type": "Wait", "Seconds": 1, "Next": "P"},
                "P": {"Type": "Pass", "Result": "after restart", "End": True}}})})
        out = await api.call("StartExecution", {"stateMachineArn": sm["stateMachineArn"],
                                                "name": "e"})
        await asyncio.sleep(0.05)
        print(out["executionArn"], flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main())
""")


def test_kill_9_during_wait(tmp_path: Path) -> None:
    db_path = tmp_path / "db"
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(db_path)],
                             stdout=subprocess.PIPE, text=True, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        arn = child.stdout.readline().strip()
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    assert arn.endswith(":execution:sm:e")

    async def scenario() -> None:
        db = Database(db_path)
        api = StatesApi(db, FakeFunctions(), REGION, ACCOUNT, SystemClock())
        assert (await api.call("DescribeExecution", {"executionArn": arn}))["status"] == "RUNNING"
        await api.start()
        await asyncio.wait_for(asyncio.shield(api.executions.running[arn].done), 30)
        done = await api.call("DescribeExecution", {"executionArn": arn})
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == "after restart"
        events = (await api.call("GetExecutionHistory", {"executionArn": arn}))["events"]
        assert [e["type"] for e in events] == [
            "ExecutionStarted", "WaitStateEntered", "WaitStateExited", "PassStateEntered",
            "PassStateExited", "ExecutionSucceeded"]
        await api.stop()
        db.close()

    asyncio.run(scenario())


def test_parallel_resumes_inside_its_branches(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": "a", "ResultPath": "$.a", "Next": "P"},
            "P": {"Type": "Parallel", "ResultPath": "$.p", "End": True, "Branches": [
                {"StartAt": "W", "States": {"W": {"Type": "Wait", "Seconds": 50,
                                                    "End": True}}},
                {"StartAt": "X", "States": {"X": {"Type": "Pass", "Result": "x",
                                                    "End": True}}}]}}})
        await clock.settle()
        node = await _restart(node, tmp_path / "db", clock, functions, 10)
        done = await _finish(node, clock, arn)
        assert json.loads(done["output"]) == {"a": "a", "p": [{"a": "a"}, "x"]}
        assert clock.now() - START == 50  # the branch's Wait kept its deadline
        # The Parallel state is not entered or started again; branch X's events from before
        # the crash were never persisted, so X runs once in the history.
        assert _types(await _history(node, arn)) == [
            "ExecutionStarted", "PassStateEntered", "PassStateExited", "ParallelStateEntered",
            "ParallelStateStarted", "WaitStateEntered", "PassStateEntered", "PassStateExited",
            "WaitStateExited", "ParallelStateSucceeded", "ParallelStateExited",
            "ExecutionSucceeded"]
        await node.crash()

    asyncio.run(scenario())


def test_map_iterations_finished_before_a_restart_are_not_run_again(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "M", "States": {"M": {
            "Type": "Map", "MaxConcurrency": 1, "ItemsPath": "$.xs", "End": True,
            "ItemProcessor": {"StartAt": "T", "States": {
                "T": {"Type": "Task", "InputPath": "$.n", "ResultPath": "$.d",
                      "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double",
                      "Next": "W"},
                "W": {"Type": "Wait", "Seconds": 100, "End": True}}}}}},
            {"xs": [{"n": 1}, {"n": 2}, {"n": 3}]})
        running = node.api.executions.running[arn]
        await clock.drive(asyncio.shield(running.done),
                          until=lambda: functions.counts.get("double") == 2)
        await clock.settle()  # iteration 1 waits; iteration 0's result is committed
        node = await _restart(node, tmp_path / "db", clock, functions)
        done = await _finish(node, clock, arn)
        assert json.loads(done["output"]) == [{"n": 1, "d": 2}, {"n": 2, "d": 4},
                                              {"n": 3, "d": 6}]
        assert functions.counts["double"] == 3  # no iteration invoked its task twice
        assert clock.now() - START == 300
        types = _types(await _history(node, arn))
        assert types.count("MapIterationStarted") == 3
        assert types.count("LambdaFunctionScheduled") == 3
        assert types.count("MapStateStarted") == 1
        assert types[-3:] == ["MapStateSucceeded", "MapStateExited", "ExecutionSucceeded"]
        await node.crash()

    asyncio.run(scenario())


def test_nested_parallel_in_map_resumes_at_depth(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "M", "States": {"M": {
            "Type": "Map", "End": True, "ItemProcessor": {"StartAt": "P", "States": {"P": {
                "Type": "Parallel", "End": True, "Branches": [
                    {"StartAt": "W", "States": {"W": {"Type": "Wait", "SecondsPath": "$",
                                                        "End": True}}},
                    {"StartAt": "V", "States": {"V": {"Type": "Pass", "Assign": {"v.$": "$"},
                                                        "Next": "U"},
                                                "U": {"Type": "Wait", "Seconds": 30,
                                                      "Next": "R"},
                                                "R": {"Type": "Pass", "Parameters": {
                                                    "v.$": "$v"}, "End": True}}}]}}}}}},
            [20, 40])
        running = node.api.executions.running[arn]
        await clock.drive(asyncio.shield(running.done), until=lambda: clock.now() - START >= 20)
        await clock.settle()  # inner Waits pending: U until 30 (after $v was assigned), W1 40
        node = await _restart(node, tmp_path / "db", clock, functions)
        done = await _finish(node, clock, arn)
        # $v, assigned inside each branch before the crash, is read back after it.
        assert json.loads(done["output"]) == [[20, {"v": 20}], [40, {"v": 40}]]
        assert clock.now() - START == 40
        types = _types(await _history(node, arn))
        assert types.count("ParallelStateStarted") == 2
        assert types.count("MapIterationStarted") == 2
        await node.crash()

    asyncio.run(scenario())


def test_many_concurrent_executions_and_history_while_running(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        sm = await node.api.call("CreateStateMachine", {
            "name": "many", "roleArn": ROLE, "definition": json.dumps({
                "StartAt": "W", "States": {
                    "W": {"Type": "Wait", "SecondsPath": "$.s", "Next": "P"},
                    "P": {"Type": "Pass", "Parameters": {"done.$": "$.s"}, "End": True}}})})
        arns = []
        for i in range(200):
            out = await node.api.call("StartExecution", {
                "stateMachineArn": sm["stateMachineArn"], "input": json.dumps({"s": i % 7})})
            arns.append(out["executionArn"])
        await clock.settle()
        history = await _history(node, arns[6])
        assert _types(history) == ["ExecutionStarted", "WaitStateEntered"]
        await clock.drive(asyncio.gather(*(asyncio.shield(node.api.executions.running[a].done)
                                           for a in arns if a in node.api.executions.running)))
        listed = await node.api.call("ListExecutions", {
            "stateMachineArn": sm["stateMachineArn"], "statusFilter": "SUCCEEDED",
            "maxResults": 1000})
        assert len(listed["executions"]) == 200
        done = await node.api.call("DescribeExecution", {"executionArn": arns[13]})
        assert json.loads(done["output"]) == {"done": 6}
        assert clock.now() - START == 6
        await node.crash()

    asyncio.run(scenario())


def test_distributed_map_run_continues_after_a_restart(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock, functions = FakeClock(), FakeFunctions()
        node = Node(tmp_path / "db", clock, functions)
        arn = await _create_and_start(node.api, {"StartAt": "M", "States": {"M": {
            "Type": "Map", "MaxConcurrency": 1, "End": True, "ItemProcessor": {
                "ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"},
                "StartAt": "T", "States": {
                    "T": {"Type": "Task", "Next": "W",
                          "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double"},
                    "W": {"Type": "Wait", "Seconds": 100, "End": True}}}}}}, [1, 2, 3])
        running = node.api.executions.running[arn]
        await clock.drive(asyncio.shield(running.done),
                          until=lambda: functions.counts.get("double") == 2)
        await clock.settle()  # child 1 waits; child 0's end is committed
        node = await _restart(node, tmp_path / "db", clock, functions)
        done = await _finish(node, clock, arn)
        assert json.loads(done["output"]) == [2, 4, 6]
        # Child 0 is not run again; child 1 was in flight and runs again from its start.
        assert functions.counts["double"] == 4
        events = await _history(node, arn)
        assert _types(events) == [
            "ExecutionStarted", "MapStateEntered", "MapStateStarted", "MapRunStarted",
            "MapRunSucceeded", "MapStateSucceeded", "MapStateExited", "ExecutionSucceeded"]
        run_arn = events[3]["mapRunStartedEventDetails"]["mapRunArn"]
        run = await node.api.call("DescribeMapRun", {"mapRunArn": run_arn})
        assert run["status"] == "SUCCEEDED" and run["itemCounts"]["succeeded"] == 3
        await node.crash()

    asyncio.run(scenario())
