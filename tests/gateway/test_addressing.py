"""Where a request is addressed: API by host or prefix, stage selection, Function URLs."""

from __future__ import annotations

from typing import Any

from kiln.gateway.addressing import (
    api_address,
    function_url_address,
    is_gateway,
    raw_route_path,
)


def scope(path: str, host: str = "127.0.0.1:8900") -> dict[str, Any]:
    return {"type": "http", "path": path, "headers": [(b"host", host.encode())]}


def has_prod(api_id: str, stage: str) -> bool:
    return (api_id, stage) == ("abc123defg", "prod")


def test_prefix_form() -> None:
    assert api_address(scope("/_aws/execute-api/abc123defg/prod/items/1"), has_prod) == \
        ("abc123defg", "prod", "/items/1")
    # No stage of that name: the $default stage gets the whole path.
    assert api_address(scope("/_aws/execute-api/abc123defg/items/1"), has_prod) == \
        ("abc123defg", "$default", "/items/1")
    assert api_address(scope("/_aws/execute-api/abc123defg/$default/x"), has_prod) == \
        ("abc123defg", "$default", "/x")
    assert api_address(scope("/_aws/execute-api/abc123defg"), has_prod) == \
        ("abc123defg", "$default", "/")
    assert api_address(scope("/_aws/execute-api/abc123defg/prod"), has_prod) == \
        ("abc123defg", "prod", "/")


def test_host_form() -> None:
    host = "abc123defg.execute-api.localhost:8900"
    assert api_address(scope("/prod/a", host), has_prod) == ("abc123defg", "prod", "/a")
    assert api_address(scope("/dev/a", host), has_prod) == ("abc123defg", "$default", "/dev/a")
    aws = "abc123defg.execute-api.us-east-1.amazonaws.com"
    assert api_address(scope("/", aws), has_prod) == ("abc123defg", "$default", "/")


def test_not_gateway_traffic() -> None:
    plain = scope("/2015-03-31/functions/f/invocations")
    assert not is_gateway(plain)
    assert api_address(plain, has_prod) is None
    assert function_url_address(plain) is None
    assert not is_gateway(scope("/", "localhost:8900"))
    assert not is_gateway({"type": "http", "path": "/x", "headers": []})


def test_function_urls() -> None:
    assert is_gateway(scope("/_aws/lambda-url/u1/a"))
    assert function_url_address(scope("/_aws/lambda-url/u1/a/b")) == ("u1", "/a/b")
    assert function_url_address(scope("/_aws/lambda-url/u1")) == ("u1", "/")
    assert function_url_address(scope("/p", "u1.lambda-url.localhost:9")) == ("u1", "/p")
    assert api_address(scope("/p", "u1.lambda-url.localhost:9"), has_prod) is None


def test_raw_route_path() -> None:
    prefixed = {"path": "/_aws/execute-api/abc/prod/a b/c/d",
                "raw_path": b"/_aws/execute-api/abc/prod/a%20b/c%2Fd"}
    assert raw_route_path(prefixed, "/a b/c/d") == "/a%20b/c%2Fd"
    host = {"path": "/a b", "raw_path": b"/a%20b"}
    assert raw_route_path(host, "/a b") == "/a%20b"
    assert raw_route_path({"path": "/_aws/execute-api/abc", "raw_path": b"/_aws/execute-api/abc"},
                          "/") == "/"
    assert raw_route_path({"path": "/x"}, "/x") == "/x"  # no raw_path from the server
