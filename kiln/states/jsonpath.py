"""JSONPath as Step Functions (Jayway) evaluates it, compiled once per definition.

    path = compile_path("$.items[?(@.n > 1)].name")
    path.find({"items": [{"n": 2, "name": "a"}]})  -> ["a"]

Definite paths (fields and indexes only) return the value or raise ``PathFailure``; indefinite
paths (wildcards, slices, unions, filters, deep scans) return a possibly empty list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from kiln.states.types import JSON, PathFailure

_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MISSING: Any = object()


class PathSyntaxError(ValueError):
    pass


@dataclass(frozen=True)
class Field:
    name: str

    def render(self) -> str:
        return "['" + self.name.replace("'", "\\'") + "']"


@dataclass(frozen=True)
class Index:
    index: int

    def render(self) -> str:
        return f"[{self.index}]"


@dataclass(frozen=True)
class Wildcard:
    def render(self) -> str:
        return "[*]"


@dataclass(frozen=True)
class Slice:
    start: int | None
    stop: int | None
    step: int | None

    def render(self) -> str:
        parts = ["" if p is None else str(p) for p in (self.start, self.stop)]
        text = ":".join(parts)
        return f"[{text}:{self.step}]" if self.step is not None else f"[{text}]"


@dataclass(frozen=True)
class Union:
    keys: tuple[str | int, ...]

    def render(self) -> str:
        return "[" + ",".join(f"'{k}'" if isinstance(k, str) else str(k) for k in self.keys) + "]"


@dataclass(frozen=True)
class Filter:
    text: str
    predicate: Callable[[JSON, JSON], bool]

    def render(self) -> str:
        return f"[?({self.text})]"


@dataclass(frozen=True)
class Deep:
    inner: Field | Wildcard | Index | Slice | Union | Filter

    def render(self) -> str:
        return ".." + self.inner.render()


Segment = Field | Index | Wildcard | Slice | Union | Filter | Deep


@dataclass(frozen=True)
class Path:
    source: str
    root: str  # "$" (input), "$$" (context) or "var"
    var: str | None
    segments: tuple[Segment, ...]
    definite: bool

    def render(self, upto: int | None = None) -> str:
        head = "$" if self.root != "var" else f"${self.var}"
        if self.root == "$$":
            head = "$$"
        segs = self.segments if upto is None else self.segments[:upto]
        return head + "".join(s.render() for s in segs)

    def find(self, value: JSON, root: JSON = _MISSING) -> JSON:
        """The selected value (definite) or list of values (indefinite)."""
        if self.definite:
            current = value
            for seg in self.segments:
                if isinstance(seg, Field):
                    if isinstance(current, dict) and seg.name in current:
                        current = current[seg.name]
                        continue
                elif isinstance(seg, Index) and isinstance(current, list):
                    idx = seg.index
                    if -len(current) <= idx < len(current):
                        current = current[idx]
                        continue
                raise PathFailure(f"No results for path: {self.render()}")
            return current
        base = value if root is _MISSING else root
        nodes = [value]
        for seg in self.segments:
            nodes = list(_apply(seg, nodes, base))
        return nodes

    def exists(self, value: JSON) -> bool:
        if self.definite:
            try:
                self.find(value)
            except PathFailure:
                return False
            return True
        return bool(self.find(value))

    def set(self, target: JSON, value: JSON) -> JSON:
        """A copy of ``target`` with ``value`` placed at this (reference) path."""
        if not self.segments:
            return value
        return _set(target, self.segments, value, self)


def _set(node: JSON, segs: tuple[Segment, ...], value: JSON, path: Path) -> JSON:
    seg = segs[0]
    rest = segs[1:]
    if isinstance(seg, Field):
        if not isinstance(node, dict):
            raise PathFailure(path.source)
        out = dict(node)
        out[seg.name] = value if not rest else _set(out.get(seg.name, {}), rest, value, path)
        return out
    if isinstance(seg, Index) and isinstance(node, list) and -len(node) <= seg.index < len(node):
        items = list(node)
        items[seg.index] = value if not rest else _set(items[seg.index], rest, value, path)
        return items
    raise PathFailure(path.source)


def _member(node: JSON, key: str | int) -> JSON:
    if isinstance(node, dict) and isinstance(key, str):
        return node.get(key, _MISSING)
    if isinstance(node, list) and isinstance(key, int) and -len(node) <= key < len(node):
        return node[key]
    return _MISSING


def _children(node: JSON) -> list[JSON]:
    if isinstance(node, dict):
        return list(node.values())
    if isinstance(node, list):
        return node
    return []


def _descendants(node: JSON) -> Iterator[JSON]:
    yield node
    for child in _children(node):
        yield from _descendants(child)


def _apply(seg: Segment, nodes: list[JSON], root: JSON) -> Iterator[JSON]:
    for node in nodes:
        if isinstance(seg, Field):
            if isinstance(node, dict) and seg.name in node:
                yield node[seg.name]
        elif isinstance(seg, Index):
            if isinstance(node, list) and -len(node) <= seg.index < len(node):
                yield node[seg.index]
        elif isinstance(seg, Wildcard):
            yield from _children(node)
        elif isinstance(seg, Slice):
            if isinstance(node, list):
                yield from node[seg.start : seg.stop : seg.step]
        elif isinstance(seg, Union):
            for key in seg.keys:
                value = _member(node, key)
                if value is not _MISSING:
                    yield value
        elif isinstance(seg, Filter):
            if isinstance(node, list):
                yield from (item for item in node if seg.predicate(item, root))
            elif isinstance(node, dict) and seg.predicate(node, root):
                yield node
        else:
            inner = seg.inner
            for desc in _descendants(node):
                if isinstance(inner, Filter):
                    if isinstance(desc, list):
                        yield from (i for i in desc if inner.predicate(i, root))
                else:
                    yield from _apply(inner, [desc], root)


# --------------------------------------------------------------------------- parsing


def compile_path(text: str) -> Path:
    """Compile ``$...``, ``$$...`` or ``$var...``; raises PathSyntaxError."""
    if not isinstance(text, str) or not text.startswith("$"):
        raise PathSyntaxError(f"Path must start with '$': {text!r}")
    if text.startswith("$$"):
        root, var, pos = "$$", None, 2
    else:
        match = _VAR_NAME.match(text, 1)
        if match:
            root, var, pos = "var", match.group(0), match.end()
        else:
            root, var, pos = "$", None, 1
    segments, _ = _parse_segments(text, pos, stop=None)
    definite = all(isinstance(s, Field | Index) for s in segments)
    return Path(text, root, var, tuple(segments), definite)


def _parse_segments(text: str, pos: int, stop: str | None) -> tuple[list[Segment], int]:
    segments: list[Segment] = []
    n = len(text)
    while pos < n:
        ch = text[pos]
        if stop is not None and ch in stop:
            break
        if text.startswith("..", pos):
            pos += 2
            if pos < n and text[pos] == "[":
                seg, pos = _parse_bracket(text, pos)
            elif pos < n and text[pos] == "*":
                seg, pos = Wildcard(), pos + 1
            else:
                name, pos = _parse_name(text, pos, stop)
                seg = Field(name)
            if isinstance(seg, Deep):
                raise PathSyntaxError(f"Invalid path {text!r}")
            segments.append(Deep(seg))
        elif ch == ".":
            pos += 1
            if pos < n and text[pos] == "*":
                segments.append(Wildcard())
                pos += 1
            elif pos < n and text[pos] == "[":
                seg, pos = _parse_bracket(text, pos)
                segments.append(seg)
            else:
                name, pos = _parse_name(text, pos, stop)
                segments.append(Field(name))
        elif ch == "[":
            seg, pos = _parse_bracket(text, pos)
            segments.append(seg)
        elif ch.isspace() and stop is not None:
            break
        else:
            raise PathSyntaxError(f"Invalid path {text!r} at {pos}")
    return segments, pos


def _parse_name(text: str, pos: int, stop: str | None) -> tuple[str, int]:
    start = pos
    n = len(text)
    enders = ".[" + (stop or "")
    while pos < n and text[pos] not in enders and not (stop is not None and text[pos].isspace()):
        pos += 1
    if pos == start:
        raise PathSyntaxError(f"Invalid path {text!r}: empty property name")
    return text[start:pos], pos


def _parse_quoted(text: str, pos: int) -> tuple[str, int]:
    quote = text[pos]
    pos += 1
    out = []
    while pos < len(text):
        ch = text[pos]
        if ch == "\\" and pos + 1 < len(text):
            out.append(text[pos + 1])
            pos += 2
            continue
        if ch == quote:
            return "".join(out), pos + 1
        out.append(ch)
        pos += 1
    raise PathSyntaxError(f"Unterminated string in path {text!r}")


def _parse_bracket(text: str, pos: int) -> tuple[Segment, int]:
    assert text[pos] == "["
    pos += 1
    if text.startswith("?(", pos):
        end = _matching_paren(text, pos + 1)
        body = text[pos + 2 : end]
        if not text.startswith("]", end + 1):
            raise PathSyntaxError(f"Invalid filter in {text!r}")
        return Filter(body, _FilterParser(body).parse()), end + 2
    close = _find_close(text, pos)
    inner = text[pos:close].strip()
    after = close + 1
    if inner == "*":
        return Wildcard(), after
    if inner and inner[0] in "'\"":
        keys: list[str | int] = []
        p = 0
        while p < len(inner):
            key, p = _parse_quoted(inner, p)
            keys.append(key)
            while p < len(inner) and inner[p] in " ,":
                p += 1
            if p < len(inner) and inner[p] not in "'\"":
                raise PathSyntaxError(f"Invalid bracket in {text!r}")
        if len(keys) == 1:
            return Field(str(keys[0])), after
        return Union(tuple(keys)), after
    try:
        if ":" in inner:
            parts = [p.strip() for p in inner.split(":")]
            if len(parts) > 3:
                raise ValueError
            nums = [int(p) if p else None for p in parts] + [None] * (3 - len(parts))
            if nums[2] == 0:
                raise ValueError
            return Slice(nums[0], nums[1], nums[2]), after
        if "," in inner:
            return Union(tuple(int(p) for p in inner.split(","))), after
        return Index(int(inner)), after
    except ValueError:
        raise PathSyntaxError(f"Invalid bracket expression [{inner}] in {text!r}") from None


def _find_close(text: str, pos: int) -> int:
    quote = None
    while pos < len(text):
        ch = text[pos]
        if quote:
            if ch == "\\":
                pos += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "]":
            return pos
        pos += 1
    raise PathSyntaxError(f"Missing ']' in {text!r}")


def _matching_paren(text: str, pos: int) -> int:
    depth = 0
    quote = None
    while pos < len(text):
        ch = text[pos]
        if quote:
            if ch == "\\":
                pos += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
            if depth == 0:
                return pos
        pos += 1
    raise PathSyntaxError(f"Unbalanced parentheses in {text!r}")


# --------------------------------------------------------------------------- filters

Predicate = Callable[[JSON, JSON], bool]
Operand = Callable[[JSON, JSON], JSON]

_TOKEN = re.compile(
    r"\s*(?:(?P<op>==|!=|<=|>=|=~|&&|\|\||<|>|!|\(|\))"
    r"|(?P<str>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
    r"|(?P<regex>/(?:[^/\\]|\\.)*/[a-z]*)"
    r"|(?P<num>-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<word>true|false|null|in|nin)\b"
    r"|(?P<path>[@$](?:\.\.?[A-Za-z0-9_\-*]+|\[[^\]]*\])*(?:\.length\(\))?))"
)


class _FilterParser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m or m.end() == pos:
                raise PathSyntaxError(f"Invalid filter expression {text!r}")
            kind = m.lastgroup or ""
            self.tokens.append((kind, m.group(kind)))
            pos = m.end()
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise PathSyntaxError(f"Unexpected end of filter {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        pred = self.parse_or()
        if self.peek() is not None:
            raise PathSyntaxError(f"Invalid filter expression {self.text!r}")
        return pred

    def parse_or(self) -> Predicate:
        left = self.parse_and()
        while self.peek() == ("op", "||"):
            self.take()
            right = self.parse_and()
            left = (lambda a, b: lambda n, r: a(n, r) or b(n, r))(left, right)
        return left

    def parse_and(self) -> Predicate:
        left = self.parse_unary()
        while self.peek() == ("op", "&&"):
            self.take()
            right = self.parse_unary()
            left = (lambda a, b: lambda n, r: a(n, r) and b(n, r))(left, right)
        return left

    def parse_unary(self) -> Predicate:
        tok = self.peek()
        if tok == ("op", "!"):
            self.take()
            inner = self.parse_unary()
            return lambda n, r: not inner(n, r)
        if tok == ("op", "("):
            self.take()
            inner = self.parse_or()
            if self.take() != ("op", ")"):
                raise PathSyntaxError(f"Missing ')' in filter {self.text!r}")
            return inner
        return self.parse_comparison()

    def parse_operand(self) -> tuple[Operand, bool]:
        kind, value = self.take()
        if kind == "path":
            return _path_operand(value), True
        if kind == "str":
            lit: JSON = _unquote(value)
        elif kind == "num" or (kind == "word" and value in ("true", "false", "null")):
            lit = json.loads(value)
        elif kind == "regex":
            body, _, flags = value[1:].rpartition("/")
            lit = re.compile(body, re.IGNORECASE if "i" in flags else 0)
        else:
            raise PathSyntaxError(f"Invalid filter operand {value!r}")
        return (lambda n, r: lit), False

    def parse_comparison(self) -> Predicate:
        left, is_path = self.parse_operand()
        tok = self.peek()
        if tok is None or tok[0] not in ("op", "word") or tok[1] in ("&&", "||", ")", "("):
            if not is_path:
                raise PathSyntaxError(f"Invalid filter expression {self.text!r}")
            return lambda n, r: left(n, r) is not _MISSING
        op = self.take()[1]
        right, _ = self.parse_operand()
        compare = _COMPARATORS.get(op)
        if compare is None:
            raise PathSyntaxError(f"Unsupported filter operator {op!r}")
        return lambda n, r: compare(left(n, r), right(n, r))


def _unquote(token: str) -> str:
    out, _ = _parse_quoted(token, 0)
    return out


def _path_operand(text: str) -> Operand:
    length = text.endswith(".length()")
    if length:
        text = text[: -len(".length()")]
    path = compile_path("$" + text[1:])
    from_root = text.startswith("$")

    def get(node: JSON, root: JSON) -> JSON:
        base = root if from_root else node
        if path.definite:
            try:
                value = path.find(base)
            except PathFailure:
                return _MISSING
        else:
            value = path.find(base)
        if length:
            return len(value) if isinstance(value, list | str | dict) else _MISSING
        return value

    return get


def _num(v: JSON) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _eq(a: JSON, b: JSON) -> bool:
    if a is _MISSING or b is _MISSING:
        return False
    return json_equal(a, b)


def _order(op: Callable[[Any, Any], bool]) -> Callable[[JSON, JSON], bool]:
    def compare(a: JSON, b: JSON) -> bool:
        if _num(a) and _num(b):
            return op(a, b)
        if isinstance(a, str) and isinstance(b, str):
            return op(a, b)
        return False

    return compare


def _regex(a: JSON, b: JSON) -> bool:
    return isinstance(a, str) and isinstance(b, re.Pattern) and b.fullmatch(a) is not None


def _in(a: JSON, b: JSON) -> bool:
    return isinstance(b, list) and any(json_equal(a, x) for x in b)


_COMPARATORS: dict[str, Callable[[JSON, JSON], bool]] = {
    "==": _eq,
    "!=": lambda a, b: a is not _MISSING and not _eq(a, b),
    "<": _order(lambda a, b: a < b),
    "<=": _order(lambda a, b: a <= b),
    ">": _order(lambda a, b: a > b),
    ">=": _order(lambda a, b: a >= b),
    "=~": _regex,
    "in": _in,
    "nin": lambda a, b: not _in(a, b),
}


def json_equal(a: JSON, b: JSON) -> bool:
    """Equality of JSON values where booleans are not numbers and 1 == 1.0."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if _num(a) and _num(b):
        return bool(a == b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and bool(a == b)
