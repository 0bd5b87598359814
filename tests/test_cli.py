"""The human CLI (`kiln create/update/invoke/list/logs/delete`), run as a subprocess against the
session's real `kiln serve`."""

from __future__ import annotations

import io
import json
import os
import queue
import stat
import subprocess
import sys
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.client import zip_directory
from tests.conftest import REPO, ROLE, KilnServer, make_zip, unique_name

HANDLER = '''
import os

def handler(event, context):
    print("got", event)
    if event.get("fail"):
        raise ValueError("asked to fail")
    tool = os.path.join(os.environ["LAMBDA_TASK_ROOT"], "bin", "tool.sh")
    return {"echo": event, "greeting": os.environ.get("GREETING"),
            "tool_executable": os.access(tool, os.X_OK), "version": 1}
'''

Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture(scope="module")
def cli(kiln_server: KilnServer) -> Cli:
    def run(*args: str, stdin: str | None = None, endpoint: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KILN_ENDPOINT": endpoint or kiln_server.url}
        return subprocess.run([sys.executable, "-m", "kiln.cli", *args], input=stdin or "",
                              capture_output=True, text=True, cwd=REPO, env=env, timeout=120)
    return run


def write_function(root: Path, source: str = HANDLER) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.py").write_text(source)
    (root / "bin").mkdir(exist_ok=True)
    tool = root / "bin" / "tool.sh"
    tool.write_text("#!/bin/sh\necho tool\n")
    tool.chmod(0o755)
    return root


@pytest.fixture(scope="module")
def function(cli: Cli, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A python3.11 function created by `kiln create --dir`."""
    name = unique_name("cli")
    source = write_function(tmp_path_factory.mktemp("fn") / "src")
    done = cli("create", name, "--runtime", "python3.11", "--handler", "app.handler",
               "--dir", str(source), "--timeout", "5", "--memory", "256",
               "--env", "GREETING=hello", "--env", "EMPTY=")
    assert done.returncode == 0, done.stderr
    assert f"created {name}" in done.stdout
    return name


def invoke_json(done: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(done.stdout)


def test_create_from_dir_stores_configuration(function: str, lambda_client: Any) -> None:
    config = lambda_client.get_function_configuration(FunctionName=function)
    assert config["Runtime"] == "python3.11"
    assert config["Handler"] == "app.handler"
    assert config["Timeout"] == 5
    assert config["MemorySize"] == 256
    assert config["Role"] == "arn:aws:iam::000000000000:role/kiln"
    assert config["Environment"]["Variables"] == {"GREETING": "hello", "EMPTY": ""}


def test_zip_directory_keeps_modes(tmp_path: Path) -> None:
    source = write_function(tmp_path / "src")
    (source / "data.txt").write_text("x")
    (source / "data.txt").chmod(0o600)
    with zipfile.ZipFile(io.BytesIO(zip_directory(source))) as archive:
        modes = {info.filename: info.external_attr >> 16 for info in archive.infolist()}
    assert stat.S_IMODE(modes["bin/tool.sh"]) == 0o755
    assert stat.S_IMODE(modes["data.txt"]) == 0o600
    assert stat.S_ISREG(modes["app.py"]) and stat.S_ISDIR(modes["bin/"])
    # The same tree zips to the same bytes (stable CodeSha256).
    assert zip_directory(source) == zip_directory(source)


def test_invoke_string_payload_prints_result_then_report(cli: Cli, function: str) -> None:
    done = cli("invoke", function, "--payload", '{"source": "string"}')
    assert done.returncode == 0, done.stderr
    result = invoke_json(done)
    assert result["echo"] == {"source": "string"}
    assert result["greeting"] == "hello"
    assert result["tool_executable"] is True  # the executable bit survived --dir
    lines = done.stderr.splitlines()
    assert "got {'source': 'string'}" in lines
    assert lines[-1].startswith("REPORT RequestId: ")
    assert "\tDuration: " in lines[-1] and "\tMemory Size: 256 MB" in lines[-1]
    assert lines.index("got {'source': 'string'}") < len(lines) - 1


def test_invoke_payload_file(cli: Cli, function: str, tmp_path: Path) -> None:
    event = tmp_path / "event.json"
    event.write_text('{"source": "file"}')
    done = cli("invoke", function, "--payload-file", str(event))
    assert done.returncode == 0, done.stderr
    assert invoke_json(done)["echo"] == {"source": "file"}


@pytest.mark.parametrize("args", [["-"], ["--payload", "-"], ["--payload-file", "-"]])
def test_invoke_payload_from_stdin(cli: Cli, function: str, args: list[str]) -> None:
    done = cli("invoke", function, *args, stdin='{"source": "stdin"}')
    assert done.returncode == 0, done.stderr
    assert invoke_json(done)["echo"] == {"source": "stdin"}


def test_invoke_quiet_prints_only_the_result(cli: Cli, function: str) -> None:
    done = cli("invoke", function, "-q")
    assert done.returncode == 0, done.stderr
    assert invoke_json(done)["echo"] == {}
    assert "REPORT" not in done.stderr


def test_invoke_function_error_exits_1(cli: Cli, function: str) -> None:
    done = cli("invoke", function, "--payload", '{"fail": true}')
    assert done.returncode == 1
    error = invoke_json(done)
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "asked to fail"
    assert "function error (Unhandled): ValueError: asked to fail" in done.stderr
    assert "REPORT RequestId: " in done.stderr


def test_invoke_missing_function_exits_3(cli: Cli) -> None:
    done = cli("invoke", "no-such-function-here")
    assert done.returncode == 3
    assert done.stdout == ""
    assert "ResourceNotFoundException: Function not found: " in done.stderr
    assert "no-such-function-here" in done.stderr


def test_invoke_event_is_queued(cli: Cli, function: str) -> None:
    done = cli("invoke", function, "--event", "--payload", '{"source": "event"}')
    assert done.returncode == 0, done.stderr
    assert "queued (HTTP 202)" in done.stderr
    assert done.stdout == ""


@pytest.mark.parametrize("args", [
    ["invoke", "fn", "--payload", "{not json"],
    ["invoke", "fn", "--payload", "{}", "-"],
    ["invoke", "fn", "--payload-file", "/nonexistent/event.json"],
    ["invoke", "fn", "extra"],
    ["create", "fn", "--runtime", "python3.11", "--handler", "app.handler"],
    ["create", "fn", "--runtime", "python3.11", "--handler", "app.handler",
     "--dir", "/nonexistent/dir"],
    ["update", "fn"],
    ["update", "fn", "--env", "NOVALUE"],
    ["logs"],
])
def test_usage_errors_exit_2(cli: Cli, args: list[str]) -> None:
    done = cli(*args)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert "error" in done.stderr


def test_api_error_is_readable_and_exits_3(cli: Cli, tmp_path: Path) -> None:
    source = write_function(tmp_path / "src")
    done = cli("create", unique_name("bad"), "--runtime", "python3.11", "--handler",
               "app.handler", "--dir", str(source), "--memory", "5")
    assert done.returncode == 3
    assert "InvalidParameterValueException: " in done.stderr
    assert "memorySize" in done.stderr


def test_unreachable_endpoint_exits_3(cli: Cli) -> None:
    done = cli("list", endpoint="http://127.0.0.1:9")
    assert done.returncode == 3
    assert "cannot reach Kiln at http://127.0.0.1:9" in done.stderr


def test_endpoint_flag_overrides_environment(cli: Cli, kiln_server: KilnServer,
                                             function: str) -> None:
    done = cli("--endpoint", kiln_server.url, "list", endpoint="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    done = cli("list", "--endpoint", kiln_server.url, endpoint="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert function in done.stdout


def test_list_shows_every_page(cli: Cli, function: str, lambda_client: Any) -> None:
    # More than one ListFunctions page (50 per page), whatever other tests created.
    names = [unique_name("page") for _ in range(51)]
    code = make_zip({"app.py": "def handler(event, context):\n    return 1\n"})
    for name in names:
        lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                      Handler="app.handler", Code={"ZipFile": code})
    try:
        done = cli("list")
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        assert lines[0].split() == ["NAME", "RUNTIME", "MEMORY", "TIMEOUT", "LAST", "MODIFIED"]
        rows = {line.split()[0]: line.split() for line in lines[1:]}
        assert set(names) <= set(rows)
        assert rows[function][1:5] == ["python3.11", "256", "MB", "5"]
    finally:
        for name in names:
            lambda_client.delete_function(FunctionName=name)


def test_logs_prints_invocations(cli: Cli, function: str, lambda_client: Any) -> None:
    response = lambda_client.invoke(FunctionName=function, Payload=b'{"marker": "logs-1"}')
    request_id = response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"]
    done = cli("logs", function)
    assert done.returncode == 0, done.stderr
    assert f"START RequestId: {request_id} Version: $LATEST" in done.stdout
    assert "got {'marker': 'logs-1'}" in done.stdout
    assert f"END RequestId: {request_id}" in done.stdout
    assert f"REPORT RequestId: {request_id}\tDuration: " in done.stdout


def test_logs_of_a_missing_function_exits_3(cli: Cli) -> None:
    done = cli("logs", "no-such-function-logs")
    assert done.returncode == 3
    assert "ResourceNotFoundException" in done.stderr


def test_logs_route(kiln_server: KilnServer, function: str, lambda_client: Any) -> None:
    lambda_client.invoke(FunctionName=function, Payload=b'{"marker": "route"}')
    url = f"{kiln_server.url}/kiln/v1/functions/{function}/logs"
    whole = httpx.get(url).json()
    assert "route" in whole["text"]
    assert whole["nextOffset"] == len(whole["text"].encode())
    rest = httpx.get(url, params={"offset": whole["nextOffset"]}).json()
    assert rest == {"text": "", "nextOffset": whole["nextOffset"]}
    part = httpx.get(url, params={"offset": 5}).json()
    assert part["text"] == whole["text"].encode()[5:].decode()
    bad = httpx.get(url, params={"offset": "-1"})
    assert bad.status_code == 400
    assert bad.headers["x-amzn-errortype"] == "InvalidParameterValueException"
    missing = httpx.get(f"{kiln_server.url}/kiln/v1/functions/no-such-fn-route/logs")
    assert missing.status_code == 404
    assert missing.headers["x-amzn-errortype"] == "ResourceNotFoundException"


def test_logs_follow_prints_new_invocations(kiln_server: KilnServer, function: str,
                                            lambda_client: Any) -> None:
    env = {**os.environ, "KILN_ENDPOINT": kiln_server.url}
    follower = subprocess.Popen([sys.executable, "-m", "kiln.cli", "logs", function, "--follow"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                cwd=REPO, env=env)
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert follower.stdout is not None
        for line in follower.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        marker = unique_name("follow")
        lambda_client.invoke(FunctionName=function, Payload=json.dumps({"marker": marker}))
        seen: list[str] = []
        while not any(marker in line for line in seen):
            try:
                seen.append(lines.get(timeout=30))
            except queue.Empty:
                pytest.fail(f"`kiln logs --follow` never printed the invocation: {seen[-5:]}")
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()
        follower.wait(timeout=10)


def test_update_code_and_configuration(cli: Cli, lambda_client: Any, tmp_path: Path) -> None:
    name = unique_name("upd")
    source = write_function(tmp_path / "v1")
    assert cli("create", name, "--runtime", "python3.11", "--handler", "app.handler",
               "--dir", str(source)).returncode == 0
    try:
        new = write_function(tmp_path / "v2", HANDLER.replace('"version": 1', '"version": 2'))
        done = cli("update", name, "--dir", str(new), "--timeout", "7",
                   "--env", "GREETING=updated")
        assert done.returncode == 0, done.stderr
        assert f"updated {name}" in done.stdout
        config = lambda_client.get_function_configuration(FunctionName=name)
        assert config["Timeout"] == 7
        assert config["Environment"]["Variables"] == {"GREETING": "updated"}
        result = invoke_json(cli("invoke", name, "-q"))
        assert result["version"] == 2
        assert result["greeting"] == "updated"

        # Configuration only; the code stays.
        done = cli("update", name, "--memory", "512")
        assert done.returncode == 0, done.stderr
        config = lambda_client.get_function_configuration(FunctionName=name)
        assert (config["MemorySize"], config["Timeout"]) == (512, 7)
        assert invoke_json(cli("invoke", name, "-q"))["version"] == 2

        # Code only, from a zip file.
        archive = tmp_path / "v3.zip"
        archive.write_bytes(make_zip({"app.py": "def handler(e, c):\n    return 'v3'\n"}))
        done = cli("update", name, "--zip", str(archive))
        assert done.returncode == 0, done.stderr
        assert invoke_json(cli("invoke", name, "-q")) == "v3"
        assert lambda_client.get_function_configuration(FunctionName=name)["MemorySize"] == 512
    finally:
        cli("delete", name)


def test_update_missing_function_exits_3(cli: Cli) -> None:
    done = cli("update", "no-such-function-upd", "--timeout", "5")
    assert done.returncode == 3
    assert "ResourceNotFoundException" in done.stderr


def test_create_from_zip_and_delete(cli: Cli, lambda_client: Any, tmp_path: Path) -> None:
    name = unique_name("del")
    archive = tmp_path / "code.zip"
    archive.write_bytes(make_zip({"app.py": "def handler(e, c):\n    return 'zipped'\n"}))
    done = cli("create", name, "--runtime", "python3.11", "--handler", "app.handler",
               "--zip", str(archive), "--role", "arn:aws:iam::000000000000:role/custom")
    assert done.returncode == 0, done.stderr
    assert lambda_client.get_function(FunctionName=name)["Configuration"]["Role"].endswith(
        "role/custom")
    assert invoke_json(cli("invoke", name, "-q")) == "zipped"
    done = cli("delete", name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"deleted {name}"
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.get_function(FunctionName=name)
    again = cli("delete", name)
    assert again.returncode == 3
    assert "ResourceNotFoundException" in again.stderr


def test_help_explains_each_command(cli: Cli) -> None:
    top = cli("--help")
    assert top.returncode == 0
    for command in ("serve", "settings", "create", "update", "invoke", "list", "logs", "delete"):
        assert command in top.stdout
    for command, phrase in (("create", "--dir"), ("update", "--env"), ("invoke", "stdin"),
                            ("list", "table"), ("logs", "--follow"), ("delete", "Delete")):
        done = cli(command, "--help")
        assert done.returncode == 0
        assert phrase in done.stdout, command


def test_code_location_zip_keeps_executable_bit(cli: Cli, function: str,
                                                lambda_client: Any) -> None:
    location = lambda_client.get_function(FunctionName=function)["Code"]["Location"]
    data = httpx.get(location).content
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        mode = archive.getinfo("bin/tool.sh").external_attr >> 16
    assert mode & 0o111
