"""JSONata mode: expressions (through a JSONata Pass state) and state-level semantics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kiln.states import jsonata
from kiln.states.definition import validate_definition
from tests.states.helpers import expect_row, run

TABLE = json.loads((Path(__file__).parent / "tables" / "jsonata.json").read_text())


def _machine(expr: str) -> dict[str, Any]:
    return {"QueryLanguage": "JSONata", "StartAt": "A", "States": {
        "A": {"Type": "Pass", "Assign": {"var_constant_1": 1}, "Next": "J"},
        "J": {"Type": "Pass", "Output": "{% " + expr + " %}", "End": True}}}


@pytest.mark.parametrize(("expr", "data", "expected"), TABLE,
                         ids=[f"{i}-{c[0][:40]}" for i, c in enumerate(TABLE)])
def test_expression(expr: str, data: Any, expected: Any) -> None:
    outcome, _ = run(_machine(expr), data)
    expect_row(outcome, expected)


_VOLATILE = ("$random", "$uuid", "$now", "$millis", "$shuffle")


@pytest.mark.parametrize(("expr", "data"), [
    (c[0], c[1]) for c in TABLE if not any(v in c[0] for v in _VOLATILE)])
def test_tuple_stream_paths_agree_with_plain_paths(expr: str, data: Any) -> None:
    """Expressions using '#', '@' or '%' evaluate every path as a tuple stream; that evaluator
    must give the same answer as the plain one on every expression of the table."""
    bindings = {"states": {"input": data, "context": {}}, "var_constant_1": 1}

    def outcome(node: Any) -> Any:
        try:
            value = jsonata._collapse(jsonata._Evaluator(data).eval(
                node, data, jsonata._Env(dict(bindings), None)))
        except jsonata.JsonataError:
            return "error"
        return "error" if value is jsonata.UNDEF else jsonata._to_json(value)

    plain = jsonata.compile_expression(expr)
    assert outcome(jsonata._tuple_paths(plain)) == outcome(plain)


def test_uuid_random_now() -> None:
    outcome, _ = run(_machine("{'u': $uuid(), 'r': $random(), 'n': $now(), 'm': $millis()}"))
    out = outcome.output
    assert len(out["u"]) == 36 and out["u"][14] == "4"
    assert 0 <= out["r"] < 1
    assert out["n"].endswith("Z") and isinstance(out["m"], int)


def test_only_exact_templates_are_evaluated() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "P", "States": {"P": {
        "Type": "Pass", "Output": {"x": " {% 1 + 1 %} ", "y": "{% 1 + 1 %}", "z": [
            "{% 'a' %}", "plain"]}, "End": True}}}
    outcome, _ = run(definition)
    assert outcome.output == {"x": " {% 1 + 1 %} ", "y": 2, "z": ["a", "plain"]}


def test_task_arguments_output_assign() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:states:::lambda:invoke",
              "Arguments": {"FunctionName": "double", "Payload": "{% $states.input.n %}"},
              "Assign": {"last": "{% $states.result.Payload %}",
                         "was": "{% $states.input.n %}"},
              "Output": "{% {'doubled': $states.result.Payload} %}", "Next": "P"},
        "P": {"Type": "Pass", "Output": "{% [$last, $was, $states.input.doubled] %}",
              "End": True}}}
    outcome, history = run(definition, {"n": 21})
    assert outcome.output == [42, 21, 42]
    exited = next(e for e in history.events if e["type"] == "TaskStateExited")
    assert exited["stateExitedEventDetails"]["assignedVariables"] == {"last": "42", "was": "21"}


def test_choice_condition_and_wait_and_fail() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [
            {"Condition": "{% $states.input.n > 10 %}", "Next": "W",
             "Assign": {"Assignment": "Condition assignment"},
             "Output": "{% {'n': $states.input.n} %}"}], "Default": "F"},
        "W": {"Type": "Wait", "Seconds": "{% $states.input.n %}", "Next": "Done"},
        "Done": {"Type": "Pass", "Output": "{% $Assignment %}", "End": True},
        "F": {"Type": "Fail", "Error": "{% 'Small' %}",
              "Cause": "{% 'n was ' & $states.input.n %}"}}}
    outcome, _ = run(definition, {"n": 12, "other": 1})
    assert outcome.output == "Condition assignment"
    outcome, _ = run(definition, {"n": 1})
    assert (outcome.error, outcome.cause) == ("Small", "n was 1")


def test_condition_must_be_boolean() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "C", "States": {
        "C": {"Type": "Choice", "Choices": [{"Condition": "{% 1 %}", "Next": "S"}]},
        "S": {"Type": "Succeed"}}}
    outcome, _ = run(definition)
    assert outcome.error == "States.QueryEvaluationError"


def test_map_items_and_item_selector() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "M", "States": {"M": {
        "Type": "Map", "Items": "{% $states.input.xs %}",
        "ItemSelector": {"v": "{% $states.context.Map.Item.Value * 2 %}",
                         "i": "{% $states.context.Map.Item.Index %}"},
        "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Pass", "End": True}}},
        "Output": "{% $states.result.v %}", "End": True}}}
    outcome, _ = run(definition, {"xs": [1, 2, 3]})
    assert outcome.output == [2, 4, 6]


def test_map_items_must_be_array() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "M", "States": {"M": {
        "Type": "Map", "Items": "{% 1 %}",
        "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Pass", "End": True}}},
        "End": True}}}
    outcome, _ = run(definition)
    assert outcome.error == "States.QueryEvaluationError"
    assert outcome.cause == ("The Items field returned an unexpected result type. Expected "
                             "'array', but was 'number' for value: 1")


def test_catch_error_output() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "T", "States": {
        "T": {"Type": "Task", "Resource": "arn:aws:lambda:us-east-1:123456789012:function:fail",
              "Catch": [{"ErrorEquals": ["States.ALL"], "Next": "H",
                         "Output": "{% {'err': $states.errorOutput.Error, 'in': $states.input} %}",
                         "Assign": {"failed": True}}], "End": True},
        "H": {"Type": "Pass", "Output": "{% $merge([$states.input, {'failed': $failed}]) %}",
              "End": True}}}
    outcome, _ = run(definition, {"k": 1})
    assert outcome.output == {"err": "Exception", "in": {"k": 1}, "failed": True}


def test_parallel_jsonata_result() -> None:
    definition = {"QueryLanguage": "JSONata", "StartAt": "P", "States": {"P": {
        "Type": "Parallel", "Arguments": {"v": "{% $states.input.n %}"},
        "Branches": [
            {"StartAt": "A", "States": {"A": {"Type": "Pass",
                                                "Output": "{% $states.input.v + 1 %}",
                                                "End": True}}},
            {"StartAt": "B", "States": {"B": {"Type": "Pass",
                                                "Output": "{% $states.input.v * 10 %}",
                                                "End": True}}}],
        "Output": "{% $sum($states.result) %}", "End": True}}}
    outcome, _ = run(definition, {"n": 2})
    assert outcome.output == 23


def test_mixed_state_level_query_language() -> None:
    definition = {"StartAt": "A", "States": {
        "A": {"Type": "Pass", "Parameters": {"x.$": "$.n"}, "Assign": {"seen.$": "$.x"},
              "Next": "B"},
        "B": {"Type": "Pass", "QueryLanguage": "JSONata",
              "Output": "{% $states.input.x + $seen %}", "End": True}}}
    outcome, _ = run(definition, {"n": 4})
    assert outcome.output == 8


def test_undefined_result_is_an_error() -> None:
    outcome, history = run(_machine("$states.input.missing"), {})
    assert outcome.error == "States.QueryEvaluationError"
    assert history.types()[-1] == "ExecutionFailed"


@pytest.mark.parametrize("expr", ["1 +", "'it\\'s'", "$x.#", "5.$", "null.a", "/(/"])
def test_syntax_error_rejected_at_definition_time(expr: str) -> None:
    diagnostics = validate_definition(json.dumps(_machine(expr)))
    assert [d.code for d in diagnostics] == ["SCHEMA_VALIDATION_FAILED"]
    assert diagnostics[0].location == "/States/J/Output"
