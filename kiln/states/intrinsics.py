"""Intrinsic functions (``States.Format(...)`` and friends) with AWS's semantics.

    call = compile_intrinsic("States.MathAdd($.a, 1)")
    call.evaluate(resolve)  # resolve: Path -> value
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import random
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from kiln.states.jsonpath import Path, PathSyntaxError, compile_path, json_equal
from kiln.states.types import JSON, PathFailure

Resolver = Callable[[Path], JSON]


class IntrinsicSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Literal:
    value: JSON
    raw: str | None = None  # a string literal with its brace escapes kept, for States.Format

    def evaluate(self, resolve: Resolver) -> JSON:
        return self.value


@dataclass(frozen=True)
class PathArg:
    path: Path

    def evaluate(self, resolve: Resolver) -> JSON:
        return resolve(self.path)


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Literal | PathArg | Call, ...]

    def evaluate(self, resolve: Resolver) -> JSON:
        values = [a.evaluate(resolve) for a in self.args]
        if self.name == "States.Format":
            first = self.args[0]
            template = first.raw if isinstance(first, Literal) and first.raw is not None else None
            if template is None and isinstance(values[0], str):
                template = values[0].replace("\\", "\\\\")
            values[0] = template
        return _FUNCTIONS[self.name](values)


def is_intrinsic(text: str) -> bool:
    return text.startswith("States.")


def compile_intrinsic(text: str) -> Call:
    parser = _Parser(text)
    call = parser.parse_call()
    parser.skip_ws()
    if parser.pos != len(text):
        raise IntrinsicSyntaxError(f"Unexpected text after intrinsic function: {text!r}")
    return call


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def skip_ws(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def parse_call(self) -> Call:
        self.skip_ws()
        start = self.pos
        while self.pos < len(self.text) and (self.text[self.pos].isalnum() or self.text[
            self.pos
        ] in "._"):
            self.pos += 1
        name = self.text[start : self.pos]
        if name not in _ARITY:
            raise IntrinsicSyntaxError(f"Unknown intrinsic function {name!r}")
        self.skip_ws()
        if not self.text.startswith("(", self.pos):
            raise IntrinsicSyntaxError(f"Expected '(' after {name}")
        self.pos += 1
        args: list[Literal | PathArg | Call] = []
        self.skip_ws()
        if self.text.startswith(")", self.pos):
            self.pos += 1
        else:
            while True:
                args.append(self.parse_arg())
                self.skip_ws()
                if self.text.startswith(",", self.pos):
                    self.pos += 1
                    continue
                if self.text.startswith(")", self.pos):
                    self.pos += 1
                    break
                raise IntrinsicSyntaxError(f"Expected ',' or ')' in {self.text!r}")
        low, high = _ARITY[name]
        if not low <= len(args) <= high:
            raise IntrinsicSyntaxError(f"Wrong number of arguments for {name}")
        return Call(name, tuple(args))

    def parse_arg(self) -> Literal | PathArg | Call:
        self.skip_ws()
        text = self.text
        if self.pos >= len(text):
            raise IntrinsicSyntaxError("Unexpected end of intrinsic function")
        ch = text[self.pos]
        if ch == "'":
            raw = self.parse_string()
            return Literal(re.sub(r"\\(.)", r"\1", raw), raw)
        if ch == "$":
            start = self.pos
            depth = 0
            quote = None
            while self.pos < len(text):
                c = text[self.pos]
                if quote:
                    if c == "\\":
                        self.pos += 1
                    elif c == quote:
                        quote = None
                elif c in "'\"" and depth:
                    quote = c
                elif c in "[(":
                    depth += 1
                elif c in "])":
                    if depth == 0:
                        break
                    depth -= 1
                elif c == "," and depth == 0:
                    break
                self.pos += 1
            try:
                return PathArg(compile_path(text[start : self.pos].strip()))
            except PathSyntaxError as exc:
                raise IntrinsicSyntaxError(str(exc)) from None
        if text.startswith("States.", self.pos):
            return self.parse_call()
        start = self.pos
        while self.pos < len(text) and text[self.pos] not in ",) \t\n":
            self.pos += 1
        token = text[start : self.pos]
        if token in ("true", "false", "null"):
            return Literal(json.loads(token))
        try:
            value = json.loads(token)
        except ValueError:
            raise IntrinsicSyntaxError(f"Invalid argument {token!r}") from None
        if not isinstance(value, int | float):
            raise IntrinsicSyntaxError(f"Invalid argument {token!r}")
        return Literal(value)

    def parse_string(self) -> str:
        text = self.text
        self.pos += 1
        out: list[str] = []
        while self.pos < len(text):
            c = text[self.pos]
            if c == "\\":
                nxt = text[self.pos + 1 : self.pos + 2]
                if nxt not in ("'", "{", "}", "\\"):
                    raise IntrinsicSyntaxError(f"Illegal escape '\\{nxt}' in {text!r}")
                # Braces and backslashes stay escaped for States.Format's placeholder scan.
                out.append(c + nxt if nxt in "{}\\" else nxt)
                self.pos += 2
                continue
            if c == "'":
                self.pos += 1
                return "".join(out)
            out.append(c)
            self.pos += 1
        raise IntrinsicSyntaxError(f"Unterminated string in {text!r}")


# --------------------------------------------------------------------------- functions


def _fail(message: str) -> PathFailure:
    return PathFailure(message)


def _is_int(v: JSON) -> bool:
    if isinstance(v, bool):
        return False
    return isinstance(v, int) or (isinstance(v, float) and v.is_integer())


def _render(v: JSON) -> str:
    if isinstance(v, str):
        return v
    return json.dumps(v, separators=(",", ":"))


def _format(args: list[JSON]) -> JSON:
    template = args[0]
    if not isinstance(template, str):
        raise _fail("The first argument of States.Format must be a string")
    values = args[1:]
    out: list[str] = []
    used = 0
    i = 0
    while i < len(template):
        c = template[i]
        if c == "\\" and i + 1 < len(template) and template[i + 1] in "{}\\":
            out.append(template[i + 1])
            i += 2
            continue
        if template.startswith("{}", i):
            if used >= len(values):
                raise _fail(
                    "Number of arguments in the format string does not match the number "
                    "of arguments passed to States.Format"
                )
            out.append(_render(values[used]))
            used += 1
            i += 2
            continue
        out.append(c)
        i += 1
    if used != len(values):
        raise _fail(
            "Number of arguments in the format string does not match the number of arguments "
            "passed to States.Format"
        )
    return "".join(out)


def _string_to_json(args: list[JSON]) -> JSON:
    text = args[0]
    if not isinstance(text, str):
        raise _fail("The argument of States.StringToJson must be a string")
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError:
        raise _fail(f"The argument of States.StringToJson is not valid JSON: {text}") from None


def _json_to_string(args: list[JSON]) -> JSON:
    return json.dumps(args[0], separators=(",", ":"), ensure_ascii=False)


def _array(args: list[JSON]) -> JSON:
    return list(args)


def _array_partition(args: list[JSON]) -> JSON:
    items, size = args
    if not isinstance(items, list):
        raise _fail("The first argument of States.ArrayPartition must be an array")
    if not _is_int(size) or size <= 0:
        raise _fail("The chunk size of States.ArrayPartition must be a positive integer")
    n = int(size)
    return [items[i : i + n] for i in range(0, len(items), n)]


def _array_contains(args: list[JSON]) -> JSON:
    items, value = args
    if not isinstance(items, list):
        raise _fail("The first argument of States.ArrayContains must be an array")
    return any(json_equal(item, value) for item in items)


def _array_range(args: list[JSON]) -> JSON:
    if not all(_is_int(a) for a in args):
        raise _fail("The arguments of States.ArrayRange must be integers")
    start, end, step = (int(a) for a in args)
    if step == 0:
        raise _fail("The step of States.ArrayRange must not be 0")
    result = inclusive_range(start, end, step)
    if result is None:
        raise _fail("States.ArrayRange can generate at most 1000 items")
    return result


def inclusive_range(start: int, end: int, step: int) -> list[int] | None:
    """``start`` to ``end`` inclusive by ``step`` (not 0), as States.ArrayRange and JSONata's
    ``$range`` count; None past the 1,000 items either may make (counted before any is built)."""
    items = range(start, end + (1 if step > 0 else -1), step)
    return None if items[1000:] else list(items)


def _array_get_item(args: list[JSON]) -> JSON:
    items, index = args
    if not isinstance(items, list):
        raise _fail("The first argument of States.ArrayGetItem must be an array")
    if not _is_int(index) or not 0 <= int(index) < len(items):
        raise _fail(f"The index {json.dumps(index)} is out of bounds for States.ArrayGetItem")
    return items[int(index)]


def _array_length(args: list[JSON]) -> JSON:
    if not isinstance(args[0], list):
        raise _fail("The argument of States.ArrayLength must be an array")
    return len(args[0])


def _array_unique(args: list[JSON]) -> JSON:
    items = args[0]
    if not isinstance(items, list):
        raise _fail("The argument of States.ArrayUnique must be an array")
    out: list[JSON] = []
    for item in items:
        if not any(json_equal(item, seen) for seen in out):
            out.append(item)
    return out


def _string_arg(name: str, value: JSON, limit: int = 10000) -> str:
    if not isinstance(value, str):
        raise _fail(f"The argument of {name} must be a string")
    if len(value) > limit:
        raise _fail(f"The input of {name} exceeds the {limit} character limit")
    return str(value)


def _base64_encode(args: list[JSON]) -> JSON:
    data = _string_arg("States.Base64Encode", args[0])
    return base64.b64encode(data.encode()).decode()


def _base64_decode(args: list[JSON]) -> JSON:
    data = _string_arg("States.Base64Decode", args[0])
    try:
        return base64.b64decode(data.encode(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise _fail("The argument of States.Base64Decode is not valid base64") from None


_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384",
           "SHA-512": "sha512"}


def _hash(args: list[JSON]) -> JSON:
    data, algorithm = args
    if data is None:
        raise _fail("The input data of States.Hash must not be null")
    text = _string_arg("States.Hash", data if isinstance(data, str) else _render(data))
    if algorithm not in _HASHES:
        raise _fail(
            f"The hash algorithm {json.dumps(algorithm)} is not supported; use one of "
            "MD5, SHA-1, SHA-256, SHA-384, SHA-512"
        )
    return hashlib.new(_HASHES[str(algorithm)], text.encode()).hexdigest()


def _json_merge(args: list[JSON]) -> JSON:
    left, right, deep = args
    if not isinstance(left, dict) or not isinstance(right, dict):
        raise _fail("The first two arguments of States.JsonMerge must be objects")
    if deep is not False:
        raise _fail("States.JsonMerge only supports a shallow merge (third argument false)")
    return {**left, **right}


def _java_round(v: float) -> int:
    return math.floor(v + 0.5)


def _math_random(args: list[JSON]) -> JSON:
    if not all(_is_int(a) for a in args):
        raise _fail("The arguments of States.MathRandom must be integers")
    start, end = int(args[0]), int(args[1])
    if start >= end:
        raise _fail("The start of States.MathRandom must be less than its end")
    rng = random.Random(int(args[2])) if len(args) == 3 else random.SystemRandom()
    return rng.randrange(start, end)


def _math_add(args: list[JSON]) -> JSON:
    for a in args:
        if isinstance(a, bool) or not isinstance(a, int | float):
            raise _fail("The arguments of States.MathAdd must be numbers")
    return _java_round(args[0]) + _java_round(args[1])


def _string_split(args: list[JSON]) -> JSON:
    text = _string_arg("States.StringSplit", args[0], limit=1 << 30)
    delims = _string_arg("States.StringSplit", args[1], limit=1 << 30)
    tokens = [text]
    for d in delims:
        tokens = [piece for t in tokens for piece in t.split(d)]
    return [t for t in tokens if t]


def _uuid(args: list[JSON]) -> JSON:
    return str(uuid.uuid4())


_FUNCTIONS: dict[str, Callable[[list[JSON]], JSON]] = {
    "States.Format": _format,
    "States.StringToJson": _string_to_json,
    "States.JsonToString": _json_to_string,
    "States.Array": _array,
    "States.ArrayPartition": _array_partition,
    "States.ArrayContains": _array_contains,
    "States.ArrayRange": _array_range,
    "States.ArrayGetItem": _array_get_item,
    "States.ArrayLength": _array_length,
    "States.ArrayUnique": _array_unique,
    "States.Base64Encode": _base64_encode,
    "States.Base64Decode": _base64_decode,
    "States.Hash": _hash,
    "States.JsonMerge": _json_merge,
    "States.MathRandom": _math_random,
    "States.MathAdd": _math_add,
    "States.StringSplit": _string_split,
    "States.UUID": _uuid,
}

_ARITY: dict[str, tuple[int, int]] = {
    "States.Format": (1, 1 << 16),
    "States.StringToJson": (1, 1),
    "States.JsonToString": (1, 1),
    "States.Array": (0, 1 << 16),
    "States.ArrayPartition": (2, 2),
    "States.ArrayContains": (2, 2),
    "States.ArrayRange": (3, 3),
    "States.ArrayGetItem": (2, 2),
    "States.ArrayLength": (1, 1),
    "States.ArrayUnique": (1, 1),
    "States.Base64Encode": (1, 1),
    "States.Base64Decode": (1, 1),
    "States.Hash": (2, 2),
    "States.JsonMerge": (3, 3),
    "States.MathRandom": (2, 3),
    "States.MathAdd": (2, 2),
    "States.StringSplit": (2, 2),
    "States.UUID": (0, 0),
}
