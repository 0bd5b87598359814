"""InvokeApp's choice of the requests Kiln's HTTP protocol answers without ASGI (the body's
framing and size are the protocol's to check: tests/test_http_protocol.py)."""

from __future__ import annotations

import pytest

from kiln.invoke.api import InvokeApp


@pytest.mark.parametrize(("method", "path", "headers", "expected"), [
    ("POST", "/2015-03-31/functions/fn/invocations", [(b"content-length", b"2")], "fn"),
    ("POST", "/2015-03-31/functions/arn:aws:lambda:us-east-1:000000000000:function:fn"
             "/invocations/", [(b"content-length", b"0")],
     "arn:aws:lambda:us-east-1:000000000000:function:fn"),
    ("GET", "/2015-03-31/functions/fn/invocations", [(b"content-length", b"2")], None),
    ("POST", "/2015-03-31/functions/fn", [(b"content-length", b"2")], None),
    ("POST", "/_aws/lambda-url/abc/2015-03-31/functions/fn/invocations",
     [(b"content-length", b"2")], None),
    ("POST", "/2015-03-31/functions/fn/invocations",
     [(b"host", b"abc.execute-api.localhost"), (b"content-length", b"2")], None),
])
def test_which_requests_skip_asgi(method: str, path: str, headers: list[tuple[bytes, bytes]],
                                  expected: str | None) -> None:
    app = InvokeApp(kiln=None, app=None)  # type: ignore[arg-type]  # target() reads the scope only
    scope = {"type": "http", "method": method, "path": path, "headers": headers}
    assert app.target(scope) == expected
