"""The AWS CLI (awscli from PyPI, ``aws --endpoint-url ...``) drives Kiln unchanged."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROLE, KilnServer, make_zip, unique_name

AWS = str(Path(sys.executable).parent / "aws")
SOURCE = ("import os\n\ndef handler(event, context):\n"
          "    print('hello from the cli test')\n"
          "    return {'event': event, 'color': os.environ.get('COLOR'), 'tag': 'TAG'}\n")

# awscli v1 exits 255 on a service error (v2: 254).
SERVICE_ERROR_EXIT = (254, 255)
Aws = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture(scope="module")
def aws(kiln_server: KilnServer, tmp_path_factory: pytest.TempPathFactory) -> Aws:
    """Run ``aws --endpoint-url <kiln> lambda ...`` with fake credentials and no user config."""
    home = tmp_path_factory.mktemp("aws-home")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "AWS_ACCESS_KEY_ID": "kiln", "AWS_SECRET_ACCESS_KEY": "kiln",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_MAX_ATTEMPTS": "1", "AWS_RETRY_MODE": "standard", "AWS_PAGER": "",
    }

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [AWS, "--endpoint-url", kiln_server.url, "--output", "json", "lambda", *args],
            env=env, capture_output=True, text=True, timeout=120, cwd=home)
        if check:
            assert result.returncode == 0, result.stderr
        return result

    return run


def output(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(result.stdout)


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_function_lifecycle_with_the_aws_cli(aws: Aws, tmp_path: Path) -> None:
    name = unique_name("cli")
    first = make_zip({"app.py": SOURCE.replace("TAG", "v1")})
    (tmp_path / "v1.zip").write_bytes(first)
    created = output(aws(
        "create-function", "--function-name", name, "--runtime", "python3.11",
        "--role", ROLE, "--handler", "app.handler", "--zip-file", f"fileb://{tmp_path}/v1.zip",
        "--timeout", "10", "--memory-size", "256", "--description", "made by the cli",
        "--environment", '{"Variables": {"COLOR": "green", "EMPTY": ""}}',
        "--architectures", "arm64",
        "--ephemeral-storage", "Size=1024", "--package-type", "Zip"))
    assert created["FunctionName"] == name
    assert created["CodeSha256"] == sha256_b64(first)
    assert created["CodeSize"] == len(first)
    assert (created["Timeout"], created["MemorySize"], created["Description"]) == (
        10, 256, "made by the cli")
    assert created["Environment"] == {"Variables": {"COLOR": "green", "EMPTY": ""}}
    assert created["Architectures"] == ["arm64"]
    assert created["EphemeralStorage"] == {"Size": 1024}
    assert created["State"] == "Active"
    aws("wait", "function-active-v2", "--function-name", name)

    function = output(aws("get-function", "--function-name", name))
    assert function["Configuration"]["RevisionId"] == created["RevisionId"]
    with urllib.request.urlopen(function["Code"]["Location"], timeout=30) as response:
        assert response.read() == first
    by_arn = output(aws("get-function-configuration", "--function-name",
                        created["FunctionArn"]))
    assert by_arn == created
    partial = output(aws("get-function-configuration", "--function-name",
                         f"000000000000:function:{name}"))
    assert partial["FunctionArn"] == created["FunctionArn"]

    # invoke: result to a file, Tail log in the output.
    out_file = tmp_path / "out.json"
    invoked = output(aws("invoke", "--function-name", name, "--payload", '{"a": 1}',
                         "--log-type", "Tail",
                         str(out_file)))
    assert invoked["StatusCode"] == 200
    assert invoked["ExecutedVersion"] == "$LATEST"
    assert "FunctionError" not in invoked
    assert json.loads(out_file.read_text()) == {"event": {"a": 1}, "color": "green",
                                                "tag": "v1"}
    log = base64.b64decode(invoked["LogResult"]).decode()
    assert "hello from the cli test" in log
    assert "START RequestId:" in log and "REPORT RequestId:" in log

    # Optimistic locking through the CLI.
    stale = aws("update-function-configuration", "--function-name", name, "--timeout", "20",
                "--revision-id", "00000000-0000-0000-0000-000000000000", check=False)
    assert stale.returncode in SERVICE_ERROR_EXIT
    assert "(PreconditionFailedException)" in stale.stderr
    updated = output(aws("update-function-configuration", "--function-name", name,
                         "--timeout", "20", "--environment", "Variables={COLOR=blue}",
                         "--revision-id", created["RevisionId"]))
    assert updated["Timeout"] == 20
    aws("wait", "function-updated-v2", "--function-name", name)

    second = make_zip({"app.py": SOURCE.replace("TAG", "v2")})
    (tmp_path / "v2.zip").write_bytes(second)
    code = output(aws("update-function-code", "--function-name", name,
                      "--zip-file", f"fileb://{tmp_path}/v2.zip"))
    assert code["CodeSha256"] == sha256_b64(second)
    assert code["CodeSize"] == len(second)
    assert code["Timeout"] == 20
    aws("wait", "function-updated-v2", "--function-name", name)
    aws("invoke", "--function-name", name, "--payload", '{"b": 2}', str(out_file))
    assert json.loads(out_file.read_text()) == {"event": {"b": 2}, "color": "blue",
                                                "tag": "v2"}

    settings = output(aws("get-account-settings"))
    assert settings["AccountUsage"]["FunctionCount"] >= 1
    assert settings["AccountLimit"]["CodeSizeUnzipped"] == 262_144_000

    deleted = aws("delete-function", "--function-name", name)
    # botocore's current model gives DeleteFunction a StatusCode output member.
    assert json.loads(deleted.stdout or "{}").get("StatusCode", 204) == 204
    missing = aws("get-function", "--function-name", name, check=False)
    assert missing.returncode in SERVICE_ERROR_EXIT
    assert ("An error occurred (ResourceNotFoundException) when calling the GetFunction "
            "operation") in missing.stderr
    assert name in missing.stderr


def test_list_functions_paginates_in_the_cli(aws: Aws, kiln_server: KilnServer,
                                             tmp_path: Path) -> None:
    client = kiln_server.client()
    prefix = unique_name("clilist")
    names = [f"{prefix}-{i}" for i in range(3)]
    data = make_zip({"app.py": SOURCE})
    for name in names:
        client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                               Handler="app.handler", Code={"ZipFile": data})
    try:
        # --page-size 1 makes the CLI follow NextMarker page by page.
        listed = output(aws("list-functions", "--page-size", "1"))
        found = [f["FunctionName"] for f in listed["Functions"]]
        assert [n for n in found if n.startswith(prefix)] == names
        assert len(found) == len(set(found))
        capped = output(aws("list-functions", "--max-items", "1", "--page-size", "1"))
        assert len(capped["Functions"]) == 1
        assert "NextToken" in capped
        rest = output(aws("list-functions", "--starting-token", capped["NextToken"],
                          "--page-size", "2"))
        assert [f["FunctionName"] for f in capped["Functions"] + rest["Functions"]] == found
    finally:
        for name in names:
            client.delete_function(FunctionName=name)


def test_cli_errors(aws: Aws, tmp_path: Path) -> None:
    zip_path = tmp_path / "code.zip"
    zip_path.write_bytes(make_zip({"app.py": SOURCE}))
    name = unique_name("clierr")
    base = ["create-function", "--function-name", name, "--runtime", "python3.11",
            "--role", ROLE, "--handler", "app.handler", "--zip-file", f"fileb://{zip_path}"]
    too_big = aws(*base, "--memory-size", "10241", check=False)
    assert too_big.returncode in SERVICE_ERROR_EXIT
    assert "(InvalidParameterValueException) when calling the CreateFunction" in too_big.stderr
    bad_runtime = aws(*base[:4], "python9.9", *base[5:], check=False)
    assert "(InvalidParameterValueException)" in bad_runtime.stderr
    # A well-formed zip to the CLI (which opens it), but a zip-slip to the server.
    (tmp_path / "bad.zip").write_bytes(make_zip({"app.py": SOURCE, "../evil.py": "x"}))
    bad_zip = aws(*base[:-1], f"fileb://{tmp_path}/bad.zip", check=False)
    assert bad_zip.returncode in SERVICE_ERROR_EXIT
    assert "Could not unzip uploaded file" in bad_zip.stderr
    # Nothing was created by the failures; the good request then works and conflicts after.
    missing = aws("get-function", "--function-name", name, check=False)
    assert missing.returncode in SERVICE_ERROR_EXIT
    aws(*base)
    again = aws(*base, check=False)
    assert "(ResourceConflictException)" in again.stderr
    # A function error is exit code 0 with FunctionError in the output, as with AWS.
    aws("update-function-configuration", "--function-name", name, "--handler", "app.missing")
    out_file = tmp_path / "error.json"
    failed = output(aws("invoke", "--function-name", name, str(out_file)))
    assert failed["FunctionError"] == "Unhandled"
    assert json.loads(out_file.read_text())["errorType"] == "Runtime.HandlerNotFound"
    aws("delete-function", "--function-name", name)
