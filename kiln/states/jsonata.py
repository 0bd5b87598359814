"""JSONata for ``QueryLanguage: JSONata``: a compact evaluator plus AWS's extra functions.

    evaluate_template({"sum": "{% $sum($states.input.xs) %}"}, {"states": {...}, "x": 1})

Covers paths with JSONata's sequence semantics, predicates, wildcards, operators, conditionals,
blocks and ``:=`` bindings, lambdas, ``~>`` chains, ``^()`` sorting, array/object constructors,
ranges, regular expressions, ``#$i`` / ``@$v`` / ``%`` (positional, focus and parent; such
expressions evaluate paths as tuple streams), the ``|loc|update, delete|`` transform and the
standard function library (``$eval`` fails, as on AWS; picture strings live in
``jsonata_pictures``), plus AWS's ``$partition``, ``$range``, ``$hash``, ``$random``,
``$uuid`` and ``$parse``.
"""

from __future__ import annotations

import base64
import hashlib
import inspect
import json
import math
import random
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable
from functools import cmp_to_key, lru_cache
from typing import Any, TypeVar

from kiln.states.intrinsics import inclusive_range
from kiln.states.jsonata_pictures import (
    PictureError,
    format_datetime,
    format_integer,
    parse_datetime,
    parse_integer,
)
from kiln.states.types import JSON


class JsonataError(Exception):
    pass


class _Undefined:
    def __repr__(self) -> str:
        return "undefined"


UNDEF: Any = _Undefined()
Node = tuple[Any, ...]
_T = TypeVar("_T")


class Sequence(list[Any]):
    """A JSONata result sequence (collapses to its single item)."""

    keep = False


def template_expression(value: Any) -> str | None:
    if isinstance(value, str) and value.startswith("{%") and value.endswith("%}") and len(
            value) >= 4:
        return value[2:-2]
    return None


def check_template(template: JSON) -> str | None:
    """The first syntax error among a template's ``{% %}`` expressions, or None."""
    expr = template_expression(template)
    if expr is not None:
        try:
            compile_expression(expr)
        except JsonataError as exc:
            return str(exc)
        return None
    children = template.values() if isinstance(template, dict) else (
        template if isinstance(template, list) else [])
    for child in children:
        problem = check_template(child)
        if problem:
            return problem
    return None


@lru_cache(maxsize=4096)
def compile_expression(text: str) -> Node:
    """Parse once per distinct expression (a pure memo: ASTs are immutable tuples)."""
    return _Parser(text).parse()


def evaluate(text: str, bindings: dict[str, Any]) -> JSON:
    """Evaluate one expression; an undefined result is an error, as in Step Functions."""
    node = compile_expression(text)
    env = _Env(dict(bindings), None)
    states = bindings.get("states")
    context = states.get("input") if isinstance(states, dict) else None
    try:
        result = _collapse(_Evaluator(context).eval(node, context, env))
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            RecursionError) as exc:
        # An expression the evaluator cannot handle fails the state, never the engine.
        raise JsonataError(f"The JSONata expression '{text.strip()}' could not be evaluated: "
                           f"{exc!r}") from None
    if result is UNDEF:
        raise JsonataError(f"The JSONata expression '{text.strip()}' returned nothing "
                           "(undefined)")
    return _to_json(result)


def evaluate_template(template: JSON, bindings: dict[str, Any]) -> JSON:
    """Evaluate every ``"{% expr %}"`` string inside a template."""
    expr = template_expression(template)
    if expr is not None:
        return evaluate(expr, bindings)
    if isinstance(template, dict):
        return {k: evaluate_template(v, bindings) for k, v in template.items()}
    if isinstance(template, list):
        return [evaluate_template(v, bindings) for v in template]
    return template


def _to_json(value: Any) -> JSON:
    if isinstance(value, list):
        return [_to_json(v) for v in value if v is not UNDEF]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items() if v is not UNDEF}
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if callable(value):
        return ""
    return value


# --------------------------------------------------------------------------- lexer

_TOKEN_RE = re.compile(
    r"\s+|/\*.*?\*/"
    r"|(?P<num>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)"
    r"|(?P<str>\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*')"
    r"|(?P<var>\$[A-Za-z0-9_]*\$?)"
    r"|(?P<bq>`[^`]*`)"
    r"|(?P<op>\.\.|:=|!=|<=|>=|~>|\*\*|[.\[\]{}(),:;?+\-*/%=<>&^#@|!])"
    r"|(?P<name>[^\s.\[\]{}(),:;?+\-*/%=<>&^#@|!\"'`$~]+)",
    re.DOTALL,
)


def _tokenize(text: str) -> list[tuple[str, Any]]:
    tokens: list[tuple[str, Any]] = []
    pos = 0
    while pos < len(text):
        prev = tokens[-1] if tokens else None
        if text.startswith("/*", pos):
            end = text.find("*/", pos + 2)
            if end < 0:
                raise JsonataError("Unterminated comment")
            pos = end + 2
            continue
        if text[pos] == "/" and (prev is None or (prev[0] == "op" and prev[1] not in (
                ")", "]", "}"))):
            end = pos + 1
            while end < len(text) and text[end] != "/":
                end += 2 if text[end] == "\\" else 1
            if end >= len(text):
                raise JsonataError("Unterminated regular expression")
            m = re.match(r"[im]*", text[end + 1:])
            flags_text = m.group(0) if m else ""
            flags = re.IGNORECASE if "i" in flags_text else 0
            if "m" in flags_text:
                flags |= re.MULTILINE
            # JavaScript's (?<name>...) is Python's (?P<name>...).
            source = re.sub(r"\(\?<(?=[A-Za-z_])", "(?P<", text[pos + 1:end])
            try:
                tokens.append(("regex", re.compile(source, flags)))
            except re.error as exc:
                raise JsonataError(f"Invalid regular expression /{source}/: {exc}") from None
            pos = end + 1 + len(flags_text)
            continue
        m = _TOKEN_RE.match(text, pos)
        if not m or m.end() == pos:
            raise JsonataError(f"Unexpected character {text[pos]!r} in JSONata expression")
        pos = m.end()
        kind = m.lastgroup
        if kind is None:
            continue
        value: Any = m.group(kind)
        if kind == "num":
            value = float(value) if any(c in value for c in ".eE") else int(value)
        elif kind == "str":
            value = _unescape(value[1:-1])
        elif kind == "bq":
            kind, value = "name", value[1:-1]
        elif kind == "name" and value in ("and", "or", "in"):
            kind = "op"
        tokens.append((kind, value))
    tokens.append(("end", None))
    return tokens


_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c != "\\" or i + 1 >= len(body):
            out.append(c)
            i += 1
            continue
        nxt = body[i + 1]
        if nxt == "u" and i + 5 < len(body):
            out.append(chr(int(body[i + 2:i + 6], 16)))
            i += 6
            continue
        if nxt not in _ESCAPES:
            raise JsonataError(f"Unsupported escape sequence \\{nxt} in string")
        out.append(_ESCAPES[nxt])
        i += 2
    return "".join(out)


# --------------------------------------------------------------------------- parser

_BINARY = {
    ".": 75, "[": 80, "(": 80, "^": 80, "#": 80, "@": 80, "{": 70,
    "*": 60, "/": 60, "%": 60, "+": 50, "-": 50, "&": 50,
    "=": 40, "!=": 40, "<": 40, "<=": 40, ">": 40, ">=": 40, "in": 40, "~>": 40,
    "and": 30, "or": 25, "..": 20, "?": 20, ":=": 10,
}


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.i = 0
        self.tuples = False  # '#', '@' or '%' seen: paths are evaluated as tuple streams

    def peek(self) -> tuple[str, Any]:
        return self.tokens[self.i]

    def next(self) -> tuple[str, Any]:
        tok = self.tokens[self.i]
        self.i += 1
        return tok

    def expect(self, value: str) -> None:
        tok = self.next()
        if tok != ("op", value):
            raise JsonataError(f"Expected '{value}' in JSONata expression {self.text!r}")

    def parse(self) -> Node:
        node = self.expression(0)
        if self.peek()[0] != "end":
            raise JsonataError(f"Unexpected token {self.peek()[1]!r} in {self.text!r}")
        return _tuple_paths(node) if self.tuples else node

    def expression(self, rbp: int) -> Node:
        left = self.prefix()
        while True:
            kind, value = self.peek()
            if kind != "op" or value not in _BINARY or _BINARY[value] <= rbp:
                return left
            self.next()
            left = self.infix(value, left)

    def prefix(self) -> Node:
        kind, value = self.next()
        if kind == "num":
            return ("value", value)
        if kind == "str":
            return ("value", value)
        if kind == "regex":
            return ("value", value)
        if kind == "var":
            return ("var", value[1:])
        if kind == "name":
            if value == "true":
                return ("value", True)
            if value == "false":
                return ("value", False)
            if value == "null":
                return ("value", None)
            if value in ("function", "λ") and self.peek() == ("op", "("):
                return self.lambda_()
            return ("name", value)
        if kind != "op":
            raise JsonataError(f"Unexpected end of JSONata expression {self.text!r}")
        if value == "-":
            return ("neg", self.expression(70))
        if value == "%":
            self.tuples = True
            return ("parent",)
        if value == "|":  # |location|update[, delete]|: a function that copies and modifies
            location = self.expression(0)
            self.expect("|")
            update = self.expression(0)
            delete: Node | None = None
            if self.peek() == ("op", ","):
                self.next()
                delete = self.expression(0)
            self.expect("|")
            return ("transform", location, update, delete)
        if value == "*":
            return ("wildcard",)
        if value == "**":
            return ("descendants",)
        if value == "(":
            return ("block", self.listed(self.operand, ";", ")"))
        if value == "[":
            return ("array", self.listed(self.operand, ",", "]"))
        if value == "{":
            return ("object", self.pairs())
        raise JsonataError(f"Unexpected '{value}' in JSONata expression {self.text!r}")

    def listed(self, item: Callable[[], _T], separator: str, close: str) -> list[_T]:
        """Items up to ``close`` (consumed), each after the first behind ``separator``."""
        items: list[_T] = []
        while self.peek() != ("op", close):
            items.append(item())
            if self.peek() != ("op", separator):
                break
            self.next()
        self.expect(close)
        return items

    def operand(self) -> Node:
        return self.expression(0)

    def pair(self) -> tuple[Node, Node]:
        key = self.expression(0)
        self.expect(":")
        return key, self.expression(0)

    def argument(self) -> Node:
        if self.peek() == ("op", "?"):  # partial application
            self.next()
            return ("placeholder",)
        return self.expression(0)

    def pairs(self) -> list[tuple[Node, Node]]:
        return self.listed(self.pair, ",", "}")

    def lambda_(self) -> Node:
        self.expect("(")
        params = []
        while self.peek() != ("op", ")"):
            kind, value = self.next()
            if kind != "var":
                raise JsonataError("Lambda parameters must be variables")
            params.append(value[1:])
            if self.peek() == ("op", ","):
                self.next()
        self.expect(")")
        if self.peek() == ("op", "<"):  # type signature: skip
            depth = 0
            while True:
                tok = self.next()
                if tok == ("op", "<"):
                    depth += 1
                elif tok == ("op", ">"):
                    depth -= 1
                    if depth == 0:
                        break
        self.expect("{")
        body = self.expression(0)
        self.expect("}")
        return ("lambda", params, body)

    def infix(self, op: str, left: Node) -> Node:
        if op == ".":
            left, right = _step(left), _step(self.expression(75))
            if right[0] == "sort":  # A.B^(...) orders the whole sequence A.B, not each B
                return ("sort", ("path", left, right[1]), right[2])
            return ("path", left, right)
        if op == "[":
            if self.peek() == ("op", "]"):
                self.next()
                return ("keep", left)
            pred = self.expression(0)
            self.expect("]")
            return ("filter", left, pred)
        if op == "(":
            return ("call", left, self.listed(self.argument, ",", ")"))
        if op == "^":
            self.expect("(")
            terms = []
            while True:
                descending = False
                if self.peek() in (("op", "<"), ("op", ">")):
                    descending = self.next()[1] == ">"
                terms.append((self.expression(0), descending))
                if self.peek() == ("op", ","):
                    self.next()
                    continue
                break
            self.expect(")")
            return ("sort", left, terms)
        if op == "{":
            return ("group", left, self.pairs())
        if op in ("#", "@"):
            kind, value = self.next()
            if kind != "var":
                raise JsonataError(f"'{op}' must be followed by a variable in {self.text!r}")
            self.tuples = True
            return ("index_bind" if op == "#" else "focus_bind", left, value[1:])
        if op == "?":
            then = self.expression(0)
            other: Node = ("value", UNDEF)
            if self.peek() == ("op", ":"):
                self.next()
                other = self.expression(0)
            return ("cond", left, then, other)
        if op == ":=":
            if left[0] != "var":
                raise JsonataError("The left side of := must be a variable")
            return ("bind", left[1], self.expression(_BINARY[op] - 1))
        right = self.expression(_BINARY[op])
        if op == "~>":
            return ("chain", left, right)
        if op == "..":
            return ("range", left, right)
        if op in ("and", "or"):
            return (op, left, right)
        return ("binary", op, left, right)


# --------------------------------------------------------------------------- evaluation


class _Env:
    __slots__ = ("parent", "vars")

    def __init__(self, variables: dict[str, Any], parent: _Env | None) -> None:
        self.vars = variables
        self.parent = parent

    def lookup(self, name: str) -> Any:
        env: _Env | None = self
        while env is not None:
            if name in env.vars:
                return env.vars[name]
            env = env.parent
        return UNDEF


class _Lambda:
    def __init__(self, params: list[str], body: Node, env: _Env, ev: _Evaluator,
                 context: Any) -> None:
        self.params = params
        self.body = body
        self.env = env
        self.ev = ev
        self.context = context

    def __call__(self, *args: Any) -> Any:
        bound = {p: (args[i] if i < len(args) else UNDEF) for i, p in enumerate(self.params)}
        return self.ev.eval(self.body, self.context, _Env(bound, self.env))

    @property
    def arity(self) -> int:
        return len(self.params)


_PARENTS = "\x00parents"  # the env entry holding a tuple's chain of parent items


def _step(node: Node) -> Node:
    """A path step: a string literal names a field ("'my key'.x"); other literals cannot be."""
    if node[0] in ("filter", "keep", "index_bind", "focus_bind"):  # the step they qualify
        return (node[0], _step(node[1]), *node[2:])
    if node[0] != "value" or isinstance(node[1], re.Pattern) or node[1] is UNDEF:
        return node
    if isinstance(node[1], str):
        return ("name", node[1])
    raise JsonataError(f"The literal value {_string(node[1]) if node[1] is not None else 'null'} "
                       "cannot be used as a step within a path expression")


def _tuple_paths(node: Any) -> Any:
    """Every ``path`` node as a ``tpath`` over its flattened steps (recursively)."""
    if isinstance(node, list):
        return [_tuple_paths(n) for n in node]
    if not isinstance(node, tuple) or not node:
        return node
    if node[0] == "path":
        steps: list[Any] = []
        current: Any = node
        while isinstance(current, tuple) and current and current[0] == "path":
            steps.insert(0, _tuple_paths(current[2]))
            current = current[1]
        steps.insert(0, _tuple_paths(current))
        return ("tpath", steps)
    if node[0] == "value":
        return node
    return tuple(_tuple_paths(n) for n in node)


def _collapse(value: Any) -> Any:
    if isinstance(value, Sequence):
        if not value:
            return [] if value.keep else UNDEF
        if len(value) == 1 and not value.keep:
            return value[0]
        return list(value)
    return value


def _seq(value: Any) -> list[Any]:
    if value is UNDEF:
        return []
    if isinstance(value, list):
        return list(value)
    return [value]


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _truthy(v: Any) -> bool:
    v = _collapse(v)
    if v is UNDEF or v is None:
        return False
    if isinstance(v, list):
        return any(_truthy(x) for x in v)
    if isinstance(v, dict):
        return bool(v)
    if callable(v):
        return False
    return bool(v)


def _equal(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b) and (_is_num(a) == _is_num(b))


class _Evaluator:
    def __init__(self, root: Any) -> None:
        self.root = root
        self.functions = _functions(self)

    def eval(self, node: Node, ctx: Any, env: _Env) -> Any:
        kind = node[0]
        method: Callable[[Node, Any, _Env], Any] = getattr(self, "e_" + kind)
        return method(node, ctx, env)

    def e_value(self, node: Node, ctx: Any, env: _Env) -> Any:
        return node[1]

    def e_var(self, node: Node, ctx: Any, env: _Env) -> Any:
        name = node[1]
        if name == "":
            return ctx
        if name == "$":
            return self.root
        value = env.lookup(name)
        if value is UNDEF and name in self.functions:
            return self.functions[name]
        return value

    def e_name(self, node: Node, ctx: Any, env: _Env) -> Any:
        return self.step(ctx, lambda item: item.get(node[1], UNDEF)
                         if isinstance(item, dict) else UNDEF)

    def step(self, ctx: Any, fn: Callable[[Any], Any]) -> Any:
        if isinstance(ctx, list):
            out = Sequence()
            for item in ctx:
                value = self.step(item, fn) if isinstance(item, list) else fn(item)
                if value is UNDEF:
                    continue
                if isinstance(value, list):
                    out.extend(value)
                    out.keep = out.keep or (isinstance(value, Sequence) and value.keep)
                else:
                    out.append(value)
            return out
        return fn(ctx)

    def e_wildcard(self, node: Node, ctx: Any, env: _Env) -> Any:
        def values(item: Any) -> Any:
            if isinstance(item, dict):
                out = Sequence()
                for v in item.values():
                    out.extend(v) if isinstance(v, list) else out.append(v)
                return out
            return UNDEF

        return self.step(ctx, values)

    def e_descendants(self, node: Node, ctx: Any, env: _Env) -> Any:
        out = Sequence()

        def walk(v: Any) -> None:
            if isinstance(v, list):
                for x in v:
                    walk(x)
                return
            out.append(v)
            if isinstance(v, dict):
                for x in v.values():
                    walk(x)

        walk(ctx)
        return out

    def e_path(self, node: Node, ctx: Any, env: _Env) -> Any:
        left = self.eval(node[1], ctx, env)
        if left is UNDEF:
            return UNDEF
        keep = isinstance(left, Sequence) and left.keep  # a '[]' earlier in the path
        left = _collapse(left) if isinstance(left, Sequence) else left
        right = node[2]
        if isinstance(left, list):
            out = Sequence()
            out.keep = keep
            for item in left:
                value = self.eval(right, item, env)
                if value is UNDEF:
                    continue
                if isinstance(value, list) and right[0] != "array":
                    # '[]' (a kept sequence) flattens too, but keeps the result an array.
                    out.extend(value)
                    out.keep = out.keep or (isinstance(value, Sequence) and value.keep)
                else:
                    out.append(value)
            return out
        return self.eval(right, left, env)

    def e_keep(self, node: Node, ctx: Any, env: _Env) -> Any:
        value = self.eval(node[1], ctx, env)
        out = Sequence(_seq(_collapse(value)))
        out.keep = True
        return out

    def e_filter(self, node: Node, ctx: Any, env: _Env) -> Any:
        if isinstance(ctx, list) and node[1][0] in ("name", "wildcard"):
            # A step's predicate applies within each context item: (a sequence).x[0]
            out = Sequence()
            for item in ctx:
                out.extend(_seq(_collapse(self.e_filter(node, item, env))))
            return out
        value = _collapse(self.eval(node[1], ctx, env))
        items = _seq(value)
        pred = node[2]
        out = Sequence()
        if pred[0] == "value" and _is_num(pred[1]):
            index = math.floor(pred[1])
            if index < 0:
                index += len(items)
            if 0 <= index < len(items):
                out.append(items[index])
            return out
        for i, item in enumerate(items):
            res = _collapse(self.eval(pred, item, env))
            if _is_num(res):
                idx = math.floor(res)
                if idx < 0:
                    idx += len(items)
                if idx == i:
                    out.append(item)
            elif isinstance(res, list) and res and all(_is_num(r) for r in res):
                if any((math.floor(r) + (len(items) if r < 0 else 0)) == i for r in res):
                    out.append(item)
            elif _truthy(res):
                out.append(item)
        return out

    def e_block(self, node: Node, ctx: Any, env: _Env) -> Any:
        inner = _Env({}, env)
        result: Any = UNDEF
        for expr in node[1]:
            result = self.eval(expr, ctx, inner)
        return result

    def e_bind(self, node: Node, ctx: Any, env: _Env) -> Any:
        value = _collapse(self.eval(node[2], ctx, env))
        env.vars[node[1]] = value
        return value

    def e_array(self, node: Node, ctx: Any, env: _Env) -> Any:
        out: list[Any] = []
        for item in node[1]:
            if item[0] == "range":
                lo = _collapse(self.eval(item[1], ctx, env))
                hi = _collapse(self.eval(item[2], ctx, env))
                if lo is UNDEF or hi is UNDEF:
                    continue
                if not (_is_num(lo) and _is_num(hi) and float(lo).is_integer()
                        and float(hi).is_integer()):
                    raise JsonataError("The range operator requires integer operands")
                out.extend(range(int(lo), int(hi) + 1))
                continue
            value = _collapse(self.eval(item, ctx, env))
            if value is UNDEF:
                continue
            if isinstance(value, list) and item[0] != "array":
                out.extend(value)
            else:
                out.append(value)
        result = Sequence(out)
        result.keep = True
        return result

    def e_object(self, node: Node, ctx: Any, env: _Env) -> Any:
        out: dict[str, Any] = {}
        for key_node, value_node in node[1]:
            key = _collapse(self.eval(key_node, ctx, env))
            if not isinstance(key, str):
                raise JsonataError("Object keys must evaluate to strings")
            value = _collapse(self.eval(value_node, ctx, env))
            if value is not UNDEF:
                out[key] = value
        return out

    def e_group(self, node: Node, ctx: Any, env: _Env) -> Any:
        items = _seq(_collapse(self.eval(node[1], ctx, env)))
        out: dict[str, Any] = {}
        for key_node, value_node in node[2]:
            groups: dict[str, list[Any]] = {}
            for item in items:
                key = _collapse(self.eval(key_node, item, env))
                if not isinstance(key, str):
                    raise JsonataError("Object keys must evaluate to strings")
                groups.setdefault(key, []).append(item)
            for key, members in groups.items():
                value = _collapse(self.eval(value_node, members if len(members) > 1
                                            else members[0], env))
                if value is not UNDEF:
                    out[key] = value
        return out

    # Tuple streams: paths using '#$i' (position), '@$v' (focus) or '%' (parent) carry, per
    # item, the variables bound so far and the chain of parents that led to it.

    def e_tpath(self, node: Node, ctx: Any, env: _Env) -> Any:
        parents = env.lookup(_PARENTS)
        tuples: list[tuple[Any, dict[str, Any], list[Any]]] = [
            (ctx, {}, parents if isinstance(parents, list) else [])]
        for step in node[1]:
            tuples = self.tuple_step(step, tuples, env)
        out = Sequence()
        for item, _, _ in tuples:
            out.append(item)
        out.keep = any(step[0] == "keep" for step in node[1])
        return out

    def tuple_step(self, step: Node, tuples: list[tuple[Any, dict[str, Any], list[Any]]],
                   env: _Env) -> list[tuple[Any, dict[str, Any], list[Any]]]:
        kind = step[0]
        if kind == "parent":
            return [(parents[-1], bound, parents[:-1]) for _, bound, parents in tuples
                    if parents]
        if kind == "filter" and step[1][0] in ("index_bind", "focus_bind"):
            kept = []
            for item, bound, parents in self.tuple_step(step[1], tuples, env):
                probe = bound[step[1][2]] if step[1][0] == "focus_bind" else item
                if _truthy(self.eval(step[2], probe, _Env({**bound, _PARENTS: parents}, env))):
                    kept.append((item, bound, parents))
            return kept
        inner = step[1] if kind in ("index_bind", "focus_bind") else step
        out = []
        for item, bound, parents in tuples:
            value = self.eval(inner, item, _Env({**bound, _PARENTS: parents}, env))
            if value is UNDEF:
                continue
            value = _collapse(value) if isinstance(value, Sequence) and not value.keep else value
            results = value if isinstance(value, list) and inner[0] != "array" else [value]
            for position, result in enumerate(results):
                if kind == "focus_bind":  # the context stays; the variable holds the item
                    out.append((item, {**bound, step[2]: result}, parents))
                elif kind == "index_bind":  # the position among this context's results
                    out.append((result, {**bound, step[2]: position}, [*parents, item]))
                else:
                    out.append((result, bound, [*parents, item]))
        return out

    def e_parent(self, node: Node, ctx: Any, env: _Env) -> Any:
        parents = env.lookup(_PARENTS)
        return parents[-1] if isinstance(parents, list) and parents else UNDEF

    def e_index_bind(self, node: Node, ctx: Any, env: _Env) -> Any:
        return self.e_tpath(("tpath", [node]), ctx, env)

    e_focus_bind = e_index_bind

    def e_transform(self, node: Node, ctx: Any, env: _Env) -> Any:
        def transform(value: Any) -> Any:
            if value is UNDEF:
                return UNDEF
            copy = json.loads(json.dumps(_to_json(_collapse(value))))
            for match in _seq(_collapse(self.eval(node[1], copy, env))):
                if not isinstance(match, dict):
                    continue
                update = _collapse(self.eval(node[2], match, env))
                if update is not UNDEF:
                    if not isinstance(update, dict):
                        raise JsonataError("The update clause of a transform must evaluate to "
                                           "an object")
                    match.update(update)
                if node[3] is not None:
                    names = _collapse(self.eval(node[3], match, env))
                    if names is UNDEF:
                        continue
                    if not all(isinstance(n, str) for n in _seq(names)):
                        raise JsonataError("The delete clause of a transform must evaluate to "
                                           "a string or an array of strings")
                    for name in _seq(names):
                        match.pop(name, None)
            return copy

        transform.arity = 1  # type: ignore[attr-defined]
        return transform

    def e_neg(self, node: Node, ctx: Any, env: _Env) -> Any:
        value = _collapse(self.eval(node[1], ctx, env))
        if value is UNDEF:
            return UNDEF
        if not _is_num(value):
            raise JsonataError("Cannot negate a non-numeric value")
        return -value

    def e_and(self, node: Node, ctx: Any, env: _Env) -> Any:
        return _truthy(self.eval(node[1], ctx, env)) and _truthy(self.eval(node[2], ctx, env))

    def e_or(self, node: Node, ctx: Any, env: _Env) -> Any:
        return _truthy(self.eval(node[1], ctx, env)) or _truthy(self.eval(node[2], ctx, env))

    def e_cond(self, node: Node, ctx: Any, env: _Env) -> Any:
        if _truthy(self.eval(node[1], ctx, env)):
            return self.eval(node[2], ctx, env)
        return self.eval(node[3], ctx, env)

    def e_lambda(self, node: Node, ctx: Any, env: _Env) -> Any:
        return _Lambda(node[1], node[2], env, self, ctx)

    def e_range(self, node: Node, ctx: Any, env: _Env) -> Any:
        raise JsonataError("The range operator (..) can only be used inside an array")

    def e_placeholder(self, node: Node, ctx: Any, env: _Env) -> Any:
        return UNDEF

    def e_call(self, node: Node, ctx: Any, env: _Env) -> Any:
        fn = _collapse(self.eval(node[1], ctx, env))
        if not callable(fn):
            raise JsonataError("Attempted to invoke a non-function")
        if any(a[0] == "placeholder" for a in node[2]):
            bound = [None if a[0] == "placeholder" else _collapse(self.eval(a, ctx, env))
                     for a in node[2]]

            def partial(*rest: Any) -> Any:
                it = iter(rest)
                args = [next(it, UNDEF) if a[0] == "placeholder" else b
                        for a, b in zip(node[2], bound, strict=True)]
                return fn(*args)

            return partial
        args = [_collapse(self.eval(a, ctx, env)) for a in node[2]]
        if getattr(fn, "uses_context", False) and len(args) < getattr(fn, "min_args", 0):
            args.insert(0, _collapse(ctx))
        return _call(fn, node[1], args)

    def e_chain(self, node: Node, ctx: Any, env: _Env) -> Any:
        value = _collapse(self.eval(node[1], ctx, env))
        right = node[2]
        if right[0] == "call":
            fn = _collapse(self.eval(right[1], ctx, env))
            args = [_collapse(self.eval(a, ctx, env)) for a in right[2]]
            return fn(value, *args)
        fn = _collapse(self.eval(right, ctx, env))
        if isinstance(fn, re.Pattern):  # a regex is a function returning its first match
            if value is UNDEF:
                return UNDEF
            found = fn.search(_string(value))
            return UNDEF if found is None else {
                "match": found.group(0), "index": found.start(), "groups": list(found.groups())}
        if not callable(fn):
            raise JsonataError("The right side of ~> must be a function")
        return fn(value)

    def e_sort(self, node: Node, ctx: Any, env: _Env) -> Any:
        items = _seq(_collapse(self.eval(node[1], ctx, env)))

        def compare(a: Any, b: Any) -> int:
            for term, descending in node[2]:
                x = _collapse(self.eval(term, a, env))
                y = _collapse(self.eval(term, b, env))
                if x is UNDEF or y is UNDEF or x == y:
                    continue
                if not (_is_num(x) and _is_num(y)) and not (
                        isinstance(x, str) and isinstance(y, str)):
                    raise JsonataError("The expressions within an order-by clause must "
                                       "evaluate to numeric or string values")
                result = -1 if x < y else 1
                return -result if descending else result
            return 0

        out = Sequence(sorted(items, key=cmp_to_key(compare)))
        return out

    def e_binary(self, node: Node, ctx: Any, env: _Env) -> Any:
        op = node[1]
        left = _collapse(self.eval(node[2], ctx, env))
        right = _collapse(self.eval(node[3], ctx, env))
        if op == "&":
            return _string(left) + _string(right)
        if op in ("+", "-", "*", "/", "%"):
            if left is UNDEF or right is UNDEF:
                return UNDEF
            if not _is_num(left) or not _is_num(right):
                raise JsonataError(
                    f"The {'left' if not _is_num(left) else 'right'} side of the '{op}' "
                    "operator must evaluate to a number")
            if op in ("+", "-", "*"):
                result = left + right if op == "+" else left - right if op == "-" else (
                    left * right)
                if isinstance(result, float) and not math.isfinite(result):
                    raise JsonataError("Number out of range")
                return result
            if right == 0:
                if op == "%":
                    raise JsonataError("Division by zero")
                raise JsonataError("Number out of range: division by zero")
            if op == "/":
                return left / right
            return math.fmod(left, right)
        if op == "in":
            if left is UNDEF or right is UNDEF:
                return False
            # Arrays and objects are never 'in' another array (JavaScript identity).
            return not isinstance(left, dict | list) and any(
                _equal(left, r) for r in _seq(right))
        if op in ("=", "!="):
            if left is UNDEF or right is UNDEF:
                return False
            eq = _equal(left, right)
            return eq if op == "=" else not eq
        if left is UNDEF or right is UNDEF:
            return False
        ok = (_is_num(left) and _is_num(right)) or (isinstance(left, str)
                                                    and isinstance(right, str))
        if not ok:
            raise JsonataError(f"The expressions either side of operator '{op}' must evaluate "
                               "to numeric or string values")
        return {"<": left < right, "<=": left <= right, ">": left > right,
                ">=": left >= right}[op]


# --------------------------------------------------------------------------- functions


def _string(value: Any) -> str:
    if value is UNDEF:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return _js_number(value)
    if callable(value):
        return ""
    return json.dumps(_to_json(_precise(value)), separators=(",", ":"), ensure_ascii=False)


def _precise(value: Any) -> Any:
    """Floats rounded to 15 significant digits, as JSONata's $string does (0.1+0.2 -> 0.3)."""
    if isinstance(value, float):
        return float(f"{value:.15g}")
    if isinstance(value, list):
        return [_precise(v) for v in value]
    if isinstance(value, dict):
        return {k: _precise(v) for k, v in value.items()}
    return value


def _js_number(value: float) -> str:
    """ECMAScript Number::toString of ``value`` (after toPrecision(15) for non-integers)."""
    if isinstance(value, int):
        return str(value)
    if not math.isfinite(value):
        raise JsonataError("Attempting to invoke string function on Infinity or NaN")
    value = float(f"{value:.15g}")
    if value == 0:
        return "0"
    sign = "-" if value < 0 else ""
    mantissa, _, exponent = repr(abs(value)).partition("e")
    whole, _, fraction = mantissa.partition(".")
    digits = whole + fraction
    point = len(whole) + (int(exponent) if exponent else 0)
    stripped = digits.lstrip("0")
    point -= len(digits) - len(stripped)
    digits = stripped.rstrip("0") or "0"
    k, n = len(digits), point
    if k <= n <= 21:
        text = digits + "0" * (n - k)
    elif 0 < n <= 21:
        text = digits[:n] + "." + digits[n:]
    elif -6 < n <= 0:
        text = "0." + "0" * -n + digits
    else:
        exp = n - 1
        text = (digits if k == 1 else digits[0] + "." + digits[1:]) + (
            f"e{'+' if exp > 0 else '-'}{abs(exp)}")
    return sign + text


def _format_number(n: float, picture: str) -> str:
    """XPath's fn:format-number, as $formatNumber: sub-pictures ``pos;neg``, literal prefix and
    suffix, grouping (regular or at the positions given), %, and ``e`` exponents."""
    positive, _, negative = picture.partition(";")
    sub = negative if negative and n < 0 else positive
    active = re.search(r"[#0-9][#0-9,.]*(?:e[0-9]+)?", sub)
    if active is None:
        raise JsonataError(f"The picture string '{picture}' has no digits")
    prefix, suffix = sub[:active.start()], sub[active.end():]
    mantissa_picture, _, exponent_picture = active.group(0).partition("e")
    value = abs(n) if negative or n >= 0 else -n
    if "%" in prefix + suffix:
        value *= 100
    elif "\u2030" in prefix + suffix:
        value *= 1000
    integer_picture, _, fraction_picture = mantissa_picture.partition(".")
    min_int = sum(c.isdigit() for c in integer_picture)
    max_frac = sum(c.isdigit() or c == "#" for c in fraction_picture)
    min_frac = sum(c.isdigit() for c in fraction_picture)
    exponent = 0
    if exponent_picture and value:
        # The mantissa gets min_int integer digits (below 1 when there are none).
        exponent = math.floor(math.log10(value)) + 1 - min_int
        value /= 10.0 ** exponent
    elif min_int == 0 and max_frac == 0:
        min_int = 1
    digits = f"{value:.{max_frac}f}"
    whole, _, fraction = digits.partition(".")
    fraction = fraction.rstrip("0").ljust(min_frac, "0")
    whole = whole.lstrip("0").rjust(min_int, "0")
    if not whole and exponent_picture:
        whole = "0"
    elif not whole and not fraction:
        fraction = "0"
    positions = [sum(c in "#0123456789" for c in integer_picture[i + 1:])
                 for i, c in enumerate(integer_picture) if c == ","]
    if positions:
        step = min(positions)
        regular = all(p % step == 0 for p in positions)
        grouped = ""
        for i, char in enumerate(reversed(whole)):
            if i and (i % step == 0 if regular else i in positions):
                grouped = "," + grouped
            grouped = char + grouped
        whole = grouped
    text = whole + ("." + fraction if fraction else "")
    if exponent_picture:
        text += "e" + ("-" if exponent < 0 else "") + str(abs(exponent)).rjust(
            len(exponent_picture), "0")
    return ("-" if n < 0 and not negative else "") + prefix + text + suffix


def _call(fn: Any, name_node: Node, args: list[Any]) -> Any:
    """``fn(*args)``; arguments a built-in cannot take are JSONata's signature error (T0410),
    never a Python exception."""
    try:
        return fn(*args)
    except (TypeError, ValueError, AttributeError, KeyError, IndexError, OverflowError,
            ZeroDivisionError, UnicodeError) as exc:
        name = name_node[1] if name_node[0] == "var" else "function"
        raise JsonataError(f"The arguments of function ${name} do not match its signature: "
                           f"{exc}") from None


def _expand(template: str, match: re.Match[str]) -> str:
    """A $replace replacement: ``$n`` is group n (``$0`` the match), ``$$`` a dollar sign."""
    def group(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        digits = m.group(1)
        # The longest group number that exists, as jsonata-js reads "$12".
        for end in range(len(digits), 0, -1):
            if int(digits[:end]) <= (match.re.groups or 0):
                return (match.group(int(digits[:end])) or "") + digits[end:]
        return "" if digits == "0" else m.group(0)

    return re.sub(r"\$\$|\$(\d+)", group, template)


def _native_arity(fn: Any) -> int | None:
    """How many arguments a built-in takes (None: any number), as JSONata's signatures say."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_POSITIONAL for p in params):
        return None
    return sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))


def _num_arg(name: str, value: Any) -> float:
    if not _is_num(value):
        raise JsonataError(f"Argument 1 of function ${name} must be a number")
    return float(value) if isinstance(value, float) else value


def _norm(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def _java_random(seed: int) -> Callable[[], float]:
    """java.util.Random#nextDouble, as AWS's ``$random(seed)`` uses."""
    state = [(seed ^ 0x5DEECE66D) & ((1 << 48) - 1)]

    def bits(n: int) -> int:
        state[0] = (state[0] * 0x5DEECE66D + 0xB) & ((1 << 48) - 1)
        return state[0] >> (48 - n)

    return lambda: ((bits(26) << 27) + bits(27)) * (1.0 / (1 << 53))


def _functions(ev: _Evaluator) -> dict[str, Any]:
    def apply(fn: Any, *args: Any) -> Any:
        arity = getattr(fn, "arity", None)
        if arity is None:
            arity = _native_arity(fn)
        if arity is not None:
            args = args[:arity]
        return _collapse(fn(*args))

    def signature_error(name: str, position: int) -> JsonataError:
        return JsonataError(f'Argument {position} of function "{name}" does not match '
                            "function signature")

    def f_string(value: Any = UNDEF, pretty: Any = False) -> Any:
        if not isinstance(pretty, bool):
            raise signature_error("string", 2)
        if value is UNDEF:
            return UNDEF
        if pretty is True and not isinstance(value, str):
            return json.dumps(_to_json(value), indent=2, ensure_ascii=False)
        return _string(value)

    def f_number(value: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        if _is_num(value):
            return value
        if isinstance(value, bool):
            return 1 if value else 0
        if isinstance(value, str):
            try:
                for prefix, base in (("0x", 16), ("0b", 2), ("0o", 8)):
                    if re.fullmatch(f"{prefix}[0-9a-fA-F]+", value.lower()):
                        return int(value[2:], base)
                result = json.loads(value) if value == value.strip() else None
                if isinstance(result, int | float) and not isinstance(result, bool) and (
                        math.isfinite(result)):
                    return result
            except ValueError:
                pass
        raise JsonataError(f"Unable to cast value to a number: {_string(value)}")

    def numbers(name: str, values: Any) -> list[Any]:
        items = _seq(values)
        if not all(_is_num(v) for v in items):
            raise JsonataError(f"Argument 1 of function ${name} must be an array of numbers")
        return items

    def f_sum(values: Any) -> Any:
        return UNDEF if values is UNDEF else sum(numbers("sum", values))

    def f_max(values: Any) -> Any:
        items = numbers("max", values)
        return max(items) if items else UNDEF

    def f_min(values: Any) -> Any:
        items = numbers("min", values)
        return min(items) if items else UNDEF

    def f_average(values: Any) -> Any:
        items = numbers("average", values)
        return sum(items) / len(items) if items else UNDEF

    def f_count(values: Any = UNDEF) -> Any:
        return len(_seq(values))

    def text(name: str, value: Any) -> str:
        if not isinstance(value, str):
            raise JsonataError(f"Argument 1 of function ${name} must be a string")
        return value

    def f_length(value: Any) -> Any:
        return UNDEF if value is UNDEF else len(text("length", value))

    def f_substring(value: Any, start: Any, length: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("substring", value)
        begin = int(start)
        if begin < 0:
            begin = max(0, len(s) + begin)
        if length is UNDEF:
            return s[begin:]
        return s[begin:begin + max(0, int(length))]

    def f_substring_before(value: Any, chars: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("substringBefore", value)
        i = s.find(chars)
        return s if i < 0 else s[:i]

    def f_substring_after(value: Any, chars: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("substringAfter", value)
        i = s.find(chars)
        return s if i < 0 else s[i + len(chars):]

    def f_trim(value: Any) -> Any:
        return UNDEF if value is UNDEF else " ".join(text("trim", value).split())

    def f_pad(value: Any, width: Any, char: Any = " ") -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("pad", value)
        w = int(width)
        fill = (char or " ")
        if abs(w) <= len(s):
            return s
        pad = (fill * abs(w))[: abs(w) - len(s)]
        return s + pad if w > 0 else pad + s

    def f_contains(value: Any, pattern: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("contains", value)
        if isinstance(pattern, re.Pattern):
            return pattern.search(s) is not None
        return pattern in s

    def f_split(value: Any, sep: Any, limit: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("split", value)
        if isinstance(sep, re.Pattern):
            parts = sep.split(s)
        elif sep == "":
            parts = list(s)
        else:
            parts = s.split(sep)
        if limit is not UNDEF:
            if not _is_num(limit) or limit < 0:
                raise JsonataError("Third argument of split function must evaluate to a "
                                   "positive number")
            parts = parts[: int(limit)]
        return parts

    def f_join(values: Any, sep: Any = "") -> Any:
        if values is UNDEF:
            return UNDEF
        items = _seq(values)
        if not all(isinstance(i, str) for i in items):
            raise JsonataError("Argument 1 of function $join must be an array of strings")
        if not isinstance(sep, str):
            raise signature_error("join", 2)
        return sep.join(items)

    def f_replace(value: Any, pattern: Any, replacement: Any, limit: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        s = text("replace", value)
        count = 0 if limit is UNDEF else int(limit)
        if isinstance(pattern, re.Pattern):
            if callable(replacement):
                return pattern.sub(lambda m: _string(apply(replacement, {
                    "match": m.group(0), "index": m.start(), "groups": list(m.groups())})),
                    s, count=count)
            template = str(replacement)
            return pattern.sub(lambda m: _expand(template, m), s, count=count)
        if pattern == "":
            raise JsonataError("Second argument of replace function cannot be an empty string")
        return s.replace(pattern, str(replacement), -1 if limit is UNDEF else count)

    def f_match(value: Any, pattern: Any, limit: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        matches = [{"match": m.group(0), "index": m.start(), "groups": list(m.groups())}
                   for m in pattern.finditer(text("match", value))]
        return Sequence(matches[: int(limit)] if limit is not UNDEF else matches)

    def f_keys(value: Any) -> Any:
        if isinstance(value, list):
            keys: list[str] = []
            for v in value:
                if isinstance(v, dict):
                    keys.extend(k for k in v if k not in keys)
            return Sequence(keys)
        return Sequence(value.keys()) if isinstance(value, dict) else UNDEF

    def f_lookup(value: Any, key: Any = UNDEF) -> Any:
        if key is not UNDEF and not isinstance(key, str):
            raise signature_error("lookup", 2)
        if isinstance(value, list):
            return Sequence(v[key] for v in value if isinstance(v, dict) and key in v)
        return value.get(key, UNDEF) if isinstance(value, dict) else UNDEF

    def f_merge(values: Any) -> Any:
        if values is UNDEF:
            return UNDEF
        out: dict[str, Any] = {}
        for v in _seq(values):
            if not isinstance(v, dict):
                raise JsonataError('Argument 1 of function "merge" must be an array of '
                                   '"objects"')
            out.update(v)
        return out

    def f_spread(value: Any) -> Any:
        if isinstance(value, list):
            out = Sequence()
            for item in value:
                out.extend(_seq(_collapse(f_spread(item))))
            return out
        if isinstance(value, dict):
            return Sequence({k: v} for k, v in value.items())
        return value

    def f_each(obj: Any, fn: Any) -> Any:
        if obj is UNDEF:
            return UNDEF
        if not isinstance(obj, dict):
            raise JsonataError('Argument 1 of function "each" does not match function signature')
        return Sequence(apply(fn, v, k, obj) for k, v in obj.items())

    def f_sift(obj: Any, fn: Any) -> Any:
        if obj is UNDEF:
            return UNDEF
        if not isinstance(obj, dict):
            raise JsonataError('Argument 1 of function "sift" does not match function signature')
        out = {k: v for k, v in obj.items() if _truthy(apply(fn, v, k, obj))}
        return out or UNDEF

    def f_append(a: Any, b: Any) -> Any:
        if a is UNDEF:
            return b
        if b is UNDEF:
            return a
        out = Sequence(_seq(a) + _seq(b))
        out.keep = True
        return out

    def f_exists(value: Any = UNDEF) -> Any:
        return value is not UNDEF

    def f_type(value: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        if value is None:
            return "null"
        if isinstance(value, bool):
            return "boolean"
        if _is_num(value):
            return "number"
        if isinstance(value, str):
            return "string"
        if isinstance(value, list):
            return "array"
        if callable(value):
            return "function"
        return "object"

    def f_boolean(value: Any) -> Any:
        return UNDEF if value is UNDEF else _truthy(value)

    def f_not(value: Any) -> Any:
        return UNDEF if value is UNDEF else not _truthy(value)

    def f_map(values: Any, fn: Any) -> Any:
        items = _seq(values)
        return Sequence(r for i, v in enumerate(items)
                        if (r := apply(fn, v, i, items)) is not UNDEF)

    def f_filter(values: Any, fn: Any) -> Any:
        items = _seq(values)
        return Sequence(v for i, v in enumerate(items) if _truthy(apply(fn, v, i, items)))

    def f_single(values: Any, fn: Any = UNDEF) -> Any:
        if values is UNDEF:
            return UNDEF
        items = _seq(values)
        found = [v for i, v in enumerate(items)
                 if fn is UNDEF or _truthy(apply(fn, v, i, items))]
        if len(found) != 1:
            raise JsonataError("Expected exactly one matching value in $single")
        return found[0]

    def f_reduce(values: Any, fn: Any, init: Any = UNDEF) -> Any:
        if not callable(fn):
            raise signature_error("reduce", 2)
        items = _seq(values)
        if init is UNDEF:
            if not items:
                return UNDEF
            acc, rest = items[0], items[1:]
        else:
            acc, rest = init, items
        first = len(items) - len(rest)  # $i is each value's position in the array
        for i, v in enumerate(rest, first):
            acc = apply(fn, acc, v, i, items)
        return acc

    # $sort, $reverse and $distinct answer arrays (a single value becomes [value]).
    def f_sort(values: Any, fn: Any = UNDEF) -> Any:
        if fn is not UNDEF and not callable(fn):
            raise signature_error("sort", 2)
        if values is UNDEF:
            return UNDEF
        items = _seq(values)
        if len(items) <= 1:
            return list(items)
        if fn is UNDEF:
            if not (all(_is_num(v) for v in items) or all(isinstance(v, str) for v in items)):
                raise JsonataError("$sort needs an array of numbers or strings, or a function")
            return sorted(items)
        return sorted(items, key=cmp_to_key(
            lambda a, b: 1 if _truthy(apply(fn, a, b)) else -1))

    def f_reverse(values: Any) -> Any:
        return UNDEF if values is UNDEF else list(reversed(_seq(values)))

    def f_distinct(values: Any) -> Any:
        if not isinstance(values, list):
            return values
        out: list[Any] = []
        for v in values:
            if not any(_equal(v, o) for o in out):
                out.append(v)
        return out

    def f_shuffle(values: Any) -> Any:
        items = _seq(values)
        random.shuffle(items)
        return Sequence(items)

    def f_zip(*arrays: Any) -> Any:
        if not arrays:
            raise JsonataError('Argument 1 of function "zip" does not match function signature')
        lists = [_seq(a) for a in arrays]
        return [list(t) for t in zip(*lists, strict=False)]

    def f_round(value: Any, precision: Any = 0) -> Any:
        if value is UNDEF:
            return UNDEF
        n = _num_arg("round", value)
        p = int(precision) if precision is not UNDEF else 0
        scaled = n * 10**p
        rounded = round(scaled)  # banker's rounding, as JSONata
        return _norm(rounded / 10**p) if p > 0 else _norm(float(rounded) / 10**p)

    def f_power(base: Any, exp: Any) -> Any:
        if base is UNDEF:
            return UNDEF
        try:
            result = float(_num_arg("power", base)) ** float(_num_arg("power", exp))
        except (OverflowError, ZeroDivisionError):
            result = math.inf
        if isinstance(result, complex) or (isinstance(result, float) and not math.isfinite(
                result)):
            raise JsonataError("The power function has resulted in a value that cannot be "
                               "represented as a JSON number")
        return _norm(result)

    def f_sqrt(value: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        n = _num_arg("sqrt", value)
        if n < 0:
            raise JsonataError("The sqrt function cannot be applied to a negative number")
        return _norm(math.sqrt(n))

    def picture_call(fn: Callable[..., str | int], *args: Any) -> Any:
        try:
            return fn(*args)
        except PictureError as exc:
            raise JsonataError(str(exc)) from None

    def optional_text(value: Any) -> str | None:
        return None if value is UNDEF or value is None else str(value)

    def f_now(picture: Any = UNDEF, tz: Any = UNDEF) -> Any:
        millis = int(time.time() * 1000)
        return picture_call(format_datetime, millis, optional_text(picture), optional_text(tz))

    def f_millis() -> Any:
        return int(time.time() * 1000)

    def f_from_millis(value: Any, picture: Any = UNDEF, tz: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        return picture_call(format_datetime, _num_arg("fromMillis", value),
                            optional_text(picture), optional_text(tz))

    def f_to_millis(value: Any, picture: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        if picture is not UNDEF:
            return picture_call(parse_datetime, text("toMillis", value), str(picture))
        from kiln.states.choice import parse_timestamp

        parsed = parse_timestamp(value)
        if parsed is None and isinstance(value, str) and re.fullmatch(
                r"\d{4}-\d{2}-\d{2}", value):
            parsed = parse_timestamp(value + "T00:00:00Z")
        if parsed is None:
            raise JsonataError(f"Unable to parse timestamp: {value}")
        return round(parsed.timestamp() * 1000)

    def f_format_integer(value: Any, picture: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        return picture_call(format_integer, int(_num_arg("formatInteger", value)),
                            str(picture))

    def f_parse_integer(value: Any, picture: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        return picture_call(parse_integer, text("parseInteger", value), str(picture))

    def f_eval(*_: Any) -> Any:
        # Step Functions leaves $eval out of its JSONata; $parse covers reading JSON text.
        raise JsonataError("The function $eval is not supported by AWS Step Functions")

    # Like btoa/atob in jsonata-js: each character is one byte (Latin-1).
    def f_base64encode(value: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        raw = bytes(ord(c) & 0xFF for c in text("base64encode", value))
        return base64.b64encode(raw).decode()

    def f_base64decode(value: Any) -> Any:
        if value is UNDEF:
            return UNDEF
        return base64.b64decode(text("base64decode", value)).decode("latin-1")

    def f_error(message: Any = UNDEF) -> Any:
        raise JsonataError("$error() function evaluated" if message is UNDEF else str(message))

    def f_assert(cond: Any, message: Any = "$assert() statement failed") -> Any:
        if not isinstance(cond, bool):
            raise signature_error("assert", 1)
        if not cond:
            raise JsonataError(str(message))
        return UNDEF

    def f_format_number(value: Any, picture: Any, options: Any = UNDEF) -> Any:
        if value is UNDEF:
            return UNDEF
        return _format_number(_num_arg("formatNumber", value), str(picture))

    def f_format_base(value: Any, radix: Any = 10) -> Any:
        if value is UNDEF:
            return UNDEF
        n, base = round(_num_arg("formatBase", value)), int(radix)
        if not 2 <= base <= 36:
            raise JsonataError("The radix of $formatBase must be between 2 and 36")
        chars = "0123456789abcdefghijklmnopqrstuvwxyz"
        out, m = "", abs(n)
        while True:
            out = chars[m % base] + out
            m //= base
            if m == 0:
                break
        return ("-" if n < 0 else "") + out

    # AWS Step Functions additions
    def f_partition(values: Any, size: Any) -> Any:
        items = _seq(values)
        n = int(size)
        if n <= 0:
            raise JsonataError("The size argument of $partition must be positive")
        return [items[i:i + n] for i in range(0, len(items), n)]

    def f_range(start: Any, end: Any, step: Any = 1) -> Any:
        if int(step) == 0:
            raise JsonataError("The step argument of $range must not be 0")
        out = inclusive_range(int(start), int(end), int(step))
        if out is None:
            raise JsonataError("$range can generate at most 1000 items")
        return out

    def f_hash(value: Any, algorithm: Any = "SHA-256") -> Any:
        names = {"MD5": "md5", "SHA-1": "sha1", "SHA-256": "sha256", "SHA-384": "sha384",
                 "SHA-512": "sha512"}
        if algorithm not in names:
            raise JsonataError(f"Unsupported hash algorithm {algorithm}")
        return hashlib.new(names[algorithm], _string(value).encode()).hexdigest()

    def f_random(seed: Any = UNDEF) -> Any:
        if seed is UNDEF:
            return random.random()
        return _java_random(int(seed))()

    def f_uuid() -> Any:
        return str(uuid.uuid4())

    def f_parse(value: Any) -> Any:
        try:
            return json.loads(text("parse", value))
        except ValueError:
            raise JsonataError(f"$parse could not parse {value!r} as JSON") from None

    def context_fn(fn: Callable[..., Any], min_args: int) -> Callable[..., Any]:
        fn.uses_context = True  # type: ignore[attr-defined]
        fn.min_args = min_args  # type: ignore[attr-defined]
        return fn

    table: dict[str, Any] = {
        "sum": f_sum, "max": f_max, "min": f_min, "average": f_average, "count": f_count,
        "string": context_fn(f_string, 1), "number": context_fn(f_number, 1),
        "length": context_fn(f_length, 1), "substring": f_substring,
        "substringBefore": f_substring_before, "substringAfter": f_substring_after,
        "uppercase": context_fn(lambda v: UNDEF if v is UNDEF else text("uppercase", v)
                                .upper(), 1),
        "lowercase": context_fn(lambda v: UNDEF if v is UNDEF else text("lowercase", v)
                                .lower(), 1),
        "trim": context_fn(f_trim, 1), "pad": f_pad, "contains": f_contains, "split": f_split,
        "join": f_join, "replace": f_replace, "match": f_match, "keys": f_keys,
        "lookup": f_lookup, "merge": f_merge, "spread": f_spread, "each": f_each,
        "sift": f_sift, "append": f_append, "exists": f_exists, "type": f_type,
        "boolean": f_boolean, "not": f_not, "map": f_map, "filter": f_filter,
        "single": f_single, "reduce": f_reduce, "sort": f_sort, "reverse": f_reverse,
        "distinct": f_distinct, "shuffle": f_shuffle, "zip": f_zip,
        "abs": lambda v: UNDEF if v is UNDEF else abs(_num_arg("abs", v)),
        "floor": lambda v: UNDEF if v is UNDEF else math.floor(_num_arg("floor", v)),
        "ceil": lambda v: UNDEF if v is UNDEF else math.ceil(_num_arg("ceil", v)),
        "round": f_round, "power": f_power, "sqrt": f_sqrt, "now": f_now, "millis": f_millis,
        "fromMillis": f_from_millis, "toMillis": f_to_millis,
        "base64encode": f_base64encode, "base64decode": f_base64decode,
        "encodeUrlComponent": lambda v: UNDEF if v is UNDEF else urllib.parse.quote(
            v, safe="-_.!~*'()"),
        "encodeUrl": lambda v: UNDEF if v is UNDEF else urllib.parse.quote(
            v, safe="-_.!~*'();/?:@&=+$,#"),
        "decodeUrlComponent": lambda v: UNDEF if v is UNDEF else urllib.parse.unquote(v),
        "decodeUrl": lambda v: UNDEF if v is UNDEF else urllib.parse.unquote(v),
        "error": f_error, "assert": f_assert, "formatNumber": f_format_number,
        "formatBase": f_format_base, "formatInteger": f_format_integer,
        "parseInteger": f_parse_integer, "eval": f_eval,
        "clone": lambda v: json.loads(json.dumps(_to_json(v))),
        "partition": f_partition, "range": f_range, "hash": f_hash, "random": f_random,
        "uuid": f_uuid, "parse": f_parse,
    }
    return table
