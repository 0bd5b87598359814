"""A small HTTP client for a running Kiln, speaking the Lambda REST API (what the CLI uses).

Kiln accepts unsigned requests, so this is plain ``urllib`` (no boto3 needed).

    client = KilnClient("http://127.0.0.1:8900")
    config = client.create_function({"FunctionName": "fn", ...})
    result = client.invoke("fn", b'{"a": 1}', log_tail=True)
    text, offset = client.read_logs("fn", 0)
"""

from __future__ import annotations

import base64
import io
import json
import os
import stat
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULT_ENDPOINT = "http://127.0.0.1:8900"
API_TIMEOUT = 60.0
#: A sync invoke may run for the longest function timeout (900 s) plus a cold start.
INVOKE_TIMEOUT = 960.0
_LOOPBACK = ("127.0.0.1", "localhost", "::1")
#: DOS timestamps start in 1980; a fixed one keeps a directory's zip (and CodeSha256) stable.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


class ApiError(Exception):
    """An error answer from Kiln: the AWS error code, its message and the HTTP status."""

    def __init__(self, code: str, message: str, status: int) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.status = status


class ConnectionFailed(Exception):
    """Kiln could not be reached at all."""


@dataclass(frozen=True)
class InvokeResult:
    status: int
    payload: bytes
    request_id: str
    function_error: str | None = None
    log_result: str | None = None  # the decoded X-Amz-Log-Result (last 4 KB of the log)
    executed_version: str | None = None


@dataclass(frozen=True)
class _Response:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body.strip() else {}


def function_path(name: str, suffix: str = "") -> str:
    """``/2015-03-31/functions/<name>[/suffix]`` with the name (or ARN) percent-encoded."""
    return f"/2015-03-31/functions/{urllib.parse.quote(name, safe='')}{suffix}"


class KilnClient:
    def __init__(self, endpoint: str = DEFAULT_ENDPOINT) -> None:
        self.endpoint = endpoint.rstrip("/")
        parsed = urllib.parse.urlsplit(self.endpoint)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"not an http(s) URL: {endpoint!r}")
        # A proxy from the environment must not capture requests to a local Kiln.
        handlers = [urllib.request.ProxyHandler({})] if parsed.hostname in _LOOPBACK else []
        self._opener = urllib.request.build_opener(*handlers)

    # -- the Lambda operations ------------------------------------------------------------------

    def create_function(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._json("POST", "/2015-03-31/functions", body).json())

    def get_configuration(self, name: str) -> dict[str, Any]:
        return dict(self._request("GET", function_path(name, "/configuration")).json())

    def update_code(self, name: str, zip_bytes: bytes) -> dict[str, Any]:
        body = {"ZipFile": base64.b64encode(zip_bytes).decode()}
        return dict(self._json("PUT", function_path(name, "/code"), body).json())

    def update_configuration(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._json("PUT", function_path(name, "/configuration"), body).json())

    def delete_function(self, name: str) -> None:
        self._request("DELETE", function_path(name))

    def list_functions(self) -> Iterator[dict[str, Any]]:
        """Every function, following ``NextMarker`` across pages."""
        marker: str | None = None
        while True:
            query = "?MaxItems=50" + (f"&Marker={urllib.parse.quote(marker)}" if marker else "")
            page = self._request("GET", f"/2015-03-31/functions{query}").json()
            yield from page.get("Functions", [])
            marker = page.get("NextMarker")
            if not marker:
                return

    def invoke(self, name: str, payload: bytes, invocation_type: str = "RequestResponse",
               log_tail: bool = False) -> InvokeResult:
        headers = {"X-Amz-Invocation-Type": invocation_type,
                   "Content-Type": "application/json"}
        if log_tail:
            headers["X-Amz-Log-Type"] = "Tail"
        response = self._request("POST", function_path(name, "/invocations"), payload, headers,
                                 timeout=INVOKE_TIMEOUT)
        log_result = response.headers.get("x-amz-log-result")
        return InvokeResult(
            status=response.status,
            payload=response.body,
            request_id=response.headers.get("x-amzn-requestid", ""),
            function_error=response.headers.get("x-amz-function-error"),
            log_result=(base64.b64decode(log_result).decode("utf-8", errors="replace")
                        if log_result else None),
            executed_version=response.headers.get("x-amz-executed-version"),
        )

    def read_logs(self, name: str, offset: int = 0) -> tuple[str, int]:
        """Kiln's log route: the text stored from byte ``offset`` on, and the offset after it."""
        path = f"/kiln/v1/functions/{urllib.parse.quote(name, safe='')}/logs?offset={offset}"
        body = self._request("GET", path).json()
        return str(body.get("text", "")), int(body.get("nextOffset", offset))

    # -- HTTP -----------------------------------------------------------------------------------

    def _json(self, method: str, path: str, body: dict[str, Any]) -> _Response:
        return self._request(method, path, json.dumps(body).encode(),
                             {"Content-Type": "application/json"})

    def _request(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None, timeout: float = API_TIMEOUT) -> _Response:
        request = urllib.request.Request(self.endpoint + path, data=body, method=method,
                                         headers=headers or {})
        try:
            with self._opener.open(request, timeout=timeout) as answer:
                return _Response(answer.status, _lower(answer.headers.items()), answer.read())
        except urllib.error.HTTPError as exc:
            try:
                error_body = exc.read()
            finally:
                exc.close()
            raise _api_error(exc.code, _lower(exc.headers.items()), error_body) from None
        except TimeoutError:
            raise ConnectionFailed(f"Kiln at {self.endpoint} did not answer within "
                                   f"{timeout:.0f} s") from None
        except (urllib.error.URLError, OSError) as exc:
            reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc
            raise ConnectionFailed(f"cannot reach Kiln at {self.endpoint}: {reason}") from None


def _lower(items: Any) -> dict[str, str]:
    return {str(key).lower(): str(value) for key, value in items}


def _api_error(status: int, headers: dict[str, str], body: bytes) -> ApiError:
    """The error as botocore would read it: code from x-amzn-ErrorType, else from the body."""
    try:
        parsed = json.loads(body) if body.strip() else {}
    except ValueError:
        parsed = {}
    if not isinstance(parsed, dict):
        parsed = {}
    code = headers.get("x-amzn-errortype", "").split(":")[0]
    code = code or str(parsed.get("code") or parsed.get("Code") or parsed.get("__type") or "")
    code = code.split("#")[-1] or f"HTTP{status}"
    message = parsed.get("message") or parsed.get("Message")
    if not message:
        message = body.decode("utf-8", errors="replace").strip() or f"HTTP status {status}"
    return ApiError(code, str(message), status)


def zip_directory(root: Path) -> bytes:
    """Zip ``root``'s contents (paths relative to it), keeping each file's permission bits.

    Executable bits matter: a ``provided`` runtime's ``bootstrap`` must stay executable.
    Entries are sorted and dated 1980-01-01, so the same tree gives the same CodeSha256.
    """
    if not root.is_dir():
        raise NotADirectoryError(f"not a directory: {root}")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for directory, subdirs, files in os.walk(root):
            subdirs.sort()
            base = Path(directory)
            relative_dir = base.relative_to(root).as_posix()
            if relative_dir != ".":
                info = zipfile.ZipInfo(relative_dir + "/", date_time=_ZIP_DATE)
                mode = stat.S_IMODE(base.stat().st_mode)
                info.external_attr = ((stat.S_IFDIR | mode) << 16) | 0x10
                archive.writestr(info, b"")
            for name in sorted(files):
                path = base / name
                if not path.is_file():  # sockets, fifos, dangling links
                    continue
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), date_time=_ZIP_DATE)
                info.external_attr = (stat.S_IFREG | stat.S_IMODE(path.stat().st_mode)) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                archive.writestr(info, path.read_bytes())
    return buffer.getvalue()
