"""End to end through boto3 against a real ``kiln serve``: callbacks, activities, express sync,
a Distributed Map with its Map Run, and an execution that survives ``kill -9`` of the server."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import EndpointConnectionError

from tests.conftest import KilnServer, create_python_function, start_server

ROLE = "arn:aws:iam::000000000000:role/sfn"


def wait_done(sfn: Any, arn: str, seconds: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        described: dict[str, Any] = sfn.describe_execution(executionArn=arn)
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError(f"{arn} did not finish")


def wait_for(fn: Any, seconds: float = 30) -> Any:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition never held")


def history_types(sfn: Any, arn: str) -> list[str]:
    return [e["type"] for e in sfn.get_execution_history(executionArn=arn)["events"]]


def machine(sfn: Any, name: str, definition: dict[str, Any], kind: str = "STANDARD") -> str:
    return str(sfn.create_state_machine(name=name, definition=json.dumps(definition),
                                        roleArn=ROLE, type=kind)["stateMachineArn"])


def test_callback_workflow(kiln_server: KilnServer, lambda_client: Any) -> None:
    name = create_python_function(
        lambda_client, "def handler(event, context):\n    return {'queued': event['token']}\n")
    sfn = kiln_server.client("stepfunctions")
    arn = machine(sfn, f"cb-{name}", {"StartAt": "Ask", "States": {"Ask": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": name, "Payload": {"token.$": "$$.Task.Token"}},
        "ResultPath": "$.answer", "End": True}}})
    exec_arn = sfn.start_execution(stateMachineArn=arn, input='{"q": 1}')["executionArn"]

    def submitted() -> Any:
        events = sfn.get_execution_history(executionArn=exec_arn)["events"]
        return next((e for e in events if e["type"] == "TaskSubmitted"), None)

    event = wait_for(submitted)
    token = json.loads(event["taskSubmittedEventDetails"]["output"])["Payload"]["queued"]
    sfn.send_task_heartbeat(taskToken=token)
    sfn.send_task_success(taskToken=token, output='{"yes": true}')
    done = wait_done(sfn, exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"]) == {"q": 1, "answer": {"yes": True}}


def test_activity_worker(kiln_server: KilnServer) -> None:
    sfn = kiln_server.client("stepfunctions")
    activity = sfn.create_activity(name="e2e-activity")["activityArn"]
    arn = machine(sfn, "act", {"StartAt": "Work", "States": {"Work": {
        "Type": "Task", "Resource": activity, "HeartbeatSeconds": 30, "End": True}}})
    results: list[Any] = []

    def worker() -> None:
        client = kiln_server.client("stepfunctions", read_timeout=70)
        task = client.get_activity_task(activityArn=activity, workerName="e2e-worker")
        client.send_task_heartbeat(taskToken=task["taskToken"])
        value = json.loads(task["input"])
        client.send_task_success(taskToken=task["taskToken"],
                                 output=json.dumps({"sum": value["a"] + value["b"]}))
        results.append(task)

    thread = threading.Thread(target=worker)
    thread.start()  # the worker long-polls before any task exists
    time.sleep(0.2)
    exec_arn = sfn.start_execution(stateMachineArn=arn, input='{"a": 2, "b": 3}')[
        "executionArn"]
    thread.join(30)
    done = wait_done(sfn, exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"]) == {"sum": 5}
    types = history_types(sfn, exec_arn)
    assert types == ["ExecutionStarted", "TaskStateEntered", "ActivityScheduled",
                     "ActivityStarted", "ActivitySucceeded", "TaskStateExited",
                     "ExecutionSucceeded"]


def test_express_sync_execution_and_host_prefix(kiln_server: KilnServer) -> None:
    sfn = kiln_server.client("stepfunctions", inject_host_prefix=False)
    arn = machine(sfn, "fast", {"StartAt": "P", "States": {"P": {
        "Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.a, $.b)"}, "End": True}}},
        kind="EXPRESS")
    out = sfn.start_sync_execution(stateMachineArn=arn, input='{"a": 1, "b": 2}')
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"]) == {"sum": 3}
    # Without inject_host_prefix=False boto3 calls http://sync-127.0.0.1:PORT/, which does not
    # resolve: clients of a local endpoint must turn the prefix off.
    with pytest.raises(EndpointConnectionError):
        kiln_server.client("stepfunctions").start_sync_execution(stateMachineArn=arn)


def test_execution_survives_kill_9(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = start_server(data)
    try:
        sfn = server.client("stepfunctions")
        name = create_python_function(
            server.client("lambda"), "def handler(event, context):\n    return event * 3\n")
        arn = machine(sfn, "durable", {"StartAt": "A", "States": {
            "A": {"Type": "Pass", "Result": 7, "ResultPath": "$.a", "Next": "P"},
            "P": {"Type": "Parallel", "ResultPath": "$.p", "Next": "B", "Branches": [
                {"StartAt": "Call", "States": {"Call": {
                    "Type": "Task", "InputPath": "$.a", "End": True,
                    "Resource": f"arn:aws:lambda:us-east-1:000000000000:function:{name}"}}},
                {"StartAt": "W1", "States": {
                    "W1": {"Type": "Wait", "Seconds": 1, "Next": "W2"},
                    "W2": {"Type": "Wait", "Seconds": 1, "End": True}}}]},
            "B": {"Type": "Pass", "Result": "after", "ResultPath": "$.b", "End": True}}})
        exec_arn = sfn.start_execution(stateMachineArn=arn, name="survivor")["executionArn"]
        # Kill once the Lambda branch's end is committed and the other branch sits in W2.
        def committed() -> bool:
            types = history_types(sfn, exec_arn)
            return "TaskStateExited" in types and types.count("WaitStateEntered") == 2

        wait_for(committed)
    finally:
        server.stop(signal.SIGKILL)
    server = start_server(data)
    try:
        sfn = server.client("stepfunctions")
        done = wait_done(sfn, exec_arn)
        assert done["status"] == "SUCCEEDED"
        assert json.loads(done["output"]) == {"a": 7, "p": [21, {"a": 7}], "b": "after"}
        types = history_types(sfn, exec_arn)
        # Resumed inside the Parallel: nothing entered, started or invoked twice (the order
        # of the two branches' events may interleave either way).
        assert types[:5] == ["ExecutionStarted", "PassStateEntered", "PassStateExited",
                             "ParallelStateEntered", "ParallelStateStarted"]
        assert types[-5:] == ["ParallelStateSucceeded", "ParallelStateExited",
                              "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]
        assert sorted(types[5:-5]) == sorted([
            "TaskStateEntered", "LambdaFunctionScheduled", "LambdaFunctionStarted",
            "LambdaFunctionSucceeded", "TaskStateExited", "WaitStateEntered",
            "WaitStateExited", "WaitStateEntered", "WaitStateExited"])
    finally:
        server.stop()


def test_distributed_map_run_through_boto3(kiln_server: KilnServer, lambda_client: Any) -> None:
    name = create_python_function(
        lambda_client, "def handler(event, context):\n    return event['v'] * 10\n")
    sfn = kiln_server.client("stepfunctions")
    arn = machine(sfn, f"dmap-{name}", {"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.items", "MaxConcurrency": 2, "Label": "Fan",
        "ItemProcessor": {"ProcessorConfig": {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"},
                          "StartAt": "Call", "States": {"Call": {
                              "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
                              "Parameters": {"FunctionName": name, "Payload.$": "$"},
                              "OutputPath": "$.Payload", "End": True}}},
        "End": True}}})
    exec_arn = sfn.start_execution(stateMachineArn=arn,
                                   input=json.dumps({"items": [{"v": 1}, {"v": 2}, {"v": 3}]}))[
        "executionArn"]
    done = wait_done(sfn, exec_arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"]) == [10, 20, 30]
    runs = sfn.list_map_runs(executionArn=exec_arn)["mapRuns"]
    assert len(runs) == 1
    run = sfn.describe_map_run(mapRunArn=runs[0]["mapRunArn"])
    assert (run["status"], run["maxConcurrency"], run["itemCounts"]["succeeded"]) == (
        "SUCCEEDED", 2, 3)
    children = sfn.list_executions(mapRunArn=run["mapRunArn"])["executions"]
    assert [c["status"] for c in children] == ["SUCCEEDED"] * 3
    types = history_types(sfn, exec_arn)
    assert types == ["ExecutionStarted", "MapStateEntered", "MapStateStarted", "MapRunStarted",
                     "MapRunSucceeded", "MapStateSucceeded", "MapStateExited",
                     "ExecutionSucceeded"]
