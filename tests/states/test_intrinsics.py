"""Intrinsic functions through a Pass state's Parameters, with AWS's recorded results."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from kiln.states.definition import validate_definition
from kiln.states.intrinsics import IntrinsicSyntaxError, compile_intrinsic
from tests.states.helpers import expect_row, run

TABLE = json.loads((Path(__file__).parent / "tables" / "intrinsics.json").read_text())


def _machine(expr: str) -> dict[str, Any]:
    return {"StartAt": "P", "States": {
        "P": {"Type": "Pass", "Parameters": {"r.$": expr}, "OutputPath": "$.r", "End": True}}}


@pytest.mark.parametrize(("expr", "data", "expected"), TABLE,
                         ids=[f"{i}-{c[0][:40]}" for i, c in enumerate(TABLE)])
def test_intrinsic(expr: str, data: Any, expected: Any) -> None:
    outcome, _ = run(_machine(expr), data)
    expect_row(outcome, expected)
    if outcome.status == "FAILED":
        assert outcome.cause is not None and "entered at the event id #2" in outcome.cause


def test_uuid_and_random() -> None:
    outcome, _ = run({"StartAt": "P", "States": {"P": {"Type": "Pass", "Parameters": {
        "u.$": "States.UUID()", "r.$": "States.MathRandom(1, 10)",
        "s1.$": "States.MathRandom(0, 1000, 7)", "s2.$": "States.MathRandom(0, 1000, 7)"},
        "End": True}}})
    out = outcome.output
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}",
                        out["u"])
    assert 1 <= out["r"] < 10
    assert out["s1"] == out["s2"]


@pytest.mark.parametrize("bad", [
    "States.Nope(1)", "States.Format('x'", "States.UUID(1)", "States.ArrayRange(1, 2)",
    "States.Format('a\\q')", "States.Format('x') trailing", "States.Array($.[)",
])
def test_syntax_errors_rejected(bad: str) -> None:
    with pytest.raises(IntrinsicSyntaxError):
        compile_intrinsic(bad)
    diagnostics = validate_definition(json.dumps(_machine(bad)))
    assert [d.code for d in diagnostics] == ["SCHEMA_VALIDATION_FAILED"]
    assert diagnostics[0].message == (
        "The value for the field 'r.$' must be a valid JSONPath or a valid intrinsic function call")
    assert diagnostics[0].location == "/States/P/Parameters"


def test_intrinsic_in_result_selector_and_item_selector() -> None:
    definition = {"StartAt": "M", "States": {"M": {
        "Type": "Map", "ItemsPath": "$.xs",
        "ItemSelector": {"i.$": "$$.Map.Item.Index", "v.$": "States.MathAdd($$.Map.Item.Value, 10)",
                         "tag.$": "$.tag"},
        "ItemProcessor": {"StartAt": "I", "States": {"I": {"Type": "Pass", "End": True}}},
        "ResultSelector": {"n.$": "States.ArrayLength($)", "all.$": "$"},
        "End": True}}}
    outcome, _ = run(definition, {"xs": [1, 2], "tag": "t"})
    assert outcome.output == {"n": 2, "all": [{"i": 0, "v": 11, "tag": "t"},
                                              {"i": 1, "v": 12, "tag": "t"}]}
