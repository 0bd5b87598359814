"""HTTP API route matching in AWS's order.

A request goes to (1) the most specific full match of path and method (a literal segment beats
``{param}``, an explicit method beats ``ANY``), else (2) the longest greedy ``{proxy+}`` route
that matches, else (3) ``$default``.  ``{param}`` takes exactly one non-empty segment; a greedy
variable takes one or more, so ``/{proxy+}`` does not match ``/``.

    table = RouteTable(stage.routes)
    found = table.match("GET", "/pets/dog/1")     # (Route, {"id": "1"}) or None
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.gateway.types import Route

DEFAULT_ROUTE = "$default"
METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "ANY"})
_PARAM = re.compile(r"^\{([A-Za-z0-9._-]+)(\+?)\}$")


def http_route_error(route_key: str) -> str | None:
    """Why ``route_key`` is not a valid HTTP API route key (None when it is)."""
    if route_key == DEFAULT_ROUTE:
        return None
    method, _, path = route_key.partition(" ")
    if method not in METHODS or not path.startswith("/") or " " in path:
        return f"Invalid route key: {route_key}. A route key must be $default or " \
               "'<METHOD> /<path>' with METHOD one of ANY, DELETE, GET, HEAD, OPTIONS, PATCH, " \
               "POST, PUT"
    segments = path[1:].split("/") if path != "/" else []
    for index, segment in enumerate(segments):
        if not segment:
            return f"Invalid route key: {route_key}. Empty path segment"
        param = _PARAM.match(segment)
        if ("{" in segment or "}" in segment) and param is None:
            return f"Invalid route key: {route_key}. Bad path parameter {segment}"
        if param and param[2] and index != len(segments) - 1:
            return f"Invalid route key: {route_key}. A greedy path variable must be the " \
                   "last segment"
    return None


@dataclass(frozen=True)
class _Compiled:
    route: Route
    method: str
    parts: tuple[tuple[str, str], ...]  # ("lit", text) | ("var", name)
    greedy: str | None  # name of the trailing {name+} variable

    def match(self, method: str, segments: list[str]) -> dict[str, str] | None:
        if self.method != "ANY" and self.method != method:
            return None
        fixed = len(self.parts)
        if self.greedy is None:
            if len(segments) != fixed:
                return None
        elif len(segments) <= fixed:
            return None
        params: dict[str, str] = {}
        for (kind, value), segment in zip(self.parts, segments, strict=False):
            if kind == "lit":
                if segment != value:
                    return None
            elif not segment:
                return None
            else:
                params[value] = segment
        if self.greedy is not None:
            rest = "/".join(segments[fixed:])
            if not rest.strip("/"):
                return None
            params[self.greedy] = rest
        return params

    def rank(self) -> tuple[int, tuple[int, ...], int]:
        """Higher is more specific."""
        literal = tuple(2 if kind == "lit" else 1 for kind, _ in self.parts)
        return len(self.parts), literal, int(self.method != "ANY")


class RouteTable:
    def __init__(self, routes: Iterable[Route]) -> None:
        self.exact: list[_Compiled] = []
        self.greedy: list[_Compiled] = []
        self.default: Route | None = None
        for route in routes:
            if route.route_key == DEFAULT_ROUTE:
                self.default = route
                continue
            compiled = _compile(route)
            (self.exact if compiled.greedy is None else self.greedy).append(compiled)
        # Most specific first, so the first match wins.
        self.exact.sort(key=lambda c: c.rank()[1:], reverse=True)
        self.greedy.sort(key=lambda c: c.rank(), reverse=True)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]] | None:
        segments = path[1:].split("/") if path not in ("", "/") else []
        for compiled in (*self.exact, *self.greedy):
            params = compiled.match(method, segments)
            if params is not None:
                return compiled.route, params
        return (self.default, {}) if self.default is not None else None


def _compile(route: Route) -> _Compiled:
    method, _, path = route.route_key.partition(" ")
    parts: list[tuple[str, str]] = []
    greedy = None
    for segment in path[1:].split("/") if path != "/" else []:
        param = _PARAM.match(segment)
        if param is None:
            parts.append(("lit", segment))
        elif param[2]:
            greedy = param[1]
        else:
            parts.append(("var", param[1]))
    return _Compiled(route, method, tuple(parts), greedy)
