"""Every Choice comparison operator (and its *Path form), combinators and failure modes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.states.choice import OPERATORS
from tests.states.helpers import run

TABLE = json.loads((Path(__file__).parent / "tables" / "choice_operators.json").read_text())


def _machine(rule: dict[str, Any]) -> dict[str, Any]:
    return {
        "StartAt": "C",
        "States": {
            "C": {"Type": "Choice", "Choices": [{**rule, "Next": "T"}], "Default": "F"},
            "T": {"Type": "Pass", "Result": True, "End": True},
            "F": {"Type": "Pass", "Result": False, "End": True},
        },
    }


@pytest.mark.parametrize(("op", "value", "operand", "expected"), TABLE,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(TABLE)])
def test_operator(op: str, value: Any, operand: Any, expected: bool) -> None:
    if op.endswith("Path"):
        rule = {"Variable": "$.v", op: "$.other"}
        data = {"v": value, "other": operand}
    else:
        rule = {"Variable": "$.v", op: operand}
        data = {"v": value}
    outcome, history = run(_machine(rule), data)
    assert outcome.status == "SUCCEEDED", outcome
    assert outcome.output is expected
    assert history.types() == ["ExecutionStarted", "ChoiceStateEntered", "ChoiceStateExited",
                               "PassStateEntered", "PassStateExited", "ExecutionSucceeded"]


def test_table_covers_every_operator() -> None:
    covered = {row[0] for row in TABLE}
    assert OPERATORS - covered == {"IsPresent"}


@pytest.mark.parametrize(("data", "expected"), [({"v": None}, True), ({}, False)])
def test_is_present(data: dict[str, Any], expected: bool) -> None:
    outcome, _ = run(_machine({"Variable": "$.v", "IsPresent": True}), data)
    assert outcome.output is expected


def test_combinators() -> None:
    rule = {"And": [
        {"Variable": "$.n", "NumericGreaterThan": 1},
        {"Or": [{"Variable": "$.s", "StringEquals": "x"},
                {"Variable": "$.s", "StringEquals": "y"}]},
        {"Not": {"Variable": "$.b", "BooleanEquals": True}},
    ]}
    assert run(_machine(rule), {"n": 2, "s": "y", "b": False})[0].output is True
    assert run(_machine(rule), {"n": 2, "s": "z", "b": False})[0].output is False
    assert run(_machine(rule), {"n": 2, "s": "x", "b": True})[0].output is False
    assert run(_machine(rule), {"n": 0, "s": "x", "b": False})[0].output is False



def test_first_matching_rule_wins_and_output_path() -> None:
    definition = {"StartAt": "C", "States": {
        "C": {"Type": "Choice", "OutputPath": "$.keep", "Choices": [
            {"Variable": "$.n", "NumericGreaterThan": 0, "Next": "A"},
            {"Variable": "$.n", "NumericGreaterThan": 1, "Next": "B"}]},
        "A": {"Type": "Pass", "Result": "A", "ResultPath": "$.who", "End": True},
        "B": {"Type": "Pass", "Result": "B", "ResultPath": "$.who", "End": True}}}
    outcome, _ = run(definition, {"n": 5, "keep": {"k": 1}})
    assert outcome.output == {"k": 1, "who": "A"}


def test_missing_variable_is_runtime_error() -> None:
    outcome, history = run(_machine({"Variable": "$.nope", "StringEquals": "x"}), {})
    assert outcome.status == "FAILED"
    assert outcome.error == "States.Runtime"
    assert outcome.cause is not None
    assert "Invalid path '$.nope'" in outcome.cause
    assert history.types() == ["ExecutionStarted", "ChoiceStateEntered", "ExecutionFailed"]


def test_no_match_without_default_is_runtime_error() -> None:
    definition = {"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{"Variable": "$.n", "NumericEquals": 1, "Next": "T"}]},
        "T": {"Type": "Succeed"}}}
    outcome, _ = run(definition, {"n": 2})
    assert outcome.status == "FAILED"
    assert outcome.error == "States.Runtime"
    assert outcome.cause is not None and "entered at the event id #2" in outcome.cause


def test_choice_assign_rule_and_state_level() -> None:
    definition = {"StartAt": "C", "States": {
        "C": {"Type": "Choice", "Assign": {"s": "state"}, "Choices": [
            {"Variable": "$.n", "NumericEquals": 1, "Next": "T",
             "Assign": {"Assignment": "Condition assignment", "n.$": "$.n"}}]},
        "T": {"Type": "Pass", "Parameters": {"a.$": "$Assignment", "s.$": "$s", "n.$": "$n"},
              "End": True}}}
    outcome, history = run(definition, {"n": 1})
    assert outcome.output == {"a": "Condition assignment", "s": "state", "n": 1}
    exited = history.events[2]["stateExitedEventDetails"]
    assert exited["assignedVariables"] == {"s": "\"state\"",
                                           "Assignment": "\"Condition assignment\"", "n": "1"}


def test_choice_variable_can_read_context_and_variables() -> None:
    definition = {"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Assign": {"limit": 3}, "Next": "C"},
        "C": {"Type": "Choice", "Choices": [
            {"And": [{"Variable": "$$.Execution.Name", "StringEquals": "exec"},
                     {"Variable": "$.n", "NumericLessThanPath": "$limit"}], "Next": "T"}],
            "Default": "F"},
        "T": {"Type": "Pass", "Result": True, "End": True},
        "F": {"Type": "Pass", "Result": False, "End": True}}}
    assert run(definition, {"n": 2})[0].output is True
    assert run(definition, {"n": 4})[0].output is False
