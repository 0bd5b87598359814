"""The validator: AWS-style diagnostics for invalid definitions."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kiln.states.definition import (
    DefinitionError,
    parse_definition,
    valid_name,
    validate_definition,
)


def _diag(definition: Any, express: bool = False) -> list[tuple[str, str, str]]:
    text = definition if isinstance(definition, str) else json.dumps(definition)
    return [(d.code, d.message, d.location) for d in validate_definition(text, express)]


def _one(states: dict[str, Any], start: str = "A", **top: Any) -> dict[str, Any]:
    return {"StartAt": start, "States": states, **top}


def test_valid_definition_has_no_diagnostics() -> None:
    assert _diag(_one({"A": {"Type": "Pass", "End": True}})) == []


def test_missing_start_at() -> None:
    assert _diag({"States": {"A": {"Type": "Succeed"}}}) == [
        ("SCHEMA_VALIDATION_FAILED", "These fields are required: [StartAt]", "/")]


def test_not_json_and_empty() -> None:
    assert _diag("{not json")[0][0] == "INVALID_JSON_DESCRIPTION"
    assert _diag("") == [("INVALID_JSON_DESCRIPTION", "Definition must be a valid JSON object",
                          "/")]
    assert _diag("[1]")[0][1] == "Definition must be a valid JSON object"


def test_error_message_format() -> None:
    with pytest.raises(DefinitionError) as info:
        parse_definition(json.dumps({"States": {"A": {"Type": "Succeed"}}}))
    assert str(info.value) == (
        "Invalid State Machine Definition: 'SCHEMA_VALIDATION_FAILED: These fields are "
        "required: [StartAt] at /'")


def test_missing_transition_target() -> None:
    assert _diag(_one({"A": {"Type": "Pass", "Next": "Nope"}, "B": {"Type": "Succeed"}},
                      start="A")) == [
        ("MISSING_TRANSITION_TARGET", "Missing 'Next' target: Nope", "/States/A/Next"),
        ("MISSING_TRANSITION_TARGET", 'State "B" is not reachable.', "/States/B"),
    ]
    assert ("MISSING_TRANSITION_TARGET", "Missing 'Next' target: Z", "/StartAt") in _diag(
        _one({"A": {"Type": "Succeed"}}, start="Z"))


def test_catch_and_choice_targets_checked() -> None:
    diags = _diag(_one({
        "A": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:1:function:f", "End": True,
              "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "Gone"}]},
    }))
    assert diags == [("MISSING_TRANSITION_TARGET", "Missing 'Next' target: Gone",
                      "/States/A/Catch[0]/Next")]
    diags = _diag(_one({"A": {"Type": "Choice", "Default": "X", "Choices": [
        {"Variable": "$.a", "IsNull": True, "Next": "Y"}]}}))
    assert [d[2] for d in diags] == ["/States/A/Choices[0]/Next", "/States/A/Default",
                                     "/"]


_DIST = {"Mode": "DISTRIBUTED", "ExecutionType": "EXPRESS"}


def _map(config: dict[str, Any], **fields: Any) -> dict[str, Any]:
    return {"Type": "Map", "End": True, **fields, "ItemProcessor": {
        "ProcessorConfig": config, "StartAt": "I", "States": {"I": {"Type": "Succeed"}}}}


@pytest.mark.parametrize(("state", "message"), [
    ({"Type": "Nope", "End": True}, "The value for the field 'Type' must be one of"),
    ({"End": True}, "These fields are required: [Type]"),
    ({"Type": "Pass", "Next": "A", "End": True}, "Only one of 'Next' or 'End' may be present"),
    ({"Type": "Pass"}, "These fields are required: [Next | End]"),
    ({"Type": "Pass", "End": True, "Bogus": 1}, "Field 'Bogus' is not supported"),
    ({"Type": "Pass", "End": False}, "The value for the field 'End' must be true"),
    ({"Type": "Pass", "End": True, "ResultPath": "$.a[*]"},
     "The value for the field 'ResultPath' must be a valid Reference Path"),
    ({"Type": "Pass", "End": True, "InputPath": "nope"},
     "The value for the field 'InputPath' must be a valid JSONPath"),
    ({"Type": "Pass", "End": True, "Parameters": {"x.$": "not a path"}},
     "The value for the field 'x.$' must be a valid JSONPath or a valid intrinsic function call"),
    ({"Type": "Task", "End": True}, "These fields are required: [Resource]"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "TimeoutSeconds": 0},
     "The value for the field 'TimeoutSeconds' must be a positive integer"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "TimeoutSeconds": 5,
      "HeartbeatSeconds": 5}, "The value of 'HeartbeatSeconds' must be less than"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Retry": [
        {"ErrorEquals": ["States.ALL"]}, {"ErrorEquals": ["X"]}]},
     "States.ALL must appear alone in the last retrier or catcher"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Retry": [
        {"ErrorEquals": ["X"], "BackoffRate": 0.5}]},
     "The value for the field 'BackoffRate' must be a number greater than or equal to 1.0"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Retry": [
        {"ErrorEquals": ["X"], "JitterStrategy": "HALF"}]},
     "The value for the field 'JitterStrategy' must be one of [FULL, NONE]"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Retry": [{"MaxAttempts": 1}]},
     "These fields are required: [ErrorEquals]"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Retry": [
        {"ErrorEquals": ["X"], "MaxAttempts": -1}]},
     "The value for the field 'MaxAttempts' must be a non-negative integer"),
    ({"Type": "Wait", "Seconds": 1, "Timestamp": "2020-01-01T00:00:00Z", "End": True},
     "Exactly one of 'Seconds', 'Timestamp', 'SecondsPath' or 'TimestampPath' must be present"),
    ({"Type": "Wait", "Timestamp": "yesterday", "End": True},
     "The value for the field 'Timestamp' must be a valid ISO-8601 timestamp"),
    ({"Type": "Choice"}, "These fields are required: [Choices]"),
    ({"Type": "Choice", "Choices": [{"Variable": "$.a", "Next": "A"}]},
     "A choice rule must have a comparison operator"),
    ({"Type": "Choice", "Choices": [{"Variable": "$.a", "NumericEquals": "1", "Next": "A"}]},
     "The value of NumericEquals has the wrong type"),
    ({"Type": "Choice", "Choices": [{"StringEquals": "x", "Next": "A"}]},
     "These fields are required: [Variable]"),
    ({"Type": "Fail", "Error": "E", "ErrorPath": "$.e"},
     "Only one of 'Error' or 'ErrorPath' may be present"),
    ({"Type": "Parallel", "End": True}, "These fields are required: [Branches]"),
    ({"Type": "Map", "End": True}, "These fields are required: [ItemProcessor]"),
    ({"Type": "Pass", "End": True, "Assign": {"bad-name": 1}},
     "The variable name 'bad-name' is not valid"),
    ({"Type": "Task", "Resource": "arn:x", "End": True, "Arguments": {}},
     "The field 'Arguments' is only supported for JSONata"),
    (_map({"Mode": "DISTRIBUTED"}),
     "The value for the field 'ExecutionType' must be one of [STANDARD, EXPRESS]"),
    (_map({"Mode": "INLINE"}, ItemBatcher={"MaxItemsPerBatch": 2}),
     "The field 'ItemBatcher' is only supported for a Map state in DISTRIBUTED mode"),
    (_map(_DIST, ItemReader={"Resource": "arn:aws:states:::s3:putObject"}),
     "The value for the field 'Resource' must be one of [arn:aws:states:::s3:getObject"),
    (_map(_DIST, ItemReader={"Resource": "arn:aws:states:::s3:getObject",
                             "ReaderConfig": {"InputType": "XML"}}),
     "The value for the field 'InputType' must be one of [CSV, JSON, JSONL, MANIFEST, "
     "PARQUET]"),
    (_map(_DIST, ItemReader={"Resource": "arn:aws:states:::s3:getObject",
                             "ReaderConfig": {"InputType": "CSV",
                                              "CSVHeaderLocation": "GIVEN"}}),
     "These fields are required: [CSVHeaders]"),
    (_map(_DIST, ItemReader={"Resource": "arn:aws:states:::s3:getObject",
                             "ReaderConfig": {"MaxItems": -1}}),
     "The value for the field 'MaxItems' must be a non-negative integer"),
    (_map(_DIST, ResultWriter={}), "The field 'ResultWriter' must be a non-empty object"),
    (_map(_DIST, ResultWriter={"WriterConfig": {"Transformation": "SQUASH"}}),
     "The value for the field 'Transformation' must be one of [NONE, COMPACT, FLATTEN]"),
    (_map(_DIST, ResultWriter={"Resource": "arn:aws:states:::s3:getObject"}),
     "The value for the field 'Resource' must be arn:aws:states:::s3:putObject"),
    (_map(_DIST, ItemBatcher={"BatchInput": {}}),
     "At least one of 'MaxItemsPerBatch', 'MaxItemsPerBatchPath', 'MaxInputBytesPerBatch' or "
     "'MaxInputBytesPerBatchPath' must be present"),
    (_map(_DIST, ItemBatcher={"MaxInputBytesPerBatch": 262145}),
     "The value for the field 'MaxInputBytesPerBatch' must be a non-negative integer no "
     "greater than 262144"),
    (_map(_DIST, ItemBatcher={"MaxItemsPerBatch": 1, "MaxItemsPerBatchPath": "$.n"}),
     "Only one of 'MaxItemsPerBatch' or 'MaxItemsPerBatchPath' may be present"),
])
def test_state_errors(state: dict[str, Any], message: str) -> None:
    diags = _diag(_one({"A": state}))
    assert any(message in d[1] for d in diags), diags


def test_duplicate_state_names_across_branches() -> None:
    diags = _diag(_one({"A": {"Type": "Parallel", "End": True, "Branches": [
        {"StartAt": "A", "States": {"A": {"Type": "Succeed"}}}]}}))
    assert ("DUPLICATE_STATE_NAME", "Duplicate State name: A",
            "/States/A/Branches[0]/States/A") in diags


def test_nested_branch_errors_have_locations() -> None:
    diags = _diag(_one({"A": {"Type": "Map", "End": True, "ItemProcessor": {
        "StartAt": "I", "States": {"I": {"Type": "Pass", "Next": "Missing"}}}}}))
    assert ("MISSING_TRANSITION_TARGET", "Missing 'Next' target: Missing",
            "/States/A/ItemProcessor/States/I/Next") in diags


def test_jsonata_rules() -> None:
    diags = _diag(_one({"A": {"Type": "Pass", "End": True, "InputPath": "$"}},
                       QueryLanguage="JSONata"))
    assert diags == [("SCHEMA_VALIDATION_FAILED",
                      "The field 'InputPath' is not supported for JSONata", "/States/A/InputPath")]
    diags = _diag(_one({"A": {"Type": "Pass", "End": True, "QueryLanguage": "JSONPath"}},
                       QueryLanguage="JSONata"))
    assert diags[0][1] == ("'QueryLanguage' can not be 'JSONPath' if set to 'JSONata' for "
                           "whole state machine")
    assert _diag(_one({"A": {"Type": "Pass", "End": True, "QueryLanguage": "JSONata",
                             "Output": "{% 1 %}"}})) == []


def test_express_rejects_callbacks_and_activities() -> None:
    definition = _one({"A": {"Type": "Task", "End": True,
                             "Resource": "arn:aws:states:::lambda:invoke.waitForTaskToken"}})
    assert _diag(definition) == []
    assert _diag(definition, express=True) == [(
        "SCHEMA_VALIDATION_FAILED",
        "Express state machine does not support '.waitForTaskToken' service integration",
        "/States/A/Resource")]
    activity = _one({"A": {"Type": "Task", "End": True,
                           "Resource": "arn:aws:states:us-east-1:1:activity:x"}})
    assert len(_diag(activity, express=True)) == 1


def test_top_level_fields() -> None:
    assert _diag(_one({"A": {"Type": "Succeed"}}, TimeoutSeconds=-1))[0][2] == "/TimeoutSeconds"
    assert _diag(_one({"A": {"Type": "Succeed"}}, Version="2.0"))[0][2] == "/Version"
    assert _diag(_one({"A": {"Type": "Succeed"}}, Extra=1)) == [
        ("SCHEMA_VALIDATION_FAILED", "Field 'Extra' is not supported", "/")]
    assert _diag({"StartAt": "A", "States": {}})[0][1] == (
        "The field 'States' must be a non-empty object")


def test_no_terminal_state() -> None:
    diags = _diag(_one({"A": {"Type": "Pass", "Next": "B"}, "B": {"Type": "Pass", "Next": "A"}}))
    assert [d[0] for d in diags] == ["MISSING_TERMINAL_STATE"]


@pytest.mark.parametrize(("name", "ok"), [
    ("good-name_1", True), ("a" * 80, True), ("a" * 81, False), ("", False), ("has space", False),
    ("semi;colon", False), ("ctl\x01", False), ("star*", False), ("ünïcode", True),
])
def test_names(name: str, ok: bool) -> None:
    assert valid_name(name) is ok
