"""Shared fixtures: a real ``kiln serve`` on a free loopback port, and boto3 clients for it."""

from __future__ import annotations

import io
import os
import signal
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

REPO = Path(__file__).resolve().parent.parent
ROLE = "arn:aws:iam::000000000000:role/kiln-test"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class KilnServer:
    """A started ``kiln serve`` process."""

    port: int
    data_dir: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def client(self, service: str = "lambda", path: str = "", **config: Any) -> Any:
        """A boto3 client for ``service`` at this server (``path``: under an endpoint prefix,
        e.g. ``/_aws/execute-api/{api}/{stage}`` for apigatewaymanagementapi)."""
        options = {"retries": {"max_attempts": 0}, "read_timeout": 120, **config}
        return boto3.client(
            service, endpoint_url=self.url + path, region_name="us-east-1",
            aws_access_key_id="kiln", aws_secret_access_key="kiln",
            config=Config(**options))

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return int(self.process.returncode)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_server(data_dir: Path, port: int | None = None, **env: str) -> KilnServer:
    port = port or free_port()
    log_path = data_dir.parent / f"kiln-{port}.log"
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "kiln.cli", "serve", "--port", str(port),
             "--data-dir", str(data_dir)],
            stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
            env={**os.environ, "KILN_KEEP_ALIVE_SECONDS": "60", **env})
    server = KilnServer(port, data_dir, process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"kiln serve exited: {server.output()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return server
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"kiln serve did not start: {server.output()}")


def make_shared(path: Path) -> Path:
    """Create ``path`` writable by the sandbox's unprivileged user (a shared directory)."""
    path.mkdir(parents=True, exist_ok=True)
    path.chmod(0o777)
    return path


@pytest.fixture(scope="session")
def shared_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The directory the session's server shares read-write with every environment
    (``KILN_SANDBOX_SHARED_DIRS``): functions and tests exchange files only under it."""
    return make_shared(tmp_path_factory.mktemp("shared"))


@pytest.fixture
def shared_dir(shared_root: Path, request: pytest.FixtureRequest) -> Path:
    """A fresh directory under ``shared_root`` for one test."""
    return make_shared(shared_root / f"{request.node.name[:60]}-{os.urandom(3).hex()}")


@pytest.fixture(scope="session")
def kiln_server(tmp_path_factory: pytest.TempPathFactory,
                shared_root: Path) -> Iterator[KilnServer]:
    server = start_server(tmp_path_factory.mktemp("kiln") / "data",
                          KILN_SANDBOX_SHARED_DIRS=str(shared_root))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def lambda_client(kiln_server: KilnServer) -> Any:
    return kiln_server.client()


def make_zip(files: dict[str, str | bytes], executable: tuple[str, ...] = ()) -> bytes:
    """A zip holding ``files``; names in ``executable`` get mode 0755."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            info = zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0))
            info.external_attr = (0o100755 if name in executable else 0o100644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, content)
    return buffer.getvalue()


def unique_name(prefix: str = "fn") -> str:
    return f"{prefix}-{os.urandom(4).hex()}"


def create_python_function(client: Any, source: str, name: str | None = None,
                           handler: str = "app.handler", **kwargs: Any) -> str:
    """Create a python3.11 function from one module's ``source``; returns its name."""
    name = name or unique_name()
    client.create_function(
        FunctionName=name, Runtime=kwargs.pop("Runtime", "python3.11"), Role=ROLE,
        Handler=handler, Code={"ZipFile": make_zip({"app.py": source})}, **kwargs)
    return name


def process_gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except (FileNotFoundError, ProcessLookupError):  # reaped, even between open and read
        return True


def environment_pids(log_stream: str) -> list[int]:
    """Host pids of the live processes of the execution environment whose log stream is
    ``log_stream`` (a function returns ``context.log_stream_name``): the runtime and every
    process it started carry ``AWS_LAMBDA_LOG_STREAM_NAME`` in their environment.  Works
    whatever namespaces the environment has (pids inside it mean nothing here)."""
    marker = f"\0AWS_LAMBDA_LOG_STREAM_NAME={log_stream}\0".encode()
    pids = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/environ", "rb") as environ:
                if marker in b"\0" + environ.read() + b"\0":
                    pids.append(int(entry.name))
        except OSError:  # gone meanwhile, or a kernel thread
            continue
    return [pid for pid in pids if not process_gone(pid)]


def environment_gone(log_stream: str) -> bool:
    """True once no process of that execution environment is left on the host."""
    return not environment_pids(log_stream)


def wait_for(predicate: Any, timeout: float = 20.0) -> bool:
    """Poll ``predicate`` until it holds (True) or ``timeout`` passes (its last value)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return bool(predicate())


def expect_error(client: Any, code: str, status: int, call: Callable[..., Any],
                 **kwargs: Any) -> ClientError:
    """Run ``call``; it must raise exactly the modeled class for ``code`` (or a plain
    ClientError for codes botocore does not model) with ``status`` and a message."""
    with pytest.raises(ClientError) as caught:
        call(**kwargs)
    error = caught.value
    expected_class = client.exceptions.from_code(code)
    assert type(error) is expected_class, (type(error), error)
    assert error.response["Error"]["Code"] == code, error.response
    assert error.response["ResponseMetadata"]["HTTPStatusCode"] == status
    assert error.response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-errortype"] == code
    assert error.response["Error"]["Message"], error.response
    return error
