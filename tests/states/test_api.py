"""The json-1.0 API driven by a real boto3 client (requests short-circuited into StatesApi)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import botocore.awsrequest
import pytest
from botocore.config import Config
from starlette.requests import Request

from kiln.aws.errors import AwsError
from kiln.states.api import StatesApi
from kiln.store import Database
from tests.states.helpers import ACCOUNT, REGION, FakeFunctions, ScaledClock

ROLE = f"arn:aws:iam::{ACCOUNT}:role/states"


class _Raw:
    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


class Harness:
    def __init__(self, tmp_path: Path) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.db = Database(tmp_path / "kiln.db")
        self.functions = FakeFunctions()
        self.clock = ScaledClock()
        self.api = StatesApi(self.db, self.functions, REGION, ACCOUNT, self.clock)
        self.submit(self.api.start())
        self.hosts: list[str] = []
        self.client = boto3.client(
            "stepfunctions", region_name=REGION, endpoint_url="http://localhost:9",
            aws_access_key_id="k", aws_secret_access_key="s",
            config=Config(retries={"max_attempts": 0}),
        )
        self.client.meta.events.register("before-send.states", self._send)

    def submit(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=30)

    def _send(self, request: botocore.awsrequest.AWSPreparedRequest,
              **_: Any) -> botocore.awsrequest.AWSResponse:
        self.hosts.append(request.url)
        headers = [(k.lower().encode(), v.encode() if isinstance(v, str) else v)
                   for k, v in request.headers.items()]
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()

        async def dispatch() -> tuple[int, dict[str, str], bytes]:
            sent = False

            async def receive() -> dict[str, Any]:
                nonlocal sent
                if sent:
                    await asyncio.sleep(3600)
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}

            scope = {"type": "http", "method": "POST", "path": "/", "headers": headers,
                     "query_string": b""}
            response = await self.api.handle(Request(scope, receive))
            return response.status_code, dict(response.headers), bytes(response.body)

        status, out_headers, out_body = self.submit(dispatch())
        return botocore.awsrequest.AWSResponse(request.url, status, out_headers, _Raw(out_body))

    def close(self) -> None:
        self.submit(self.api.stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.db.close()

    def machine(self, definition: dict[str, Any], name: str = "sm",
                sm_type: str = "STANDARD") -> str:
        return str(self.client.create_state_machine(
            name=name, definition=json.dumps(definition), roleArn=ROLE, type=sm_type,
        )["stateMachineArn"])

    def wait_done(self, arn: str) -> dict[str, Any]:
        def finished() -> dict[str, Any] | None:
            out = self.client.describe_execution(executionArn=arn)
            return dict(out) if out["status"] != "RUNNING" else None

        return dict(self.wait_for(finished, f"{arn} still running"))

    def wait_for(self, predicate: Any, failure: str = "condition never held") -> Any:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.005)
        raise AssertionError(failure)

    def history(self, arn: str, **kw: Any) -> list[str]:
        return [e["type"] for e in
                self.client.get_execution_history(executionArn=arn, **kw)["events"]]


@pytest.fixture
def h(tmp_path: Path) -> Iterator[Harness]:
    harness = Harness(tmp_path)
    yield harness
    harness.close()


PASS = {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": {"ok": True},
                                          "ResultPath": "$.r", "End": True}}}


def _code(exc: pytest.ExceptionInfo[Any]) -> str:
    return str(exc.value.response["Error"]["Code"])


def test_state_machine_crud(h: Harness) -> None:
    arn = h.machine(PASS)
    assert arn == f"arn:aws:states:{REGION}:{ACCOUNT}:stateMachine:sm"
    assert h.machine(PASS) == arn  # an exact repeat is idempotent
    with pytest.raises(h.client.exceptions.StateMachineAlreadyExists):
        h.machine({**PASS, "Comment": "different"})
    described = h.client.describe_state_machine(stateMachineArn=arn)
    assert described["name"] == "sm"
    assert json.loads(described["definition"]) == PASS
    assert described["type"] == "STANDARD"
    assert described["status"] == "ACTIVE"
    assert described["roleArn"] == ROLE
    updated = h.client.update_state_machine(stateMachineArn=arn,
                                            definition=json.dumps({**PASS, "Comment": "v2"}))
    assert updated["revisionId"] != described["revisionId"]
    assert "v2" in h.client.describe_state_machine(stateMachineArn=arn)["definition"]
    with pytest.raises(h.client.exceptions.ClientError) as exc:
        h.client.update_state_machine(stateMachineArn=arn)
    assert _code(exc) == "MissingRequiredParameter"
    h.machine(PASS, name="other")
    listed = h.client.list_state_machines(maxResults=1)
    assert [m["name"] for m in listed["stateMachines"]] == ["sm"]
    rest = h.client.list_state_machines(nextToken=listed["nextToken"])
    assert [m["name"] for m in rest["stateMachines"]] == ["other"]
    h.client.delete_state_machine(stateMachineArn=arn)
    with pytest.raises(h.client.exceptions.StateMachineDoesNotExist) as exc:
        h.client.describe_state_machine(stateMachineArn=arn)
    assert exc.value.response["Error"]["Message"] == f"State Machine Does Not Exist: '{arn}'"
    h.client.delete_state_machine(stateMachineArn=arn)  # deleting again still succeeds


def test_create_errors(h: Harness) -> None:
    with pytest.raises(h.client.exceptions.InvalidDefinition) as exc:
        h.client.create_state_machine(name="bad", definition=json.dumps({"States": {}}),
                                      roleArn=ROLE)
    assert exc.value.response["Error"]["Message"].startswith(
        "Invalid State Machine Definition: 'SCHEMA_VALIDATION_FAILED: These fields are "
        "required: [StartAt] at /")
    with pytest.raises(h.client.exceptions.InvalidName):
        h.client.create_state_machine(name="bad name", definition=json.dumps(PASS),
                                      roleArn=ROLE)
    with pytest.raises(h.client.exceptions.InvalidArn) as exc:
        h.client.describe_state_machine(stateMachineArn="not-an-arn")
    assert exc.value.response["Error"]["Message"] == "Invalid Arn: 'Invalid ARN prefix: not-an-arn'"
    with pytest.raises(h.client.exceptions.InvalidDefinition) as exc:
        h.machine({"StartAt": "A", "States": {"A": {
            "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
            "End": True}}}, name="ex", sm_type="EXPRESS")
    assert "Express state machine does not support '.waitForTaskToken'" in str(exc.value)


def test_validate_definition(h: Harness) -> None:
    ok = h.client.validate_state_machine_definition(definition=json.dumps(PASS))
    assert ok["result"] == "OK" and ok["diagnostics"] == []
    bad = h.client.validate_state_machine_definition(definition=json.dumps({"States": {}}))
    assert bad["result"] == "FAIL"
    assert bad["diagnostics"][0] == {"severity": "ERROR", "code": "SCHEMA_VALIDATION_FAILED",
                                     "message": "These fields are required: [StartAt]",
                                     "location": "/"}
    not_json = h.client.validate_state_machine_definition(definition="{")
    assert not_json["diagnostics"][0]["code"] == "INVALID_JSON_DESCRIPTION"


def test_execution_lifecycle_and_history(h: Harness) -> None:
    arn = h.machine({"StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double",
              "InputPath": "$.n", "ResultPath": "$.doubled", "Next": "P"},
        "P": {"Type": "Pass", "End": True}}})
    started = h.client.start_execution(stateMachineArn=arn, name="e1", input='{"n": 21}')
    exec_arn = started["executionArn"]
    assert exec_arn == f"arn:aws:states:{REGION}:{ACCOUNT}:execution:sm:e1"
    done = h.wait_done(exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"]) == {"n": 21, "doubled": 42}
    assert done["name"] == "e1" and done["stateMachineArn"] == arn
    assert done["stopDate"] >= done["startDate"]
    types = ["ExecutionStarted", "TaskStateEntered", "LambdaFunctionScheduled",
             "LambdaFunctionStarted", "LambdaFunctionSucceeded", "TaskStateExited",
             "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]
    assert h.history(exec_arn) == types
    assert h.history(exec_arn, reverseOrder=True) == types[::-1]
    events = h.client.get_execution_history(executionArn=exec_arn)["events"]
    assert [e["id"] for e in events] == list(range(1, 10))
    assert events[0]["previousEventId"] == 0
    assert events[2]["lambdaFunctionScheduledEventDetails"] == {
        "resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double",
        "input": "21", "inputDetails": {"truncated": False}}
    assert events[-1]["executionSucceededEventDetails"]["output"] == '{"n":21,"doubled":42}'
    page = h.client.get_execution_history(executionArn=exec_arn, maxResults=4)
    assert len(page["events"]) == 4
    page2 = h.client.get_execution_history(executionArn=exec_arn, maxResults=4,
                                           nextToken=page["nextToken"])
    assert page2["events"][0]["id"] == 5
    no_data = h.client.get_execution_history(executionArn=exec_arn, includeExecutionData=False)
    assert "input" not in no_data["events"][0]["executionStartedEventDetails"]
    listed = h.client.list_executions(stateMachineArn=arn)["executions"]
    assert [e["name"] for e in listed] == ["e1"]
    assert h.client.list_executions(stateMachineArn=arn, statusFilter="FAILED")[
        "executions"] == []
    with pytest.raises(h.client.exceptions.ClientError) as exc:
        h.client.list_executions(stateMachineArn=arn, statusFilter="succeeded")
    assert _code(exc) == "ValidationException"
    for_exec = h.client.describe_state_machine_for_execution(executionArn=exec_arn)
    assert json.loads(for_exec["definition"])["StartAt"] == "T"
    with pytest.raises(h.client.exceptions.ExecutionDoesNotExist):
        h.client.describe_execution(executionArn=exec_arn + "x")


def test_failed_execution_describe(h: Harness) -> None:
    arn = h.machine({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "E",
                                                       "Cause": "why"}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn)["executionArn"]
    done = h.wait_done(exec_arn)
    assert (done["status"], done["error"], done["cause"]) == ("FAILED", "E", "why")
    assert "output" not in done
    events = h.client.get_execution_history(executionArn=exec_arn)["events"]
    assert events[-1]["executionFailedEventDetails"] == {"error": "E", "cause": "why"}


def test_bad_input(h: Harness) -> None:
    arn = h.machine(PASS)
    with pytest.raises(h.client.exceptions.InvalidExecutionInput):
        h.client.start_execution(stateMachineArn=arn, input="not json")
    with pytest.raises(h.client.exceptions.InvalidName):
        h.client.start_execution(stateMachineArn=arn, name="a/b")


CALLBACK = {"StartAt": "Wait", "States": {"Wait": {
    "Type": "Task", "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken",
    "Parameters": {"FunctionName": "notify", "Payload": {"token.$": "$$.Task.Token",
                                                         "in.$": "$"}},
    "HeartbeatSeconds": 600, "TimeoutSeconds": 3600, "End": True}}}


def _notify(h: Harness) -> list[str]:
    tokens: list[str] = []

    async def notify(payload: Any) -> tuple[Any, str | None]:
        tokens.append(payload["token"])
        return {"queued": True}, None

    h.functions.extra["notify"] = notify
    return tokens


def _callback_started(h: Harness) -> tuple[str, str]:
    """Start CALLBACK: the execution's ARN and, once its task is out, the task token."""
    tokens = _notify(h)
    arn = h.machine(CALLBACK)
    exec_arn = h.client.start_execution(stateMachineArn=arn)["executionArn"]
    return exec_arn, h.wait_for(lambda: tokens and tokens[0])


def test_callback_success_and_name_idempotency(h: Harness) -> None:
    tokens = _notify(h)
    arn = h.machine(CALLBACK)
    first = h.client.start_execution(stateMachineArn=arn, name="cb", input='{"x": 1}')
    again = h.client.start_execution(stateMachineArn=arn, name="cb", input='{"x": 1}')
    assert again["executionArn"] == first["executionArn"]
    assert again["startDate"] == first["startDate"]
    with pytest.raises(h.client.exceptions.ExecutionAlreadyExists):
        h.client.start_execution(stateMachineArn=arn, name="cb", input='{"x": 2}')
    token = h.wait_for(lambda: tokens and tokens[0])
    h.client.send_task_heartbeat(taskToken=token)
    h.client.send_task_success(taskToken=token, output='{"approved": true}')
    done = h.wait_done(first["executionArn"])
    assert json.loads(done["output"]) == {"approved": True}
    assert h.history(first["executionArn"]) == [
        "ExecutionStarted", "TaskStateEntered", "TaskScheduled", "TaskStarted",
        "TaskSubmitted", "TaskSucceeded", "TaskStateExited", "ExecutionSucceeded"]
    with pytest.raises(h.client.exceptions.TaskDoesNotExist):
        h.client.send_task_success(taskToken=token, output="{}")
    with pytest.raises(h.client.exceptions.ExecutionAlreadyExists):
        h.client.start_execution(stateMachineArn=arn, name="cb", input='{"x": 1}')
    with pytest.raises(h.client.exceptions.InvalidToken):
        h.client.send_task_success(taskToken="garbage!", output="{}")


def test_callback_failure(h: Harness) -> None:
    exec_arn, token = _callback_started(h)
    h.client.send_task_failure(taskToken=token, error="Rejected", cause="nope")
    done = h.wait_done(exec_arn)
    assert (done["status"], done["error"], done["cause"]) == ("FAILED", "Rejected", "nope")
    events = h.client.get_execution_history(executionArn=exec_arn)["events"]
    failed = next(e for e in events if e["type"] == "TaskFailed")
    assert failed["taskFailedEventDetails"] == {"resourceType": "lambda",
                                                "resource": "invoke.waitForTaskToken",
                                                "error": "Rejected", "cause": "nope"}


def test_stop_execution(h: Harness) -> None:
    exec_arn, token = _callback_started(h)
    h.client.stop_execution(executionArn=exec_arn, error="Manual", cause="stopped by test")
    done = h.client.describe_execution(executionArn=exec_arn)
    assert (done["status"], done["error"]) == ("ABORTED", "Manual")
    assert h.history(exec_arn)[-1] == "ExecutionAborted"
    with pytest.raises(h.client.exceptions.TaskDoesNotExist):
        h.client.send_task_success(taskToken=token, output="{}")


def test_activity_worker(h: Harness) -> None:
    activity = h.client.create_activity(name="approve")["activityArn"]
    assert activity == f"arn:aws:states:{REGION}:{ACCOUNT}:activity:approve"
    assert h.client.describe_activity(activityArn=activity)["name"] == "approve"
    assert [a["name"] for a in h.client.list_activities()["activities"]] == ["approve"]
    empty = h.client.get_activity_task(activityArn=activity, workerName="w")
    assert "taskToken" not in empty
    arn = h.machine({"StartAt": "A", "States": {"A": {
        "Type": "Task", "Resource": activity, "Parameters": {"job.$": "$.job"},
        "ResultPath": "$.result", "End": True}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn, input='{"job": 7}')["executionArn"]
    task = h.client.get_activity_task(activityArn=activity, workerName="worker-1")
    assert json.loads(task["input"]) == {"job": 7}
    h.client.send_task_success(taskToken=task["taskToken"], output='"done"')
    done = h.wait_done(exec_arn)
    assert json.loads(done["output"]) == {"job": 7, "result": "done"}
    events = h.client.get_execution_history(executionArn=exec_arn)["events"]
    assert [e["type"] for e in events] == [
        "ExecutionStarted", "TaskStateEntered", "ActivityScheduled", "ActivityStarted",
        "ActivitySucceeded", "TaskStateExited", "ExecutionSucceeded"]
    assert events[3]["activityStartedEventDetails"] == {"workerName": "worker-1"}
    h.client.delete_activity(activityArn=activity)
    with pytest.raises(h.client.exceptions.ActivityDoesNotExist):
        h.client.describe_activity(activityArn=activity)


def test_deleting_activity_fails_waiting_state(h: Harness) -> None:
    activity = h.client.create_activity(name="gone")["activityArn"]
    arn = h.machine({"StartAt": "A", "States": {"A": {"Type": "Task", "Resource": activity,
                                                       "End": True}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn)["executionArn"]
    h.wait_for(lambda: "ActivityScheduled" in h.history(exec_arn))
    h.client.delete_activity(activityArn=activity)
    done = h.wait_done(exec_arn)
    assert done["error"] == "States.Runtime"
    assert done["cause"] == f"The activity {activity} does not exist."


def test_express_sync_and_restrictions(h: Harness) -> None:
    arn = h.machine(PASS, name="fast", sm_type="EXPRESS")
    out = h.client.start_sync_execution(stateMachineArn=arn, input='{"a": 1}')
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"]) == {"a": 1, "r": {"ok": True}}
    assert out["executionArn"].startswith(f"arn:aws:states:{REGION}:{ACCOUNT}:express:fast:")
    assert out["billingDetails"]["billedMemoryUsedInMB"] == 64
    assert any("sync-localhost" in url for url in h.hosts)  # boto3 injects the host prefix
    failing = h.machine({"StartAt": "F", "States": {"F": {"Type": "Fail", "Error": "X"}}},
                        name="fails", sm_type="EXPRESS")
    out = h.client.start_sync_execution(stateMachineArn=failing)
    assert (out["status"], out["error"]) == ("FAILED", "X")
    with pytest.raises(h.client.exceptions.StateMachineTypeNotSupported):
        h.client.list_executions(stateMachineArn=arn)
    started = h.client.start_execution(stateMachineArn=arn)
    with pytest.raises(h.client.exceptions.InvalidArn):
        h.client.describe_execution(executionArn=started["executionArn"])
    standard = h.machine(PASS, name="slow")
    with pytest.raises(h.client.exceptions.StateMachineTypeNotSupported):
        h.client.start_sync_execution(stateMachineArn=standard)


def test_tags(h: Harness) -> None:
    arn = h.machine(PASS)
    h.client.tag_resource(resourceArn=arn, tags=[{"key": "team", "value": "a"}])
    assert h.client.list_tags_for_resource(resourceArn=arn)["tags"] == [
        {"key": "team", "value": "a"}]
    h.client.untag_resource(resourceArn=arn, tagKeys=["team"])
    assert h.client.list_tags_for_resource(resourceArn=arn)["tags"] == []
    fifty = [{"key": f"k{i}", "value": "v"} for i in range(50)]
    h.client.tag_resource(resourceArn=arn, tags=fifty)
    with pytest.raises(h.client.exceptions.TooManyTags) as exc:
        h.client.tag_resource(resourceArn=arn, tags=[{"key": "one-more", "value": "v"}])
    assert exc.value.response["resourceName"] == arn
    with pytest.raises(h.client.exceptions.TooManyTags):
        h.client.create_activity(name="tagged", tags=[*fifty, {"key": "x", "value": "y"}])
    with pytest.raises(h.client.exceptions.ActivityDoesNotExist):  # nothing half-written
        h.client.describe_activity(
            activityArn=arn.replace(":stateMachine:sm", ":activity:tagged"))
    with pytest.raises(AwsError) as err:
        h.submit(h.api.call("TagResource", {"resourceArn": arn, "tags": [{"value": "no key"}]}))
    assert err.value.code == "ValidationException"
    with pytest.raises(h.client.exceptions.ResourceNotFound):
        h.client.list_tags_for_resource(resourceArn=arn + "-gone")


def test_nested_execution_sync(h: Harness) -> None:
    child = h.machine({"StartAt": "P", "States": {"P": {"Type": "Pass",
                                                         "Result": {"child": True},
                                                         "End": True}}}, name="child")
    parent = h.machine({"StartAt": "S", "States": {"S": {
        "Type": "Task", "Resource": "arn:aws:states:::states:startExecution.sync:2",
        "Parameters": {"StateMachineArn": child, "Input": {"from": "parent"}},
        "OutputPath": "$.Output", "End": True}}}, name="parent")
    exec_arn = h.client.start_execution(stateMachineArn=parent)["executionArn"]
    done = h.wait_done(exec_arn)
    assert done["status"] == "SUCCEEDED", done
    assert json.loads(done["output"]) == {"child": True}


def test_unknown_operation_and_error_shape(h: Harness) -> None:
    async def raw() -> tuple[int, dict[str, Any], dict[str, str]]:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/", "query_string": b"",
                 "headers": [(b"x-amz-target", b"AWSStepFunctions.DescribeExecution")]}
        response = await h.api.handle(Request(scope, receive))
        return response.status_code, json.loads(response.body), dict(response.headers)

    status, body, headers = h.submit(raw())
    assert status == 400
    assert body["__type"] == "ValidationException"
    assert headers["x-amzn-errortype"] == "ValidationException"
    assert headers["content-type"] == "application/x-amz-json-1.0"


def test_test_state(h: Harness) -> None:
    state = {"Type": "Pass", "Parameters": {"sum.$": "States.MathAdd($.a, $.b)"},
             "ResultPath": "$.r", "Next": "After"}
    out = h.client.test_state(definition=json.dumps(state), roleArn=ROLE,
                              input='{"a": 1, "b": 2}', inspectionLevel="DEBUG")
    assert out["status"] == "SUCCEEDED"
    assert json.loads(out["output"]) == {"a": 1, "b": 2, "r": {"sum": 3}}
    assert out["nextState"] == "After"
    assert out["inspectionData"] == {
        "input": '{"a":1,"b":2}', "afterInputPath": '{"a":1,"b":2}',
        "afterParameters": '{"sum":3}', "result": '{"sum":3}',
        "afterResultPath": '{"a":1,"b":2,"r":{"sum":3}}', "variables": "{}"}
    assert "inspectionData" not in h.client.test_state(definition=json.dumps(state),
                                                        roleArn=ROLE, input="{}")
    task = {"Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:double",
            "InputPath": "$.n", "ResultSelector": {"d.$": "$"}, "ResultPath": "$.out",
            "End": True}
    out = h.client.test_state(definition=json.dumps(task), roleArn=ROLE, input='{"n": 4}',
                              inspectionLevel="DEBUG")
    assert {k: out["inspectionData"][k] for k in (
        "afterInputPath", "result", "afterResultSelector", "afterResultPath")} == {
        "afterInputPath": "4", "result": "8", "afterResultSelector": '{"d":8}',
        "afterResultPath": '{"n":4,"out":{"d":8}}'}
    mapping = {"Type": "Map", "InputPath": "$.in", "ItemsPath": "$.xs", "End": True,
               "ItemProcessor": {"StartAt": "P", "States": {"P": {"Type": "Pass", "End": True}}},
               "ResultSelector": {"n.$": "States.ArrayLength($)"}}
    out = h.client.test_state(definition=json.dumps(mapping), roleArn=ROLE,
                              input='{"in": {"xs": [1, 2]}}', inspectionLevel="DEBUG")
    assert {k: out["inspectionData"][k] for k in ("afterInputPath", "afterItemsPath", "result",
                                                  "afterResultSelector")} == {
        "afterInputPath": '{"xs":[1,2]}', "afterItemsPath": "[1,2]", "result": "[1,2]",
        "afterResultSelector": '{"n":2}'}
    failing = {"Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:fail",
               "Retry": [{"ErrorEquals": ["Nope"]}],
               "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Handler",
                          "ResultPath": "$.err"}], "End": True}
    out = h.client.test_state(definition=json.dumps(failing), roleArn=ROLE, input="{}",
                              inspectionLevel="DEBUG")
    assert out["status"] == "CAUGHT_ERROR"
    assert out["nextState"] == "Handler" and out["error"] == "Exception"
    assert out["inspectionData"]["errorDetails"] == {"catchIndex": 0}
    failing["Retry"] = [{"ErrorEquals": ["Other"]}, {"ErrorEquals": ["States.ALL"],
                                                     "IntervalSeconds": 7}]
    out = h.client.test_state(definition=json.dumps(failing), roleArn=ROLE, input="{}",
                              inspectionLevel="DEBUG")
    assert out["status"] == "RETRIABLE"
    assert out["inspectionData"]["errorDetails"] == {"retryIndex": 1,
                                                     "retryBackoffIntervalSeconds": 7}
    failing["Retry"] = [{"ErrorEquals": ["States.ALL"], "MaxAttempts": 0}]
    out = h.client.test_state(definition=json.dumps(failing), roleArn=ROLE, input="{}")
    assert out["status"] == "CAUGHT_ERROR"  # a matching retrier with no attempts left
    machine = {"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Next": "B"},
        "B": {"Type": "Choice", "Choices": [{"Variable": "$x", "NumericEquals": 1, "Next": "A"}],
              "Default": "A"}}}
    out = h.client.test_state(definition=json.dumps(machine), stateName="B", roleArn=ROLE,
                              input="{}", variables='{"x": 1}')
    assert (out["status"], out["nextState"]) == ("SUCCEEDED", "A")
    out = h.client.test_state(definition=json.dumps({"Type": "Fail", "Error": "E"}),
                              roleArn=ROLE, input="{}")
    assert (out["status"], out["error"]) == ("FAILED", "E")
    with pytest.raises(h.client.exceptions.InvalidDefinition):
        h.client.test_state(definition=json.dumps({"Type": "Nope"}), roleArn=ROLE)


def test_versions_and_aliases(h: Harness) -> None:
    v1_def = {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": "v1", "End": True}}}
    v2_def = {"StartAt": "P", "States": {"P": {"Type": "Pass", "Result": "v2", "End": True}}}
    created = h.client.create_state_machine(name="ver", definition=json.dumps(v1_def),
                                            roleArn=ROLE, publish=True,
                                            versionDescription="first")
    arn = created["stateMachineArn"]
    v1 = created["stateMachineVersionArn"]
    assert v1 == f"{arn}:1"
    assert h.client.publish_state_machine_version(stateMachineArn=arn)[
        "stateMachineVersionArn"] == v1  # same revision: no new version
    v2 = h.client.update_state_machine(stateMachineArn=arn, definition=json.dumps(v2_def),
                                       publish=True)["stateMachineVersionArn"]
    assert v2 == f"{arn}:2"
    assert [v["stateMachineVersionArn"] for v in
            h.client.list_state_machine_versions(stateMachineArn=arn)[
                "stateMachineVersions"]] == [v2, v1]
    described = h.client.describe_state_machine(stateMachineArn=v1)
    assert json.loads(described["definition"]) == v1_def
    assert described["description"] == "first"

    run = h.client.start_execution(stateMachineArn=v1)["executionArn"]
    done = h.wait_done(run)
    assert json.loads(done["output"]) == "v1"
    assert done["stateMachineVersionArn"] == v1
    alias = h.client.create_state_machine_alias(
        name="live", routingConfiguration=[{"stateMachineVersionArn": v1, "weight": 100}],
    )["stateMachineAliasArn"]
    assert alias == f"{arn}:live"
    h.client.update_state_machine_alias(
        stateMachineAliasArn=alias,
        routingConfiguration=[{"stateMachineVersionArn": v2, "weight": 100}])
    assert h.client.describe_state_machine_alias(stateMachineAliasArn=alias)[
        "routingConfiguration"] == [{"stateMachineVersionArn": v2, "weight": 100}]
    run = h.client.start_execution(stateMachineArn=alias)["executionArn"]
    done = h.wait_done(run)
    assert json.loads(done["output"]) == "v2"
    assert (done["stateMachineAliasArn"], done["stateMachineVersionArn"]) == (alias, v2)
    by_alias = h.client.list_executions(stateMachineArn=alias)["executions"]
    assert [e["executionArn"] for e in by_alias] == [run]
    with pytest.raises(h.client.exceptions.ConflictException):
        h.client.delete_state_machine_version(stateMachineVersionArn=v2)
    with pytest.raises(h.client.exceptions.ValidationException):
        h.client.update_state_machine_alias(
            stateMachineAliasArn=alias,
            routingConfiguration=[{"stateMachineVersionArn": v2, "weight": 50}])
    assert [a["stateMachineAliasArn"] for a in h.client.list_state_machine_aliases(
        stateMachineArn=arn)["stateMachineAliases"]] == [alias]
    h.client.delete_state_machine_alias(stateMachineAliasArn=alias)
    h.client.delete_state_machine_version(stateMachineVersionArn=v2)
    with pytest.raises(h.client.exceptions.StateMachineDoesNotExist):
        h.client.start_execution(stateMachineArn=v2)


def test_redrive_execution(h: Harness) -> None:
    arn = h.machine({"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Assign": {"seen": "a"}, "Result": 1, "ResultPath": "$.a",
              "Next": "T"},
        "T": {"Type": "Task", "Resource": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:flaky-1",
              "Next": "B"},
        "B": {"Type": "Pass", "Parameters": {"seen.$": "$seen", "in.$": "$"}, "End": True}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn, input='{"k": 1}')["executionArn"]
    failed = h.wait_done(exec_arn)
    assert (failed["status"], failed["error"]) == ("FAILED", "FlakyError")
    assert failed["redriveStatus"] == "REDRIVABLE"
    h.client.redrive_execution(executionArn=exec_arn)
    done = h.wait_done(exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"]) == {"seen": "a", "in": {"k": 1, "a": 1}}
    assert done["redriveCount"] == 1 and "redriveDate" in done
    assert h.history(exec_arn) == [
        "ExecutionStarted", "PassStateEntered", "PassStateExited", "TaskStateEntered",
        "LambdaFunctionScheduled", "LambdaFunctionStarted", "LambdaFunctionFailed",
        "ExecutionFailed", "ExecutionRedriven", "TaskStateEntered", "LambdaFunctionScheduled",
        "LambdaFunctionStarted", "LambdaFunctionSucceeded", "TaskStateExited",
        "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]
    assert h.functions.counts["flaky-1"] == 2
    with pytest.raises(h.client.exceptions.ExecutionNotRedrivable):
        h.client.redrive_execution(executionArn=exec_arn)
    listed = h.client.list_executions(stateMachineArn=arn, redriveFilter="REDRIVEN")
    assert [e["executionArn"] for e in listed["executions"]] == [exec_arn]
    assert h.client.list_executions(stateMachineArn=arn, redriveFilter="NOT_REDRIVEN")[
        "executions"] == []
    with pytest.raises(h.client.exceptions.ClientError) as exc:
        h.client.list_executions(stateMachineArn=arn, redriveFilter="SOMETIMES")
    assert _code(exc) == "ValidationException"


def _lambda(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def test_redrive_reruns_only_the_failed_parallel_branch(h: Harness) -> None:
    arn = h.machine({"StartAt": "P", "States": {"P": {
        "Type": "Parallel", "End": True, "Branches": [
            {"StartAt": "D", "States": {"D": {"Type": "Task", "Resource": _lambda("double"),
                                                "InputPath": "$.n", "End": True}}},
            {"StartAt": "S", "States": {
                "S": {"Type": "Pass", "Result": "s", "ResultPath": "$.s", "Next": "F"},
                "F": {"Type": "Task", "Resource": _lambda("flaky-1"), "End": True}}}]}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn, input='{"n": 4}')["executionArn"]
    assert h.wait_done(exec_arn)["error"] == "FlakyError"
    h.client.redrive_execution(executionArn=exec_arn)
    done = h.wait_done(exec_arn)
    assert done["status"] == "SUCCEEDED"
    assert json.loads(done["output"]) == [8, {"n": 4, "s": "s"}]
    assert h.functions.counts == {"double": 1, "flaky-1": 2}  # the done branch kept its result
    types = h.history(exec_arn)
    after = types[types.index("ExecutionRedriven"):]
    # The failed branch continues from its failed state: S is not run again.
    assert after == ["ExecutionRedriven", "ParallelStateEntered", "ParallelStateStarted",
                     "TaskStateEntered", "LambdaFunctionScheduled", "LambdaFunctionStarted",
                     "LambdaFunctionSucceeded", "TaskStateExited", "ParallelStateSucceeded",
                     "ParallelStateExited", "ExecutionSucceeded"]


def test_redrive_reruns_only_the_failed_map_iterations(h: Harness) -> None:
    arn = h.machine({"StartAt": "M", "States": {"M": {
        "Type": "Map", "MaxConcurrency": 1, "End": True, "ItemProcessor": {
            "StartAt": "C", "States": {
                "C": {"Type": "Choice", "Default": "D", "Choices": [
                    {"Variable": "$", "NumericEquals": 3, "Next": "F"}]},
                "D": {"Type": "Task", "Resource": _lambda("double"), "End": True},
                "F": {"Type": "Task", "Resource": _lambda("flaky-1"), "End": True}}}}}})
    exec_arn = h.client.start_execution(stateMachineArn=arn, input="[1, 2, 3, 4]")[
        "executionArn"]
    assert h.wait_done(exec_arn)["error"] == "FlakyError"
    assert h.functions.counts == {"double": 2, "flaky-1": 1}  # item 4 never started
    h.client.redrive_execution(executionArn=exec_arn)
    done = h.wait_done(exec_arn)
    assert json.loads(done["output"]) == [2, 4, 3, 8]
    assert h.functions.counts == {"double": 3, "flaky-1": 2}
