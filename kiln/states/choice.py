"""Choice rules (JSONPath mode): every comparison operator, its ``*Path`` form, And/Or/Not."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kiln.states.jsonpath import Path, PathSyntaxError, compile_path
from kiln.states.payload import Env, resolve_path
from kiln.states.types import JSON, PathFailure

Rule = Callable[[Env], bool]

_TIMESTAMP = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:\d{2})$"
)


def parse_timestamp(value: JSON) -> datetime | None:
    """An RFC 3339 timestamp (``T`` and a zone required), or None."""
    if not isinstance(value, str):
        return None
    m = _TIMESTAMP.match(value)
    if not m:
        return None
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    micro = int((m.group(7) or "0")[:6].ljust(6, "0"))
    zone = m.group(8)
    if zone == "Z":
        tz = UTC
    else:
        sign = 1 if zone[0] == "+" else -1
        tz = timezone(sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6])))
    try:
        return datetime(year, month, day, hour, minute, second, micro, tzinfo=tz)
    except ValueError:
        return None


def _is_num(v: JSON) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _string_matches(pattern: str) -> re.Pattern[str]:
    out = []
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\" and i + 1 < len(pattern) and pattern[i + 1] in "*\\":
            out.append(re.escape(pattern[i + 1]))
            i += 2
            continue
        out.append(".*" if c == "*" else re.escape(c))
        i += 1
    return re.compile("".join(out), re.DOTALL)


_CMP: dict[str, Callable[[int], bool]] = {
    "Equals": lambda c: c == 0,
    "LessThan": lambda c: c < 0,
    "GreaterThan": lambda c: c > 0,
    "LessThanEquals": lambda c: c <= 0,
    "GreaterThanEquals": lambda c: c >= 0,
}


def _compare(a: Any, b: Any) -> int:
    return int(a > b) - int(a < b)


def _typed_compare(kind: str, rel: Callable[[int], bool]) -> Callable[[JSON, JSON], bool]:
    if kind == "String":
        return lambda a, b: isinstance(a, str) and isinstance(b, str) and rel(_compare(a, b))
    if kind == "Numeric":
        return lambda a, b: _is_num(a) and _is_num(b) and rel(_compare(a, b))
    if kind == "Boolean":
        return lambda a, b: isinstance(a, bool) and isinstance(b, bool) and rel(_compare(a, b))

    def timestamps(a: JSON, b: JSON) -> bool:
        ta, tb = parse_timestamp(a), parse_timestamp(b)
        return ta is not None and tb is not None and rel(_compare(ta, tb))

    return timestamps


COMPARISONS: dict[str, tuple[Callable[[JSON, JSON], bool], str]] = {}
for _kind in ("String", "Numeric", "Timestamp"):
    for _rel, _fn in _CMP.items():
        COMPARISONS[_kind + _rel] = (_typed_compare(_kind, _fn), _kind)
COMPARISONS["BooleanEquals"] = (_typed_compare("Boolean", _CMP["Equals"]), "Boolean")

TYPE_TESTS: dict[str, Callable[[JSON], bool]] = {
    "IsNull": lambda v: v is None,
    "IsNumeric": _is_num,
    "IsString": lambda v: isinstance(v, str),
    "IsBoolean": lambda v: isinstance(v, bool),
    "IsTimestamp": lambda v: parse_timestamp(v) is not None,
}

OPERATORS = (
    set(COMPARISONS)
    | {k + "Path" for k in COMPARISONS}
    | set(TYPE_TESTS)
    | {"IsPresent", "StringMatches"}
)


class RuleError(ValueError):
    def __init__(self, message: str, location: str) -> None:
        super().__init__(message)
        self.location = location


def _variable(path: Path) -> Callable[[Env], JSON]:
    def get(env: Env) -> JSON:
        try:
            return resolve_path(path, env)
        except PathFailure:
            raise PathFailure(
                f"Invalid path '{path.source}': The choice state's condition path references an "
                "invalid value."
            ) from None

    return get


def _path(text: JSON, location: str) -> Path:
    if not isinstance(text, str):
        raise RuleError("must be a valid JSONPath", location)
    try:
        return compile_path(text)
    except PathSyntaxError:
        raise RuleError(f"The value for the field must be a valid JSONPath: {text}",
                        location) from None


def compile_rule(rule: JSON, location: str, top: bool = True) -> Rule:
    """Compile one rule (with or without ``Next``); raises RuleError."""
    if not isinstance(rule, dict):
        raise RuleError("Choice rules must be objects", location)
    if "And" in rule or "Or" in rule:
        key = "And" if "And" in rule else "Or"
        subs = rule[key]
        if not isinstance(subs, list) or not subs:
            raise RuleError(f"'{key}' must be a non-empty array", f"{location}/{key}")
        rules = [compile_rule(r, f"{location}/{key}[{i}]", False) for i, r in enumerate(subs)]
        if key == "And":
            return lambda env: all(r(env) for r in rules)
        return lambda env: any(r(env) for r in rules)
    if "Not" in rule:
        inner = compile_rule(rule["Not"], f"{location}/Not", False)
        return lambda env: not inner(env)
    ops = [k for k in rule if k in OPERATORS]
    if len(ops) != 1:
        raise RuleError(
            "A choice rule must have exactly one comparison operator" if ops
            else "A choice rule must have a comparison operator",
            location,
        )
    if "Variable" not in rule:
        raise RuleError("These fields are required: [Variable]", location)
    op = ops[0]
    operand = rule[op]
    var_path = _path(rule["Variable"], f"{location}/Variable")
    get = _variable(var_path)
    if op == "IsPresent":
        if not isinstance(operand, bool):
            raise RuleError("IsPresent must be a boolean", f"{location}/{op}")

        def present(env: Env) -> bool:
            try:
                resolve_path(var_path, env)
            except PathFailure:
                return not operand
            return operand

        return present
    if op in TYPE_TESTS:
        if not isinstance(operand, bool):
            raise RuleError(f"{op} must be a boolean", f"{location}/{op}")
        test = TYPE_TESTS[op]
        return lambda env: test(get(env)) == operand
    if op == "StringMatches":
        if not isinstance(operand, str):
            raise RuleError("StringMatches must be a string", f"{location}/{op}")
        pattern = _string_matches(operand)
        return lambda env: isinstance(v := get(env), str) and pattern.fullmatch(v) is not None
    if op.endswith("Path"):
        compare, _ = COMPARISONS[op[:-4]]
        other = _variable(_path(operand, f"{location}/{op}"))
        return lambda env: compare(get(env), other(env))
    compare, kind = COMPARISONS[op]
    valid = {
        "String": isinstance(operand, str),
        "Numeric": _is_num(operand),
        "Boolean": isinstance(operand, bool),
        "Timestamp": parse_timestamp(operand) is not None,
    }[kind]
    if not valid:
        raise RuleError(f"The value of {op} has the wrong type", f"{location}/{op}")
    return lambda env: compare(get(env), operand)
