"""Which bodies Kiln's HTTP protocol collects itself: a length known from the head."""

from __future__ import annotations

import pytest

from kiln.http_protocol import _declared_length


@pytest.mark.parametrize(("headers", "expected"), [
    ([], 0),
    ([(b"content-length", b"12")], 12),
    ([(b"content-length", b"-1")], None),
    ([(b"content-length", b"1e3")], None),
    ([(b"transfer-encoding", b"chunked")], None),
    ([(b"content-length", b"5"), (b"transfer-encoding", b"chunked")], None),
])
def test_declared_length(headers: list[tuple[bytes, bytes]], expected: int | None) -> None:
    assert _declared_length({"headers": headers}) == expected
