"""Which gateway a request is addressed to, by host or by path prefix on Kiln's one port.

An API is reached at ``http://{api-id}.execute-api.localhost:PORT/{stage}/path`` or at
``http://HOST:PORT/_aws/execute-api/{api-id}/{stage}/path`` (LocalStack's convention).  In both
forms a first segment naming a stage of the API selects that stage; otherwise the ``$default``
stage serves the whole path, as on AWS (so ``/_aws/execute-api/{api-id}/items/1`` is the route
path ``/items/1`` of the ``$default`` stage).  Function URLs are
``http://{url-id}.lambda-url.localhost:PORT/path`` or ``/_aws/lambda-url/{url-id}/path``.
Any host *starting* ``{id}.execute-api.`` / ``{id}.lambda-url.`` counts, so AWS-style names
pointed at Kiln work too.  Paths are ``scope["path"]`` (percent-decoded).

    if is_gateway(scope):
        address = api_address(scope, has_stage)   # (api_id, stage, path) or None
        url = function_url_address(scope)          # (url_id, path) or None
"""

from __future__ import annotations

from collections.abc import Callable

from starlette.types import Scope

API_PREFIX = "/_aws/execute-api/"
URL_PREFIX = "/_aws/lambda-url/"
DEFAULT_STAGE = "$default"
_API_HOST = ".execute-api."
_URL_HOST = ".lambda-url."

HasStage = Callable[[str, str], bool]
"""``has_stage(api_id, stage)``: whether the API has that stage (the store answers)."""


def host(scope: Scope) -> str:
    """The request's Host header, lowercased, without the port ('' when absent); good for
    matching gateway names, not for IPv6 literals."""
    for name, value in scope.get("headers", ()):
        if name == b"host":
            text: str = value.decode("latin-1")
            return text.lower().partition(":")[0]
    return ""


def is_gateway(scope: Scope) -> bool:
    """A cheap test whether the request is meant for an API or a Function URL."""
    if scope["path"].startswith("/_aws/"):
        return True
    name = host(scope)
    return _API_HOST in name or _URL_HOST in name


def api_address(scope: Scope, has_stage: HasStage) -> tuple[str, str, str] | None:
    """(api_id, stage, path) of an execute-api request; None when not addressed to an API.

    ``path`` is the route path, always starting with ``/``."""
    path: str = scope["path"]
    if path.startswith(API_PREFIX):
        api_id, rest = _split(path[len(API_PREFIX):])
    else:
        api_id = _host_id(host(scope), _API_HOST)
        rest = path
    if not api_id:
        return None
    first, remainder = _split(rest.lstrip("/"))
    if first and first != DEFAULT_STAGE and has_stage(api_id, first):
        return api_id, first, remainder
    if first == DEFAULT_STAGE:
        return api_id, DEFAULT_STAGE, remainder
    return api_id, DEFAULT_STAGE, rest if rest.startswith("/") else "/" + rest


def function_url_address(scope: Scope) -> tuple[str, str] | None:
    """(url_id, path) of a Function URL request; None when not addressed to one."""
    path: str = scope["path"]
    if path.startswith(URL_PREFIX):
        url_id, rest = _split(path[len(URL_PREFIX):])
    else:
        url_id, rest = _host_id(host(scope), _URL_HOST), path
    if not url_id:
        return None
    return url_id, rest or "/"


def raw_route_path(scope: Scope, path: str) -> str:
    """``path`` (a suffix of ``scope["path"]``, decoded) as the client sent it, still
    percent-encoded, from ``scope["raw_path"]``."""
    raw = scope.get("raw_path")
    full: str = scope["path"]
    if not raw or not full.endswith(path):
        return path
    skipped = full[:len(full) - len(path)].count("/")
    parts = raw.decode("latin-1").partition("?")[0].split("/")
    return "/" + "/".join(parts[skipped + 1:])


def _split(path: str) -> tuple[str, str]:
    """'a/b/c' -> ('a', '/b/c'); 'a' -> ('a', '/')."""
    first, slash, rest = path.partition("/")
    return first, slash + rest if slash else "/"


def _host_id(name: str, marker: str) -> str:
    head, found, _tail = name.partition(marker)
    return head if found and head and "." not in head else ""
