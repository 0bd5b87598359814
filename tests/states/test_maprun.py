"""Distributed Map runs through boto3: DescribeMapRun, ListMapRuns, UpdateMapRun and
ListExecutions(mapRunArn), including a live concurrency change."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from kiln.aws.errors import AwsError
from tests.states.helpers import ACCOUNT, REGION
from tests.states.test_api import Harness, _notify

DIST = {"Mode": "DISTRIBUTED", "ExecutionType": "STANDARD"}


def distributed(processor: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.xs", "Label": "Lbl",
        "ItemProcessor": {"ProcessorConfig": DIST, **processor}, "End": True, **fields}}}


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


def _run_arn(h: Harness, exec_arn: str) -> str:
    def started() -> Any:
        events = h.client.get_execution_history(executionArn=exec_arn)["events"]
        return next((e for e in events if e["type"] == "MapRunStarted"), None)

    return str(h.wait_for(started)["mapRunStartedEventDetails"]["mapRunArn"])


def test_finished_map_run_is_described_and_listed(h: Harness) -> None:
    arn = h.machine(distributed(
        {"StartAt": "C", "States": {
            "C": {"Type": "Choice", "Choices": [{"Variable": "$", "NumericEquals": 2,
                                                  "Next": "F"}], "Default": "OK"},
            "F": {"Type": "Fail", "Error": "Two"}, "OK": {"Type": "Succeed"}}},
        ToleratedFailureCount=1, MaxConcurrency=2))
    exec_arn = h.client.start_execution(stateMachineArn=arn, name="e",
                                        input='{"xs": [1, 2, 3]}')["executionArn"]
    assert h.wait_done(exec_arn)["status"] == "SUCCEEDED"
    run_arn = _run_arn(h, exec_arn)
    assert run_arn.startswith(f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:sm/Lbl:")
    run = h.client.describe_map_run(mapRunArn=run_arn)
    assert (run["status"], run["executionArn"], run["maxConcurrency"]) == (
        "SUCCEEDED", exec_arn, 2)
    assert run["toleratedFailureCount"] == 1 and run["toleratedFailurePercentage"] == 0.0
    assert run["itemCounts"]["total"] == 3 and run["itemCounts"]["succeeded"] == 2
    assert run["itemCounts"]["failed"] == 1 and run["executionCounts"]["failed"] == 1
    assert run["stopDate"] >= run["startDate"]
    listed = h.client.list_map_runs(executionArn=exec_arn)["mapRuns"]
    assert [(r["mapRunArn"], r["executionArn"]) for r in listed] == [(run_arn, exec_arn)]
    assert listed[0]["stateMachineArn"] == f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm/Lbl"
    children = h.client.list_executions(mapRunArn=run_arn)["executions"]
    assert sorted(c["status"] for c in children) == ["FAILED", "SUCCEEDED", "SUCCEEDED"]
    assert all(c["mapRunArn"] == run_arn and c["itemCount"] == 1 for c in children)
    assert all(c["executionArn"].startswith(
        f"arn:aws:states:{REGION}:{ACCOUNT}:execution:sm/Lbl:") for c in children)
    failed = h.client.list_executions(mapRunArn=run_arn, statusFilter="FAILED")["executions"]
    assert len(failed) == 1
    page = h.client.list_executions(mapRunArn=run_arn, maxResults=2)
    assert len(page["executions"]) == 2 and "nextToken" in page


def test_update_map_run_raises_concurrency_of_a_live_run(h: Harness) -> None:
    tokens = _notify(h)
    arn = h.machine(distributed({"StartAt": "Ask", "States": {"Ask": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": "notify", "Payload": {"token.$": "$$.Task.Token"}},
        "End": True}}}, MaxConcurrency=1))
    exec_arn = h.client.start_execution(stateMachineArn=arn,
                                        input='{"xs": [1, 2, 3]}')["executionArn"]
    h.wait_for(lambda: len(tokens) == 1)
    run_arn = _run_arn(h, exec_arn)
    running = h.client.describe_map_run(mapRunArn=run_arn)
    assert running["status"] == "RUNNING" and running["maxConcurrency"] == 1
    assert running["executionCounts"]["running"] == 1
    assert running["executionCounts"]["pending"] == 2
    h.client.update_map_run(mapRunArn=run_arn, maxConcurrency=3)
    h.wait_for(lambda: len(tokens) == 3)  # the two pending children start at once
    assert h.client.describe_map_run(mapRunArn=run_arn)["executionCounts"]["running"] == 3
    for token in tokens:
        h.client.send_task_success(taskToken=token, output='"done"')
    done = h.wait_done(exec_arn)
    assert json.loads(done["output"]) == ["done", "done", "done"]
    final = h.client.describe_map_run(mapRunArn=run_arn)
    assert (final["status"], final["maxConcurrency"]) == ("SUCCEEDED", 3)


def test_update_map_run_tolerance_lets_a_live_run_survive(h: Harness) -> None:
    tokens = _notify(h)
    arn = h.machine(distributed({"StartAt": "Ask", "States": {"Ask": {
        "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
        "Parameters": {"FunctionName": "notify", "Payload": {"token.$": "$$.Task.Token"}},
        "End": True}}}))
    exec_arn = h.client.start_execution(stateMachineArn=arn,
                                        input='{"xs": [1, 2]}')["executionArn"]
    h.wait_for(lambda: len(tokens) == 2)
    h.client.update_map_run(mapRunArn=_run_arn(h, exec_arn), toleratedFailureCount=1)
    h.client.send_task_failure(taskToken=tokens[0], error="Bad")
    h.client.send_task_success(taskToken=tokens[1], output="1")
    done = h.wait_done(exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"])[0]["Error"] == "Bad"


def test_map_run_errors(h: Harness) -> None:
    missing = f"arn:aws:states:{REGION}:{ACCOUNT}:mapRun:sm/Lbl:nope"
    with pytest.raises(h.client.exceptions.ResourceNotFound):
        h.client.describe_map_run(mapRunArn=missing)
    with pytest.raises(h.client.exceptions.ResourceNotFound):
        h.client.list_executions(mapRunArn=missing)
    with pytest.raises(h.client.exceptions.InvalidArn):
        h.client.describe_map_run(mapRunArn=f"arn:aws:states:{REGION}:{ACCOUNT}:activity:a")
    with pytest.raises(h.client.exceptions.ExecutionDoesNotExist):
        h.client.list_map_runs(executionArn=f"arn:aws:states:{REGION}:{ACCOUNT}:execution:x:y")
    arn = h.machine(distributed({"StartAt": "P", "States": {"P": {"Type": "Pass",
                                                                   "End": True}}}))
    exec_arn = h.client.start_execution(stateMachineArn=arn, input='{"xs": [1]}')[
        "executionArn"]
    h.wait_done(exec_arn)
    run_arn = _run_arn(h, exec_arn)
    for body in ({"mapRunArn": run_arn}, {"mapRunArn": run_arn, "maxConcurrency": -1},
                 {"mapRunArn": run_arn, "toleratedFailurePercentage": 101},
                 {"mapRunArn": run_arn, "toleratedFailureCount": 1.5}):
        with pytest.raises(AwsError) as exc:
            h.submit(h.api.call("UpdateMapRun", body))
        assert exc.value.code == "ValidationException"
    with pytest.raises(AwsError) as exc:
        h.submit(h.api.call("ListExecutions", {"mapRunArn": run_arn, "stateMachineArn": arn}))
    assert exc.value.code == "ValidationException"


def test_redrive_continues_the_failed_map_run(h: Harness) -> None:
    arn = h.machine(distributed({"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Default": "D", "Choices": [
            {"Variable": "$", "NumericEquals": 2, "Next": "F"}]},
        "D": {"Type": "Task", "End": True,
              "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double"},
        "F": {"Type": "Task", "End": True,
              "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flaky-1"}}},
        MaxConcurrency=1))
    exec_arn = h.client.start_execution(stateMachineArn=arn, input='{"xs": [1, 2, 3]}')[
        "executionArn"]
    failed = h.wait_done(exec_arn)
    assert failed["error"] == "States.ExceedToleratedFailureThreshold"
    run_arn = _run_arn(h, exec_arn)
    assert h.client.describe_map_run(mapRunArn=run_arn)["status"] == "FAILED"
    h.client.redrive_execution(executionArn=exec_arn)
    done = h.wait_done(exec_arn)
    assert json.loads(done["output"]) == [2, 2, 6]
    assert h.functions.counts == {"double": 2, "flaky-1": 2}  # child 0 did not run again
    run = h.client.describe_map_run(mapRunArn=run_arn)
    assert (run["status"], run["redriveCount"]) == ("SUCCEEDED", 1) and "redriveDate" in run
    assert run["itemCounts"]["succeeded"] == 3
    types = h.history(exec_arn)
    assert types[types.index("ExecutionRedriven"):] == [
        "ExecutionRedriven", "MapStateEntered", "MapStateStarted", "MapRunRedriven",
        "MapRunSucceeded", "MapStateSucceeded", "MapStateExited", "ExecutionSucceeded"]
    assert h.client.list_map_runs(executionArn=exec_arn)["mapRuns"][0]["mapRunArn"] == run_arn
