"""Kiln's Python runtime: runs ``_HANDLER`` against the Lambda Runtime API (2018-06-01).

Started as ``python -s -u python_bootstrap.py`` inside an execution environment.  Standard
library only, and only cheap imports, because its start-up is part of every cold start.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback

_API = os.environ["AWS_LAMBDA_RUNTIME_API"]
_PREFIX = "/2018-06-01/runtime"
_request_id = ""
_NEXT_REQUEST = (f"GET {_PREFIX}/invocation/next HTTP/1.1\r\nHost: {_API}\r\n"
                 "Content-Length: 0\r\n\r\n").encode("latin-1")
# `typing` and `logging` cost milliseconds of every cold start: typing is only for the checker,
# and the logging handler is installed once the function's code has imported logging itself.
TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging
    from typing import Any, NoReturn


class _Connection:
    """A keep-alive HTTP/1.1 client for the Runtime API (our server always sends Content-Length)."""

    def __init__(self, address: str) -> None:
        host, _, port = address.rpartition(":")
        self._address = (host, int(port))
        self._sock: socket.socket | None = None
        self._buffer = b""

    def request(self, method: str, path: str, body: bytes = b"",
                headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (0, 1):
            try:
                return self._request(method, path, body, headers or {})
            except (ConnectionError, OSError):
                self._close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def respond_and_next(self, path: str, body: bytes,
                         headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """POST the result and ask for the next event in one write (HTTP pipelining): one
        round trip per invoke instead of two.  Returns the /next answer."""
        if self._sock is None:
            self.request("POST", path, body, headers)
            return self.request("GET", f"{_PREFIX}/invocation/next")
        head = [f"POST {path} HTTP/1.1", f"Host: {_API}", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
                           + _NEXT_REQUEST)
        self._read_response()
        return self._read_response()

    def _close(self) -> None:
        if self._sock is not None:
            self._sock.close()
        self._sock = None
        self._buffer = b""

    def _request(self, method: str, path: str, body: bytes,
                 headers: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self._sock is None:
            self._sock = socket.create_connection(self._address)
            self._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        head = [f"{method} {path} HTTP/1.1", f"Host: {_API}", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in headers.items())
        self._sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        return self._read_response()

    def _read_response(self) -> tuple[int, dict[str, str], bytes]:
        while b"\r\n\r\n" not in self._buffer:
            self._recv()
        raw_head, _, self._buffer = self._buffer.partition(b"\r\n\r\n")
        status_line, *lines = raw_head.decode("latin-1").split("\r\n")
        status = int(status_line.split(" ", 2)[1])
        response_headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            response_headers[name.lower()] = value.strip()
        length = int(response_headers.get("content-length", "0"))
        while len(self._buffer) < length:
            self._recv()
        payload, self._buffer = self._buffer[:length], self._buffer[length:]
        if response_headers.get("connection", "").lower() == "close":
            self._close()
        return status, response_headers, payload

    def _recv(self) -> None:
        assert self._sock is not None
        chunk = self._sock.recv(65536)
        if not chunk:
            raise ConnectionError("runtime API closed the connection")
        self._buffer += chunk


class _CognitoIdentity:
    __slots__ = ("cognito_identity_id", "cognito_identity_pool_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.cognito_identity_id = data.get("cognitoIdentityId")
        self.cognito_identity_pool_id = data.get("cognitoIdentityPoolId")


class _Client:
    __slots__ = ("app_package_name", "app_title", "app_version_code", "app_version_name",
                 "installation_id")

    def __init__(self, data: dict[str, Any]) -> None:
        self.installation_id = data.get("installation_id")
        self.app_title = data.get("app_title")
        self.app_version_name = data.get("app_version_name")
        self.app_version_code = data.get("app_version_code")
        self.app_package_name = data.get("app_package_name")


class _ClientContext:
    __slots__ = ("client", "custom", "env")

    def __init__(self, data: dict[str, Any]) -> None:
        client = data.get("client")
        self.client = _Client(client) if isinstance(client, dict) else None
        self.custom = data.get("custom")
        self.env = data.get("env")


class LambdaContext:
    """The ``context`` argument, as documented for the Python runtime."""

    def __init__(self, request_id: str, deadline_ms: int, invoked_function_arn: str | None,
                 client_context: dict[str, Any] | None, identity: dict[str, Any] | None) -> None:
        self.aws_request_id = request_id
        self.invoked_function_arn = invoked_function_arn
        (self.function_name, self.function_version, self.memory_limit_in_mb,
         self.log_group_name, self.log_stream_name) = _environment_fields()
        self.client_context = _ClientContext(client_context) if client_context else None
        self.identity = _CognitoIdentity(identity or {})
        self.tenant_id = None
        self._deadline_ms = deadline_ms

    def get_remaining_time_in_millis(self) -> int:
        return max(0, self._deadline_ms - int(time.time() * 1000))

    def log(self, message: object) -> None:
        sys.stdout.write(str(message))
        sys.stdout.flush()

    def __repr__(self) -> str:
        return (f"LambdaContext([aws_request_id={self.aws_request_id},"
                f"function_name={self.function_name},"
                f"function_version={self.function_version},"
                f"invoked_function_arn={self.invoked_function_arn}])")


def _environment_fields() -> tuple[str | None, ...]:
    """The context's fields that come from the environment: fixed for the environment's life,
    so read once (os.environ lookups are a measurable part of a warm invoke)."""
    global _ENV_FIELDS
    if _ENV_FIELDS is None:
        _ENV_FIELDS = tuple(os.environ.get(f"AWS_LAMBDA_{name}") for name in (
            "FUNCTION_NAME", "FUNCTION_VERSION", "FUNCTION_MEMORY_SIZE", "LOG_GROUP_NAME",
            "LOG_STREAM_NAME"))
    return _ENV_FIELDS


_ENV_FIELDS: tuple[str | None, ...] | None = None


def _install_log_handler() -> bool:
    """Give the root logger Lambda's ``[LEVEL]\\t<time>\\t<request id>\\t<message>`` handler
    once the function has imported logging; True when installed."""
    if "logging" not in sys.modules:
        return False
    import logging

    class LambdaLogHandler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
                ts += f".{int(record.msecs):03d}Z"
                message = self.format(record).replace("\n", "\r")
                sys.stdout.write(f"[{record.levelname}]\t{ts}\t{_request_id}\t{message}\n")
                sys.stdout.flush()
            except Exception:  # noqa: BLE001 - a logging failure must never fail the invoke
                self.handleError(record)

    root = logging.getLogger()
    root.addHandler(LambdaLogHandler())
    root.setLevel(logging.WARNING)
    return True


def _error_body(exc: BaseException, request_id: str) -> dict[str, Any]:
    tb = traceback.extract_tb(exc.__traceback__)
    frames = [frame for frame in tb if not frame.filename.endswith("python_bootstrap.py")]
    return {
        "errorMessage": str(exc),
        "errorType": type(exc).__name__,
        "requestId": request_id,
        "stackTrace": traceback.format_list(frames),
    }


def _log_error(body: dict[str, Any]) -> None:
    lines = [f"[ERROR] {body['errorType']}: {body['errorMessage']}",
             "Traceback (most recent call last):"]
    lines.extend(line.rstrip("\n") for line in body["stackTrace"])
    sys.stdout.write("\r".join(lines) + "\n")
    sys.stdout.flush()


def _init_error(conn: _Connection, error_type: str, message: str,
                stack: list[str] | None = None) -> NoReturn:
    body = {"errorMessage": message, "errorType": error_type, "requestId": "",
            "stackTrace": stack or []}
    _log_error(body)
    conn.request("POST", f"{_PREFIX}/init/error", json.dumps(body).encode(),
                 {"Lambda-Runtime-Function-Error-Type": error_type,
                  "Content-Type": "application/json"})
    sys.exit(1)


def _load_handler(conn: _Connection, handler: str) -> Any:
    try:
        module_path, function_name = handler.rsplit(".", 1)
    except ValueError as exc:
        _init_error(conn, "Runtime.MalformedHandlerName", f"Bad handler '{handler}': {exc}")
    module_name = module_path.replace("/", ".")
    if module_name in sys.builtin_module_names:
        _init_error(conn, "Runtime.BuiltInModuleConflict",
                    f"Cannot use built-in module {module_name} as a handler module")
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        _init_error(conn, "Runtime.ImportModuleError",
                    f"Unable to import module '{module_name}': {exc}")
    except SyntaxError as exc:
        _init_error(conn, "Runtime.UserCodeSyntaxError",
                    f"Syntax error in module '{module_name}': {exc}",
                    [f'  File "{exc.filename}" Line {exc.lineno}\n', f"    {exc.text or ''}\n"])
    except Exception as exc:  # noqa: BLE001 - any error at import time is an init error
        body = _error_body(exc, "")
        # Like AWS: the body names the exception; the header type is normalised to
        # Runtime.Unknown by the Runtime API.
        _init_error(conn, type(exc).__name__, str(exc), body["stackTrace"])
    function = getattr(module, function_name, None)
    if function is None or not callable(function):
        _init_error(conn, "Runtime.HandlerNotFound",
                    f"Handler '{function_name}' missing on module '{module_name}'")
    return function


def main() -> None:
    task_root = os.environ.get("LAMBDA_TASK_ROOT", os.getcwd())
    sys.path[0:0] = [task_root, *[p for p in os.environ.get("KILN_EXTRA_PYTHONPATH", "")
                                  .split(os.pathsep) if p]]
    conn = _Connection(_API)
    handler = _load_handler(conn, os.environ.get("_HANDLER", ""))
    logging_ready = _install_log_handler()
    status, headers, payload = conn.request("GET", f"{_PREFIX}/invocation/next")
    while True:
        if status != 200:
            sys.exit(1)
        if not logging_ready:
            logging_ready = _install_log_handler()
        path, body, reply_headers = _handle(handler, headers, payload)
        sys.stdout.flush()
        try:
            status, headers, payload = conn.respond_and_next(path, body, reply_headers)
        except OSError:
            # The pipelined pair failed mid-way: fall back to one request at a time.
            conn.request("POST", path, body, reply_headers)
            status, headers, payload = conn.request("GET", f"{_PREFIX}/invocation/next")


def _handle(handler: Any, headers: dict[str, str],
            payload: bytes) -> tuple[str, bytes, dict[str, str]]:
    """Run one invocation: the (path, body, headers) of the reply to post."""
    global _request_id
    _request_id = request_id = headers["lambda-runtime-aws-request-id"]
    os.environ["_X_AMZN_TRACE_ID"] = headers.get("lambda-runtime-trace-id", "")
    client_context = headers.get("lambda-runtime-client-context")
    identity = headers.get("lambda-runtime-cognito-identity")
    context = LambdaContext(
        request_id,
        int(headers.get("lambda-runtime-deadline-ms", "0")),
        headers.get("lambda-runtime-invoked-function-arn"),
        json.loads(client_context) if client_context else None,
        json.loads(identity) if identity else None,
    )
    error_path = f"{_PREFIX}/invocation/{request_id}/error"
    try:
        event = json.loads(payload) if payload else {}
        result = handler(event, context)
    except Exception as exc:  # noqa: BLE001 - the function's errors go to the caller
        error = _error_body(exc, request_id)
        _log_error(error)
        return error_path, json.dumps(error).encode(), {"Content-Type": "application/json"}
    try:
        body = json.dumps(result).encode()
    except (TypeError, ValueError) as exc:
        error = {"errorMessage": f"Unable to marshal response: {exc}",
                 "errorType": "Runtime.MarshalError", "requestId": request_id,
                 "stackTrace": []}
        _log_error(error)
        return error_path, json.dumps(error).encode(), {
            "Content-Type": "application/json",
            "Lambda-Runtime-Function-Error-Type": "Runtime.MarshalError"}
    return (f"{_PREFIX}/invocation/{request_id}/response", body,
            {"Content-Type": "application/json"})

if __name__ == "__main__":
    main()
