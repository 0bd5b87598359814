"""List* pagination: ``NextMarker`` is an opaque token naming the last item answered.

    marker = encode_marker(last_name)      # into NextMarker
    after = decode_marker(marker)          # InvalidParameterValueException if not ours
"""

from __future__ import annotations

import base64
import binascii

from kiln.aws.errors import AwsError


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
