"""Which bodies Kiln's HTTP protocol collects itself (a length known from the head), and which
requests need uvicorn's proxy-headers middleware."""

from __future__ import annotations

import pytest

from kiln.http_protocol import _head


@pytest.mark.parametrize(("headers", "expected"), [
    ([], 0),
    ([(b"content-length", b"12")], 12),
    ([(b"content-length", b"-1")], None),
    ([(b"content-length", b"1e3")], None),
    ([(b"transfer-encoding", b"chunked")], None),
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], None),
    ([(b"transfer-encoding", b"chunked"), (b"content-length", b"5")], None),
])
def test_declared_length(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert _head({"headers": headers}) == (expected, False)


def test_forwarded_headers_are_noticed() -> None:
    assert _head({"headers": [(b"x-forwarded-for", b"10.0.0.1")]}) == (0, True)
    assert _head({"headers": [(b"x-forwarded-proto", b"https")]}) == (0, True)
    assert _head({"headers": [(b"x-forwarded-port", b"80")]}) == (0, False)
