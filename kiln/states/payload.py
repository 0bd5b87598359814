"""Payload templates: Parameters, ResultSelector, ItemSelector and Assign in JSONPath mode.

Keys ending in ``.$`` take their value from a path (``$``, ``$$``, ``$var``) or an intrinsic
function call; templates are compiled once and evaluated against an ``Env``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field

from kiln.states.intrinsics import IntrinsicSyntaxError, compile_intrinsic, is_intrinsic
from kiln.states.jsonpath import Path, PathSyntaxError, compile_path
from kiln.states.types import JSON, PathFailure


@dataclass(slots=True)
class Env:
    """What expressions can see: the current value, the context object and variables."""

    input: JSON
    context: JSON
    variables: dict[str, JSON] = field(default_factory=dict)

    def with_input(self, value: JSON) -> Env:
        return Env(value, self.context, self.variables)


Expression = Callable[[Env], JSON]


dumps: Callable[[JSON], str] = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Compact JSON, as Step Functions writes it (one shared encoder: no per-call setup)."""


def context_of(env: Env) -> JSON:
    """The context object (``$$``); engines may pass it as a zero-argument builder."""
    ctx = env.context
    return ctx() if callable(ctx) else ctx


def resolve_path(path: Path, env: Env) -> JSON:
    if path.root == "$":
        return path.find(env.input)
    if path.root == "$$":
        return path.find(context_of(env))
    assert path.var is not None
    if path.var not in env.variables:
        raise PathFailure(f"Invalid path '{path.source}': The variable '${path.var}' is undefined")
    return path.find(env.variables[path.var])


def compile_expression(text: str) -> Expression:
    """A ``.$`` value: a path or an intrinsic function; raises ValueError when malformed."""
    if is_intrinsic(text):
        call = compile_intrinsic(text)
        return lambda env: call.evaluate(lambda p: resolve_path(p, env))
    path = compile_path(text)
    return lambda env: resolve_path(path, env)


class TemplateError(ValueError):
    def __init__(self, key: str, location: str) -> None:
        super().__init__(key)
        self.key = key
        self.location = location


def compile_template(template: JSON, location: str) -> Expression:
    """Compile a payload template; raises TemplateError naming the bad ``.$`` field."""
    if isinstance(template, dict):
        parts: list[tuple[str, Expression, str | None]] = []
        dynamic = False
        for key, value in template.items():
            if key.endswith(".$"):
                name = key[:-2]
                if not isinstance(value, str):
                    raise TemplateError(key, location)
                try:
                    expr = compile_expression(value)
                except (PathSyntaxError, IntrinsicSyntaxError, ValueError):
                    raise TemplateError(key, location) from None
                parts.append((name, described(expr, key, value), value))
                dynamic = True
            else:
                sub = compile_template(value, location)
                parts.append((key, sub, None))
                dynamic = dynamic or not _is_constant(sub)
        if not dynamic:
            return _constant(template)

        def build(env: Env) -> JSON:
            return {name: expr(env) for name, expr, _ in parts}

        return build
    if isinstance(template, list):
        items = [compile_template(v, location) for v in template]
        if all(_is_constant(i) for i in items):
            return _constant(template)
        return lambda env: [i(env) for i in items]
    return _constant(template)


def described(expr: Expression, key: str, source: str) -> Expression:
    """``expr`` whose path failures name the field ``key`` and the input, as AWS words them."""

    def run(env: Env) -> JSON:
        try:
            return expr(env)
        except PathFailure as exc:
            # Intrinsic failures and undefined variables already say what went wrong.
            if source.startswith("States.") or str(exc).startswith("Invalid path"):
                raise
            raise PathFailure(
                f"The JSONPath '{source}' specified for the field '{key}' could not be found "
                f"in the input '{dumps(env.input)}'"
            ) from None

    return run


class _Constant:
    __slots__ = ("value",)

    def __init__(self, value: JSON) -> None:
        self.value = value

    def __call__(self, env: Env) -> JSON:
        return self.value


def _constant(value: JSON) -> Expression:
    return _Constant(value)


def _is_constant(expr: Expression) -> bool:
    return isinstance(expr, _Constant)
