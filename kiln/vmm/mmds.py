"""The MMDS: the host's metadata store and the guest's HTTP view of it (V1 and V2 sessions).

The host edits it through ``PUT``/``PATCH``/``GET /mmds`` (JSON Merge Patch, RFC 7396, limited
to 51,200 bytes as in Firecracker); the guest reads it over the channel's ``MMDS_PORT`` with
Firecracker's MMDS HTTP (``PUT /latest/api/token`` then ``GET`` with ``X-metadata-token``).
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from kiln.vmm.http import HttpRequest, HttpResponse
from kiln.vmm.model import MMDS_LIMIT_BYTES, ApiError, MmdsConfig, deserialize_error, parse_body

TOKEN_TTL_MAX = 21600


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7396."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class Mmds:
    def __init__(self) -> None:
        self.data: dict[str, Any] | None = None
        self.config: MmdsConfig | None = None
        self._tokens: dict[str, float] = {}

    def put(self, body: bytes) -> None:
        self._store(_object(body))

    def patch(self, body: bytes) -> None:
        if self.data is None:
            raise ApiError("The MMDS data store is not initialized.")
        self._store(merge_patch(self.data, _object(body)))

    def _store(self, data: dict[str, Any]) -> None:
        size = len(json.dumps(data, separators=(",", ":")))
        if size > MMDS_LIMIT_BYTES:
            raise ApiError(f"The MMDS patch request doesn't fit: {size} bytes exceed the data "
                           f"store limit of {MMDS_LIMIT_BYTES} bytes.", status=400)
        self.data = data

    # -- the guest's side -------------------------------------------------------------------------

    async def serve(self, request: HttpRequest) -> HttpResponse:
        version = self.config.version if self.config else "V1"
        if request.method == "PUT" and request.path == "/latest/api/token":
            return self._token(request)
        if request.method != "GET":
            return _text(405, "Not allowed HTTP method.")
        token = request.headers.get("x-metadata-token")
        if token is not None or version == "V2":
            expiry = self._tokens.get(token or "")
            if expiry is None or expiry < time.monotonic():
                return _text(401, "API token is either missing or invalid.")
        node: Any = self.data if self.data is not None else {}
        for part in [p for p in request.path.split("/") if p]:
            if not isinstance(node, dict) or part not in node:
                return _text(404, f"Resource not found: {request.path}.")
            node = node[part]
        json_wanted = "application/json" in request.headers.get("accept", "")
        if json_wanted and not (self.config and self.config.imds_compat):
            return HttpResponse(200, json.dumps(node).encode(), "application/json")
        if isinstance(node, dict):
            lines = [k + "/" if isinstance(v, dict) else k for k, v in node.items()]
            return _text(200, "\n".join(lines))
        if isinstance(node, str):
            return _text(200, node)
        return _text(501, "Cannot retrieve value. The value has an unsupported type.")

    def _token(self, request: HttpRequest) -> HttpResponse:
        if "x-forwarded-for" in request.headers:
            return _text(400, "Invalid header. Reason: Unsupported header name. Key: "
                              "X-Forwarded-For")
        raw = request.headers.get("x-metadata-token-ttl-seconds", "")
        if not raw.isdigit() or not 1 <= int(raw) <= TOKEN_TTL_MAX:
            return _text(400, f"Invalid time to live value provided for token: {raw}. Please "
                              f"provide a value between 1 and {TOKEN_TTL_MAX}.")
        now = time.monotonic()
        self._tokens = {t: e for t, e in self._tokens.items() if e >= now}
        token = secrets.token_urlsafe(32)
        self._tokens[token] = now + int(raw)
        return _text(200, token)


def _object(body: bytes) -> dict[str, Any]:
    value = parse_body(body)
    if not isinstance(value, dict):
        raise deserialize_error("the MMDS contents must be a JSON object")
    return value


def _text(status: int, text: str) -> HttpResponse:
    return HttpResponse(status, text.encode(), "text/plain")
