"""Step Functions through boto3 on the one Kiln endpoint, with a Lambda task."""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import KilnServer, create_python_function

DEFINITION = {
    "StartAt": "Double",
    "States": {
        "Double": {"Type": "Task", "Resource": "", "ResultPath": "$.doubled", "Next": "Check"},
        "Check": {"Type": "Choice",
                  "Choices": [{"Variable": "$.doubled.n", "NumericGreaterThan": 10,
                               "Next": "Big"}],
                  "Default": "Small"},
        "Big": {"Type": "Succeed"},
        "Small": {"Type": "Fail", "Error": "TooSmall", "Cause": "n was small"},
    },
}


def run(sfn: Any, machine_arn: str, payload: dict[str, Any]) -> dict[str, Any]:
    execution = sfn.start_execution(stateMachineArn=machine_arn, input=json.dumps(payload))
    for _ in range(600):
        described: dict[str, Any] = sfn.describe_execution(
            executionArn=execution["executionArn"])
        if described["status"] != "RUNNING":
            return described
        time.sleep(0.05)
    raise AssertionError("execution did not finish")


def test_lambda_task_workflow(kiln_server: KilnServer, lambda_client: Any) -> None:
    name = create_python_function(
        lambda_client, "def handler(event, context):\n    return {'n': event['n'] * 2}\n")
    arn = lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    definition = json.loads(json.dumps(DEFINITION))
    definition["States"]["Double"]["Resource"] = arn
    sfn = kiln_server.client("stepfunctions")
    machine = sfn.create_state_machine(name=f"m-{name}", definition=json.dumps(definition),
                                       roleArn="arn:aws:iam::000000000000:role/sfn")
    big = run(sfn, machine["stateMachineArn"], {"n": 6})
    assert big["status"] == "SUCCEEDED"
    assert json.loads(big["output"]) == {"n": 6, "doubled": {"n": 12}}
    small = run(sfn, machine["stateMachineArn"], {"n": 2})
    assert small["status"] == "FAILED" and small["error"] == "TooSmall"
    history = sfn.get_execution_history(executionArn=big["executionArn"])["events"]
    types = [event["type"] for event in history]
    assert types[0] == "ExecutionStarted" and types[-1] == "ExecutionSucceeded"
    assert "LambdaFunctionSucceeded" in types


def test_missing_function_fails_the_task(kiln_server: KilnServer) -> None:
    definition = json.loads(json.dumps(DEFINITION))
    definition["States"]["Double"]["Resource"] = (
        "arn:aws:lambda:us-east-1:000000000000:function:does-not-exist")
    sfn = kiln_server.client("stepfunctions")
    machine = sfn.create_state_machine(name="m-missing", definition=json.dumps(definition),
                                       roleArn="arn:aws:iam::000000000000:role/sfn")
    failed = run(sfn, machine["stateMachineArn"], {"n": 6})
    assert failed["status"] == "FAILED"
    assert failed["error"] == "Lambda.ResourceNotFoundException"
