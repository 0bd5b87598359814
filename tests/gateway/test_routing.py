"""Route matching in AWS's order, and route-key validation."""

from __future__ import annotations

import pytest

from kiln.gateway.routing import RouteTable, http_route_error
from kiln.gateway.types import Route

DOC_ROUTES = ["GET /pets/dog/1", "GET /pets/dog/{id}", "GET /pets/{proxy+}", "ANY /{proxy+}",
              "$default"]


def table(keys: list[str]) -> RouteTable:
    return RouteTable([Route(f"r{i}", key, None) for i, key in enumerate(keys)])


@pytest.mark.parametrize(("method", "path", "key", "params"), [
    # The examples of AWS's "Routing API requests".
    ("GET", "/pets/dog/1", "GET /pets/dog/1", {}),
    ("GET", "/pets/dog/2", "GET /pets/dog/{id}", {"id": "2"}),
    ("GET", "/pets/cat/1", "GET /pets/{proxy+}", {"proxy": "cat/1"}),
    ("POST", "/test/5", "ANY /{proxy+}", {"proxy": "test/5"}),
    ("GET", "/", "$default", {}),
    ("GET", "/pets/dog/1/", "GET /pets/{proxy+}", {"proxy": "dog/1/"}),
])
def test_doc_examples(method: str, path: str, key: str, params: dict[str, str]) -> None:
    found = table(DOC_ROUTES).match(method, path)
    assert found is not None
    assert (found[0].route_key, found[1]) == (key, params)


def test_specificity() -> None:
    routes = table(["ANY /a/{x}", "GET /a/{x}", "GET /{y}/b", "GET /a/b", "GET /a/{p+}"])
    assert routes.match("GET", "/a/b")[0].route_key == "GET /a/b"  # type: ignore[index]
    assert routes.match("GET", "/a/c")[0].route_key == "GET /a/{x}"  # type: ignore[index]
    assert routes.match("PUT", "/a/c")[0].route_key == "ANY /a/{x}"  # type: ignore[index]
    assert routes.match("GET", "/z/b")[0].route_key == "GET /{y}/b"  # type: ignore[index]
    assert routes.match("GET", "/a/c/d")[1] == {"p": "c/d"}  # type: ignore[index]
    assert routes.match("GET", "/a") is None  # no $default
    assert routes.match("GET", "/a//") is None  # a {param} takes a non-empty segment


def test_greedy_prefers_longer_prefix() -> None:
    routes = table(["ANY /{proxy+}", "GET /api/{proxy+}", "ANY /api/v1/{proxy+}"])
    assert routes.match("GET", "/api/v1/x")[0].route_key == "ANY /api/v1/{proxy+}"  # type: ignore[index]
    assert routes.match("GET", "/api/x")[0].route_key == "GET /api/{proxy+}"  # type: ignore[index]
    assert routes.match("POST", "/api/x")[0].route_key == "ANY /{proxy+}"  # type: ignore[index]


@pytest.mark.parametrize("key", ["$default", "GET /", "ANY /{proxy+}", "GET /items/{id}",
                                 "POST /a/b.c/{x_y-z}/{rest+}"])
def test_valid_keys(key: str) -> None:
    assert http_route_error(key) is None


@pytest.mark.parametrize("key", ["GET", "get /x", "GET x", "GET /a//b", "GET /{a+}/b",
                                 "GET /a{b}", "GET /a b", "$connect"])
def test_invalid_keys(key: str) -> None:
    assert http_route_error(key) is not None
