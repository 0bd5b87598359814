"""CORS as API Gateway HTTP APIs and Function URLs apply it: the gateway answers preflight
requests itself, and adds the configured headers to the function's responses (replacing any
the function set).

    if is_preflight(request): status, headers = 204, preflight_headers(cors, request)
    else: headers = with_cors(cors, request, headers)
"""

from __future__ import annotations

from kiln.gateway.events import Headers, HttpRequest
from kiln.gateway.types import Cors


def is_preflight(request: HttpRequest) -> bool:
    return (request.method == "OPTIONS" and request.header("origin") is not None
            and request.header("access-control-request-method") is not None)


def _allowed_origin(cors: Cors, origin: str | None) -> str | None:
    """The Access-Control-Allow-Origin value for ``origin`` (None: not allowed)."""
    if origin is None:
        return None
    if origin in cors.allow_origins:
        return origin
    if "*" in cors.allow_origins:
        return "*"
    return None


def preflight_headers(cors: Cors, request: HttpRequest) -> Headers:
    """The headers of the gateway's answer to a preflight (none when the origin or method is
    not allowed, so the browser refuses)."""
    allow_origin = _allowed_origin(cors, request.header("origin"))
    method = (request.header("access-control-request-method") or "").upper()
    if allow_origin is None or not ("*" in cors.allow_methods or method in cors.allow_methods):
        return []
    headers: Headers = [("access-control-allow-origin", allow_origin),
                        ("access-control-allow-methods", ",".join(cors.allow_methods))]
    requested = request.header("access-control-request-headers")
    if "*" in cors.allow_headers and requested:
        headers.append(("access-control-allow-headers", requested))
    elif cors.allow_headers:
        headers.append(("access-control-allow-headers", ",".join(cors.allow_headers)))
    if cors.max_age is not None:
        headers.append(("access-control-max-age", str(cors.max_age)))
    if cors.allow_credentials:
        headers.append(("access-control-allow-credentials", "true"))
    return headers


def with_cors(cors: Cors, request: HttpRequest, headers: Headers) -> Headers:
    allow_origin = _allowed_origin(cors, request.header("origin"))
    if allow_origin is None:
        return headers
    kept = [(k, v) for k, v in headers if not k.lower().startswith("access-control-")]
    kept.append(("access-control-allow-origin", allow_origin))
    if cors.expose_headers:
        kept.append(("access-control-expose-headers", ",".join(cors.expose_headers)))
    if cors.allow_credentials:
        kept.append(("access-control-allow-credentials", "true"))
    return kept
