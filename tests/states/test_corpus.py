"""Replay corpus: definitions + inputs with the expected output, error and history sequence.

Each ``corpus/*.json`` file holds a list of cases::

    {"name": ..., "definition": {...}, "input": {...},
     "expect": {"status": ..., "output": ..., "error": ..., "cause": ..., "cause_contains": ...,
                "events": [event types in order], "sleeps": [...], "elapsed": seconds,
                "calls": {"function": count}}}

Expectations were written from AWS's documented and recorded behaviour, not from Kiln's output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.states.helpers import FakeClock, FakeFunctions, make_services, run

CORPUS = Path(__file__).parent / "corpus"


def _cases() -> list[Any]:
    params = []
    for path in sorted(CORPUS.glob("*.json")):
        for case in json.loads(path.read_text()):
            params.append(pytest.param(case, id=f"{path.stem}::{case['name']}"))
    return params


@pytest.mark.parametrize("case", _cases())
def test_corpus(case: dict[str, Any]) -> None:
    clock = FakeClock()
    functions = FakeFunctions(clock)
    outcome, history = run(case["definition"], case.get("input", {}), clock=clock,
                           services=make_services(clock, functions),
                           express=case.get("express", False))
    expect = case["expect"]
    assert outcome.status == expect.get("status", "SUCCEEDED"), (outcome, history.types())
    if "output" in expect:
        assert outcome.output == expect["output"]
    if "error" in expect:
        assert outcome.error == expect["error"], outcome
    if "cause" in expect:
        assert outcome.cause == expect["cause"]
    if "cause_contains" in expect:
        assert outcome.cause is not None and expect["cause_contains"] in outcome.cause, outcome
    if "events" in expect:
        assert history.types() == expect["events"]
    if "sleeps" in expect:
        assert clock.sleeps == expect["sleeps"]
    if "elapsed" in expect:
        assert clock.now() - 1_700_000_000.0 == expect["elapsed"]
    if "calls" in expect:
        assert functions.counts == expect["calls"]
    if "payloads" in expect:
        assert [p for _, p in functions.calls] == expect["payloads"]
    if "assigned" in expect:
        exits = [e["stateExitedEventDetails"].get("assignedVariables")
                 for e in history.events if "stateExitedEventDetails" in e]
        assert [a for a in exits if a is not None] == expect["assigned"]
