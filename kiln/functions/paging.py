"""List* pagination: ``NextMarker`` is an opaque token naming the last item answered.

    items, next_marker = page_of(aliases, lambda a: a.name, max_items, marker)
    marker = encode_marker(last_name)      # into NextMarker
    after = decode_marker(marker)          # InvalidParameterValueException if not ours
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from typing import TypeVar

from kiln.aws.errors import AwsError

T = TypeVar("T")


def encode_marker(key: str) -> str:
    return base64.urlsafe_b64encode(key.encode()).decode()


def decode_marker(marker: str) -> str:
    try:
        key = base64.b64decode(marker.encode(), altchars=b"-_", validate=True).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError):
        key = ""
    if not key:
        raise AwsError.invalid_parameter(f"Invalid marker: {marker}")
    return key


def page_of(items: Sequence[T], key: Callable[[T], str], max_items: int,
            marker: str | None = None) -> tuple[list[T], str | None]:
    """The first ``max_items`` of ``items`` after the one ``marker`` names (``items`` ordered
    by ``key``; without a marker, from the start), and the NextMarker naming the last of them
    when more follow."""
    if marker:
        after = decode_marker(marker)
        items = [item for item in items if key(item) > after]
    page = list(items[:max_items])
    return page, (encode_marker(key(page[-1])) if len(items) > max_items else None)
