"""Every control-plane and invoke error a user can meet, with the exact boto3 exception class
and status code, and proof that the server keeps serving with its state unchanged."""

from __future__ import annotations

import base64
import io
import json
import os
import threading
import urllib.parse
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError
from botocore.parsers import RestJSONParser

from kiln.config import Settings
from kiln.runtime.runtimes import PYTHON_RUNTIMES, RuntimeCatalog
from tests.conftest import (
    ROLE,
    KilnServer,
    create_python_function,
    expect_error,
    make_zip,
    start_server,
    unique_name,
)

ECHO = "def handler(event, context):\n    return event\n"
COUNTER = (
    "COUNT = 0\n\n"
    "def handler(event, context):\n"
    "    global COUNT\n"
    "    COUNT += 1\n"
    "    return {'count': COUNT, 'size': len(event) if isinstance(event, str) else None}\n"
)
SYNC_LIMIT = 6_291_456
ASYNC_LIMIT = 1_048_576


# -- helpers ----------------------------------------------------------------------------------

def expect_raw_error(client: Any, response: httpx.Response, code: str, status: int) -> str:
    """A raw HTTP error response, parsed the way botocore parses it."""
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-errortype"] == code
    body = response.json()
    assert body["Type"] == ("User" if status < 500 else "Service")
    parsed = RestJSONParser().parse({"status_code": response.status_code,
                                     "headers": dict(response.headers),
                                     "body": response.content}, None)
    assert parsed["Error"]["Code"] == code
    assert client.exceptions.from_code(code).__name__ == code
    message: str = parsed["Error"]["Message"]
    assert message
    return message


@dataclass
class State:
    functions: dict[str, dict[str, Any]]
    tasks: list[str]
    zips: list[str]


def state(client: Any, server: KilnServer) -> State:
    functions: dict[str, dict[str, Any]] = {}
    for page in client.get_paginator("list_functions").paginate():
        for config in page["Functions"]:
            functions[config["FunctionName"]] = config
    code = server.data_dir / "code"
    return State(functions, sorted(os.listdir(code / "tasks")), sorted(os.listdir(code / "zips")))


@pytest.fixture
def unchanged(lambda_client: Any, kiln_server: KilnServer) -> Iterator[State]:
    """The server's state before the test, checked to be identical after it (and that the
    server still answers a real request)."""
    before = state(lambda_client, kiln_server)
    yield before
    assert kiln_server.process.poll() is None, kiln_server.output()
    assert state(lambda_client, kiln_server) == before
    assert httpx.get(f"{kiln_server.url}/kiln/v1/health").status_code == 200


@pytest.fixture(scope="module")
def existing(lambda_client: Any) -> Iterator[str]:
    """A function that bad requests try to change."""
    name = create_python_function(lambda_client, COUNTER, Timeout=5,
                                  Environment={"Variables": {"KEPT": "yes"}})
    yield name
    lambda_client.delete_function(FunctionName=name)


@pytest.fixture(scope="module")
def unvalidated(kiln_server: KilnServer) -> Any:
    """boto3 with client-side validation off: values only the server can refuse get sent."""
    return kiln_server.client(parameter_validation=False)


def create_kwargs(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "FunctionName": unique_name("bad"), "Runtime": "python3.11", "Role": ROLE,
        "Handler": "app.handler", "Code": {"ZipFile": make_zip({"app.py": ECHO})}}
    kwargs.update(overrides)
    return {k: v for k, v in kwargs.items() if v is not None}


def raw_zip(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, content in members:
            archive.writestr(info, content)
    return buffer.getvalue()


# -- ResourceNotFoundException 404 ------------------------------------------------------------

def test_resource_not_found_for_every_operation(lambda_client: Any,
                                                unchanged: State) -> None:
    name = unique_name("missing")
    arn = f"arn:aws:lambda:us-east-1:000000000000:function:{name}"
    calls: list[tuple[Callable[..., Any], dict[str, Any]]] = [
        (lambda_client.get_function, {}),
        (lambda_client.get_function_configuration, {}),
        (lambda_client.update_function_code, {"ZipFile": make_zip({"app.py": ECHO})}),
        (lambda_client.update_function_configuration, {"Timeout": 10}),
        (lambda_client.delete_function, {}),
        (lambda_client.invoke, {"Payload": b"{}"}),
        (lambda_client.invoke, {"Payload": b"{}", "InvocationType": "Event"}),
        (lambda_client.invoke, {"Payload": b"{}", "InvocationType": "DryRun"}),
    ]
    for identifier in (name, arn, f"000000000000:function:{name}"):
        for call, kwargs in calls:
            error = expect_error(lambda_client, "ResourceNotFoundException", 404, call,
                                 FunctionName=identifier, **kwargs)
            assert arn in error.response["Error"]["Message"]


def test_unknown_qualifier_is_not_found(lambda_client: Any, existing: str,
                                        unchanged: State) -> None:
    for call in (lambda_client.get_function, lambda_client.get_function_configuration,
                 lambda_client.delete_function):
        expect_error(lambda_client, "ResourceNotFoundException", 404, call,
                     FunctionName=existing, Qualifier="7")
    expect_error(lambda_client, "ResourceNotFoundException", 404, lambda_client.invoke,
                 FunctionName=f"{existing}:live", Payload=b"{}")


def test_unknown_path_is_an_aws_error(kiln_server: KilnServer, lambda_client: Any) -> None:
    response = httpx.get(f"{kiln_server.url}/2015-03-31/nothing-here")
    assert response.status_code == 404
    assert response.headers["x-amzn-errortype"]
    assert response.json()["message"]


# -- ResourceConflictException 409 ------------------------------------------------------------

def test_create_existing_function_conflicts(lambda_client: Any, existing: str,
                                            unchanged: State) -> None:
    different = make_zip({"app.py": ECHO, "new.txt": unique_name()})
    error = expect_error(lambda_client, "ResourceConflictException", 409,
                         lambda_client.create_function,
                         **create_kwargs(FunctionName=existing, Code={"ZipFile": different},
                                         Timeout=30))
    assert existing in error.response["Error"]["Message"]
    config = lambda_client.get_function_configuration(FunctionName=existing)
    assert config["Timeout"] == 5


# -- InvalidParameterValueException 400 -------------------------------------------------------

BAD_CONFIGURATION = {
    "memory-127": {"MemorySize": 127},
    "memory-10241": {"MemorySize": 10241},
    "timeout-0": {"Timeout": 0},
    "timeout-901": {"Timeout": 901},
    "timeout-negative": {"Timeout": -1},
    "ephemeral-511": {"EphemeralStorage": {"Size": 511}},
    "ephemeral-10241": {"EphemeralStorage": {"Size": 10241}},
    "handler-space": {"Handler": "app handler"},
    "handler-tab": {"Handler": "app.\thandler"},
    "handler-newline": {"Handler": "app.handler\n"},
    "handler-129": {"Handler": "a." + "h" * 127},
    "role-not-arn": {"Role": "kiln-test"},
    "role-user": {"Role": "arn:aws:iam::000000000000:user/kiln"},
    "role-short-account": {"Role": "arn:aws:iam::0000:role/kiln"},
    "env-reserved-region": {"Environment": {"Variables": {"AWS_REGION": "eu-west-1"}}},
    "env-reserved-handler": {"Environment": {"Variables": {"OK": "1", "_HANDLER": "x.y"}}},
    "env-reserved-task-root": {"Environment": {"Variables": {"LAMBDA_TASK_ROOT": "/tmp"}}},
    "env-over-4kb": {"Environment": {"Variables": {f"K{i:03d}": "v" * 40 for i in range(100)}}},
    # 4,000 bytes of keys and values, but over 4 KB as the JSON AWS measures.
    "env-json-over-4kb": {"Environment": {"Variables": {
        f"K{i:03d}": "v" * 36 for i in range(100)}}},
    "env-bad-key": {"Environment": {"Variables": {"1BAD": "x"}}},
    "runtime-unknown": {"Runtime": "python9.9"},
    "runtime-not-supported": {"Runtime": "java21"},
    "description-257": {"Description": "d" * 257},
}
BAD_CREATE_ONLY = {
    "name-punctuation": {"FunctionName": "bad name!"},
    "name-65": {"FunctionName": "n" * 65},
    "name-dot": {"FunctionName": "bad.name"},
    "name-qualified": {"FunctionName": "good-name:live"},
    "name-arn-qualified": {"FunctionName": "arn:aws:lambda:us-east-1:000000000000:function:f:1"},
    "architectures-two": {"Architectures": ["x86_64", "arm64"]},
    "architectures-unknown": {"Architectures": ["sparc"]},
    "package-image": {"PackageType": "Image"},
    "code-s3": {"Code": {"S3Bucket": "bucket", "S3Key": "key.zip"}},
    "code-image": {"Code": {"ImageUri": "example.com/image:latest"}},
    "code-empty": {"Code": {}},
    "no-runtime": {"Runtime": None},
    "no-handler": {"Handler": None},
}


@pytest.mark.parametrize("overrides", [*BAD_CONFIGURATION.values(), *BAD_CREATE_ONLY.values()],
                         ids=[*BAD_CONFIGURATION, *BAD_CREATE_ONLY])
def test_create_with_invalid_parameter(unvalidated: Any, lambda_client: Any,
                                       overrides: dict[str, Any], unchanged: State) -> None:
    kwargs = create_kwargs(**overrides)
    expect_error(unvalidated, "InvalidParameterValueException", 400,
                 unvalidated.create_function, **kwargs)
    if "FunctionName" not in overrides:
        expect_error(lambda_client, "ResourceNotFoundException", 404,
                     lambda_client.get_function, FunctionName=kwargs["FunctionName"])


@pytest.mark.parametrize("overrides", list(BAD_CONFIGURATION.values()),
                         ids=list(BAD_CONFIGURATION))
def test_update_configuration_with_invalid_parameter(unvalidated: Any, existing: str,
                                                     overrides: dict[str, Any],
                                                     unchanged: State) -> None:
    expect_error(unvalidated, "InvalidParameterValueException", 400,
                 unvalidated.update_function_configuration, FunctionName=existing, **overrides)


def test_invalid_parameter_messages_say_what_is_wrong(unvalidated: Any,
                                                      unchanged: State) -> None:
    cases = {
        "memorySize": {"MemorySize": 10241},
        "timeout": {"Timeout": 901},
        "handler": {"Handler": "app handler"},
        "Reserved keys used in this request: AWS_REGION": {
            "Environment": {"Variables": {"AWS_REGION": "x"}}},
        "4KB": {"Environment": {"Variables": {"BIG": "x" * 5000}}},
        "python9.9": {"Runtime": "python9.9"},
    }
    for fragment, overrides in cases.items():
        error = expect_error(unvalidated, "InvalidParameterValueException", 400,
                             unvalidated.create_function, **create_kwargs(**overrides))
        assert fragment in error.response["Error"]["Message"]


def test_limits_are_inclusive(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO, MemorySize=10240, Timeout=900,
                                  EphemeralStorage={"Size": 10240},
                                  Environment={"Variables": {"AB": "x" * (4096 - 9)}})
    config = lambda_client.update_function_configuration(
        FunctionName=name, MemorySize=128, Timeout=1, EphemeralStorage={"Size": 512})
    assert (config["MemorySize"], config["Timeout"], config["EphemeralStorage"]) == (
        128, 1, {"Size": 512})
    lambda_client.delete_function(FunctionName=name)


def test_runtime_known_but_not_installed(lambda_client: Any, unchanged: State) -> None:
    catalog = RuntimeCatalog(Settings.from_env())
    missing = [r for r in PYTHON_RUNTIMES if catalog.python(r) is None]
    if not missing:
        pytest.skip("every python3.x runtime is installed here (see restricted_server tests)")
    runtime = missing[-1]
    error = expect_error(lambda_client, "InvalidParameterValueException", 400,
                         lambda_client.create_function, **create_kwargs(Runtime=runtime))
    assert runtime in error.response["Error"]["Message"]


def test_qualifier_disagreeing_with_the_path(lambda_client: Any, existing: str,
                                             unchanged: State) -> None:
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.get_function_configuration,
                 FunctionName=f"{existing}:$LATEST", Qualifier="1")
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.delete_function, FunctionName=existing, Qualifier="$LATEST")


def test_bad_function_identifiers_in_paths(unvalidated: Any, kiln_server: KilnServer,
                                           unchanged: State) -> None:
    for identifier in ("bad name", "a" * 65, "function:f", "arn:aws:s3:::bucket",
                       "f:bad qualifier", "x" * 257):
        expect_error(unvalidated, "InvalidParameterValueException", 400,
                     unvalidated.get_function, FunctionName=identifier)
        expect_error(unvalidated, "InvalidParameterValueException", 400,
                     unvalidated.invoke, FunctionName=identifier, Payload=b"{}")
    for qualifier in ("bad qualifier", "v1!", "a/b"):
        expect_error(unvalidated, "InvalidParameterValueException", 400,
                     unvalidated.get_function_configuration, FunctionName="some-function",
                     Qualifier=qualifier)
    quoted = urllib.parse.quote("bad\nname", safe="")
    response = httpx.get(f"{kiln_server.url}/2015-03-31/functions/{quoted}")
    expect_raw_error(unvalidated, response, "InvalidParameterValueException", 400)


def test_list_functions_bad_paging(unvalidated: Any, kiln_server: KilnServer,
                                   unchanged: State) -> None:
    expect_error(unvalidated, "InvalidParameterValueException", 400,
                 unvalidated.list_functions, MaxItems=10001)
    expect_error(unvalidated, "InvalidParameterValueException", 400,
                 unvalidated.list_functions, MaxItems=0)
    expect_error(unvalidated, "InvalidParameterValueException", 400,
                 unvalidated.list_functions, Marker="%%%not-a-marker%%%")
    for query in ("MaxItems=abc", "MaxItems=-1"):
        response = httpx.get(f"{kiln_server.url}/2015-03-31/functions/?{query}")
        expect_raw_error(unvalidated, response, "InvalidParameterValueException", 400)


def test_bad_invoke_headers(unvalidated: Any, existing: str, unchanged: State) -> None:
    expect_error(unvalidated, "InvalidParameterValueException", 400, unvalidated.invoke,
                 FunctionName=existing, InvocationType="Sometimes", Payload=b"{}")
    expect_error(unvalidated, "InvalidParameterValueException", 400, unvalidated.invoke,
                 FunctionName=existing, LogType="Everything", Payload=b"{}")


# -- bad zip files ----------------------------------------------------------------------------

def _symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = 0o120777 << 16
    return info


def _corrupted() -> bytes:
    data = bytearray(raw_zip(("app.py", ECHO.encode() * 20)))
    data[30 + len("app.py") + 5] ^= 0xFF  # flip a byte of the stored member
    return bytes(data)


BAD_ZIPS = {
    "not-a-zip": b"this is not a zip file",
    "empty-bytes": b"",
    "truncated": make_zip({"app.py": ECHO * 50})[:-25],
    "corrupted-crc": _corrupted(),
    "gzip": b"\x1f\x8b\x08\x00" + os.urandom(64),
    "slip-parent": raw_zip(("app.py", ECHO.encode()), ("../evil.py", b"pwned")),
    "slip-deep": raw_zip(("app.py", ECHO.encode()), ("a/../../../evil.py", b"pwned")),
    "slip-absolute": raw_zip(("app.py", ECHO.encode()), ("/tmp/kiln-evil.py", b"pwned")),
    "slip-backslash": raw_zip(("app.py", ECHO.encode()), ("..\\evil.py", b"pwned")),
    "slip-symlink": raw_zip(("app.py", ECHO.encode()), (_symlink("evil"), b"../../../..")),
}


@pytest.mark.parametrize("data", list(BAD_ZIPS.values()), ids=list(BAD_ZIPS))
def test_bad_zip_files(lambda_client: Any, kiln_server: KilnServer, existing: str,
                       data: bytes, unchanged: State) -> None:
    name = unique_name("zip")
    error = expect_error(lambda_client, "InvalidParameterValueException", 400,
                         lambda_client.create_function, **create_kwargs(
                             FunctionName=name, Code={"ZipFile": data}))
    assert "Could not unzip uploaded file" in error.response["Error"]["Message"]
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_code, FunctionName=existing, ZipFile=data)
    assert not list(kiln_server.data_dir.parent.rglob("evil.py"))
    assert not os.path.exists("/tmp/kiln-evil.py")
    assert lambda_client.invoke(FunctionName=existing, Payload=b"{}")["StatusCode"] == 200


@pytest.fixture(scope="module")
def over_250mb_unzipped() -> bytes:
    """One highly compressible member of 250 MiB + 1 byte (about 250 KB zipped)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("app.py", ECHO)
        info = zipfile.ZipInfo("zeros.bin")
        info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(info, "w", force_zip64=True) as sink:
            chunk = bytes(1 << 20)
            for _ in range(249):
                sink.write(chunk)
            sink.write(bytes(262_144_001 - 249 * (1 << 20) - len(ECHO)))
    data = buffer.getvalue()
    assert len(data) < 1 << 20
    return data


def test_code_over_250mb_unzipped(lambda_client: Any, existing: str, unchanged: State,
                                  over_250mb_unzipped: bytes) -> None:
    for call, kwargs in (
            (lambda_client.create_function, create_kwargs(Code={"ZipFile": over_250mb_unzipped})),
            (lambda_client.update_function_code, {"FunctionName": existing,
                                                  "ZipFile": over_250mb_unzipped})):
        error = expect_error(lambda_client, "InvalidParameterValueException", 400, call,
                             **kwargs)
        assert "262144000" in error.response["Error"]["Message"]


# -- InvalidRequestContentException (raw HTTP: boto3 would refuse to send these) --------------

MALFORMED_BODIES = {
    "truncated-json": b'{"FunctionName": "f", ',
    "not-json": b"FunctionName=f",
    "json-array": b'[{"FunctionName": "f"}]',
    "json-string": b'"FunctionName"',
    "invalid-utf8": b'{"FunctionName": "\xff\xfe"}',
}


def _create_body(**overrides: Any) -> bytes:
    body: dict[str, Any] = {
        "FunctionName": unique_name("raw"), "Runtime": "python3.11", "Role": ROLE,
        "Handler": "app.handler",
        "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": ECHO})).decode()}}
    body.update(overrides)
    return json.dumps(body).encode()


WRONG_TYPES = {
    "name-number": {"FunctionName": 5},
    "timeout-string": {"Timeout": "3"},
    "timeout-fraction": {"Timeout": 3.5},
    "memory-boolean": {"MemorySize": True},
    "handler-list": {"Handler": ["app.handler"]},
    "description-number": {"Description": 7},
    "environment-list": {"Environment": ["A=1"]},
    "variables-string": {"Environment": {"Variables": "A=1"}},
    "variable-value-number": {"Environment": {"Variables": {"AB": 1}}},
    "code-string": {"Code": "UEsFBg=="},
    "zipfile-number": {"Code": {"ZipFile": 12}},
    "zipfile-not-base64": {"Code": {"ZipFile": "!!! not base64 !!!"}},
    "architectures-string": {"Architectures": "x86_64"},
    "ephemeral-number": {"EphemeralStorage": 512},
}


@pytest.mark.parametrize("body", list(MALFORMED_BODIES.values()), ids=list(MALFORMED_BODIES))
def test_malformed_json(kiln_server: KilnServer, lambda_client: Any, existing: str,
                        body: bytes, unchanged: State) -> None:
    headers = {"Content-Type": "application/json"}
    url = f"{kiln_server.url}/2015-03-31/functions"
    for method, path in (("POST", ""), ("PUT", f"/{existing}/configuration"),
                         ("PUT", f"/{existing}/code")):
        response = httpx.request(method, url + path, content=body, headers=headers)
        expect_raw_error(lambda_client, response, "InvalidRequestContentException", 400)


@pytest.mark.parametrize("overrides", list(WRONG_TYPES.values()), ids=list(WRONG_TYPES))
def test_wrong_types(kiln_server: KilnServer, lambda_client: Any, existing: str,
                     overrides: dict[str, Any], unchanged: State) -> None:
    url = f"{kiln_server.url}/2015-03-31/functions"
    response = httpx.post(url, content=_create_body(**overrides),
                          headers={"Content-Type": "application/json"})
    expect_raw_error(lambda_client, response, "InvalidRequestContentException", 400)
    update = {k: v for k, v in overrides.items()
              if k not in ("FunctionName", "Code", "Architectures")}
    if update:
        response = httpx.put(f"{url}/{existing}/configuration", json=update)
        expect_raw_error(lambda_client, response, "InvalidRequestContentException", 400)


def test_wrong_types_in_update_code(kiln_server: KilnServer, lambda_client: Any, existing: str,
                                    unchanged: State) -> None:
    url = f"{kiln_server.url}/2015-03-31/functions/{existing}/code"
    good = base64.b64encode(make_zip({"app.py": ECHO + "# new\n"})).decode()
    for body in ({"ZipFile": 5}, {"ZipFile": "%%%"}, {"ZipFile": good, "DryRun": "yes"},
                 {"ZipFile": good, "RevisionId": 5}, {"ZipFile": good, "Architectures": "arm64"}):
        response = httpx.put(url, json=body)
        expect_raw_error(lambda_client, response, "InvalidRequestContentException", 400)


def test_invoke_with_malformed_json_payload(lambda_client: Any, existing: str,
                                            unchanged: State) -> None:
    for payload in (b"{not json", b'{"a": }', b"\xff\xfe\xfd"):
        for invocation_type in ("RequestResponse", "Event"):
            expect_error(lambda_client, "InvalidRequestContentException", 400,
                         lambda_client.invoke, FunctionName=existing, Payload=payload,
                         InvocationType=invocation_type)


# -- RequestEntityTooLargeException 413 -------------------------------------------------------

def _json_string(total_bytes: int) -> bytes:
    return b'"' + b"x" * (total_bytes - 2) + b'"'


def test_payload_limits(lambda_client: Any, unchanged: State) -> None:
    # A 6 MB event takes a while to parse on a loaded machine: not what this test is about.
    name = create_python_function(lambda_client, COUNTER, Timeout=60)
    assert json.loads(lambda_client.invoke(FunctionName=name, Payload=b'"a"')[
        "Payload"].read()) == {"count": 1, "size": 1}
    # One byte over each limit: 413, and the function never runs.
    for payload, invocation_type in ((_json_string(SYNC_LIMIT + 1), "RequestResponse"),
                                     (_json_string(ASYNC_LIMIT + 1), "Event")):
        error = expect_error(lambda_client, "RequestEntityTooLargeException", 413,
                             lambda_client.invoke, FunctionName=name, Payload=payload,
                             InvocationType=invocation_type)
        assert type(error) is ClientError  # not a modeled exception in botocore
    # Exactly at the sync limit is accepted.
    response = lambda_client.invoke(FunctionName=name, Payload=_json_string(SYNC_LIMIT))
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"count": 2, "size": SYNC_LIMIT - 2}
    # Exactly at the async limit is queued.
    response = lambda_client.invoke(FunctionName=name, Payload=_json_string(ASYNC_LIMIT),
                                    InvocationType="Event")
    assert response["StatusCode"] == 202
    lambda_client.delete_function(FunctionName=name)


def test_response_over_6mb_is_a_function_error(lambda_client: Any) -> None:
    source = "def handler(event, context):\n    return 'x' * event['n']\n"
    name = create_python_function(lambda_client, source)
    # Lambda's response limit is 6,291,556 bytes (6 MiB + 100); this JSON string is 2 over.
    response = lambda_client.invoke(FunctionName=name,
                                    Payload=json.dumps({"n": 6_291_556}).encode())
    raw = response["Payload"].read()  # read it all, pass or fail: it holds the connection
    assert response["StatusCode"] == 200
    assert response.get("FunctionError") == "Unhandled", len(raw)
    error = json.loads(raw)
    assert error["errorType"] == "Function.ResponseSizeTooLarge"
    assert "6291556" in error["errorMessage"]
    # Exactly at the limit (with its JSON quotes) comes back whole.
    response = lambda_client.invoke(FunctionName=name,
                                    Payload=json.dumps({"n": 6_291_554}).encode())
    assert len(response["Payload"].read()) == 6_291_556
    assert "FunctionError" not in response
    lambda_client.delete_function(FunctionName=name)


def test_create_request_over_the_upload_limit(lambda_client: Any, unchanged: State) -> None:
    """A zip over 50 MB is a request over 69,905,067 bytes once base64-encoded in JSON."""
    big = raw_zip(("app.py", ECHO.encode()), ("blob.bin", os.urandom(52_428_800 + 1024)))
    error = expect_error(lambda_client, "RequestEntityTooLargeException", 413,
                         lambda_client.create_function, **create_kwargs(Code={"ZipFile": big}))
    assert "69905067" in error.response["Error"]["Message"]


# -- handler pointing nowhere: create succeeds, invoke reports the init error ------------------

@pytest.mark.parametrize(("files", "handler", "error_type", "fragment"), [
    ({"app.py": ECHO}, "nothere.handler", "Runtime.ImportModuleError",
     "Unable to import module 'nothere'"),
    ({"app.py": ECHO}, "app.nothere", "Runtime.HandlerNotFound",
     "Handler 'nothere' missing on module 'app'"),
    ({"app.py": ECHO}, "pkg.deep.app.handler", "Runtime.ImportModuleError",
     "Unable to import module 'pkg.deep.app'"),
    ({"app.py": "def handler(event, context)\n    return 1\n"}, "app.handler",
     "Runtime.UserCodeSyntaxError", "Syntax error in module 'app'"),
    ({"app.py": "import not_a_module_anywhere\n"}, "app.handler",
     "Runtime.ImportModuleError", "No module named 'not_a_module_anywhere'"),
    ({"app.py": ECHO}, "app", "Runtime.MalformedHandlerName", "Bad handler 'app'"),
    ({"app.py": ECHO}, "sys.handler", "Runtime.BuiltInModuleConflict",
     "Cannot use built-in module sys"),
])
def test_handler_pointing_nowhere(lambda_client: Any, files: dict[str, str], handler: str,
                                  error_type: str, fragment: str) -> None:
    name = unique_name("nowhere")
    created = lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler=handler,
        Code={"ZipFile": make_zip(files)})
    assert created["State"] == "Active"
    for _ in range(2):  # the error is reported every time, not only on the first invoke
        response = lambda_client.invoke(FunctionName=name, Payload=b"{}")
        assert response["StatusCode"] == 200
        assert response["FunctionError"] == "Unhandled"
        body = json.loads(response["Payload"].read())
        assert body["errorType"] == error_type, body
        assert fragment in body["errorMessage"], body
    # Pointing the handler somewhere real fixes it at once.
    lambda_client.update_function_configuration(FunctionName=name, Handler="app.handler")
    lambda_client.update_function_code(FunctionName=name, ZipFile=make_zip({"app.py": ECHO}))
    response = lambda_client.invoke(FunctionName=name, Payload=b'{"ok": true}')
    assert "FunctionError" not in response
    assert json.loads(response["Payload"].read()) == {"ok": True}
    lambda_client.delete_function(FunctionName=name)


# -- a second server with tight limits: 429 and 500 -------------------------------------------

@pytest.fixture(scope="module")
def restricted(tmp_path_factory: pytest.TempPathFactory,
               shared_root: Path) -> Iterator[KilnServer]:
    """One concurrent execution for the whole account, and python3.12 pointed at nothing."""
    # The 429 test's function signals through files in a shared directory.
    server = start_server(tmp_path_factory.mktemp("restricted") / "data",
                          KILN_ACCOUNT_CONCURRENCY="1", KILN_SANDBOX_SHARED_DIRS=str(shared_root),
                          KILN_PYTHON_RUNTIMES="python3.12=/nonexistent/bin/python3.12")
    yield server
    server.stop()


WAIT_FOR_RELEASE = """
import os, time

def handler(event, context):
    open(event['started'], 'w').close()
    deadline = time.monotonic() + 20
    while not os.path.exists(event['release']) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 'released'
"""


def test_too_many_requests_with_reason(restricted: KilnServer, shared_dir: Path) -> None:
    client = restricted.client()
    name = create_python_function(client, WAIT_FOR_RELEASE, Timeout=30)
    started, release = shared_dir / "started", shared_dir / "release"
    event = json.dumps({"started": str(started), "release": str(release)}).encode()
    results: list[Any] = []

    def first_invoke() -> None:
        results.append(json.loads(restricted.client().invoke(
            FunctionName=name, Payload=event)["Payload"].read()))

    thread = threading.Thread(target=first_invoke)
    thread.start()
    try:
        for _ in range(2000):  # until the first invoke is running (bounded; no timing check)
            if started.exists() or not thread.is_alive():
                break
            threading.Event().wait(0.01)
        assert started.exists(), "the first invoke never started"
        for call_kwargs in ({"Payload": b'"second"'},
                            {"Payload": b'"second"', "InvocationType": "RequestResponse",
                             "LogType": "Tail"}):
            error = expect_error(client, "TooManyRequestsException", 429, client.invoke,
                                 FunctionName=name, **call_kwargs)
            assert error.response["Reason"] == "ConcurrentInvocationLimitExceeded"
            assert error.response["retryAfterSeconds"]
    finally:
        release.touch()
        thread.join(30)
    assert results == ["released"]
    # The lease went back: the next invoke runs.
    started.unlink()
    response = client.invoke(FunctionName=name, Payload=json.dumps(
        {"started": str(started), "release": str(release)}).encode())
    assert json.loads(response["Payload"].read()) == "released"
    client.delete_function(FunctionName=name)


def test_configured_runtime_that_is_missing(restricted: KilnServer) -> None:
    client = restricted.client()
    before = state(client, restricted)
    error = expect_error(client, "InvalidParameterValueException", 400, client.create_function,
                         **create_kwargs(Runtime="python3.12"))
    message = error.response["Error"]["Message"]
    assert "python3.12" in message
    assert "not available" in message
    name = create_python_function(client, ECHO)
    expect_error(client, "InvalidParameterValueException", 400,
                 client.update_function_configuration, FunctionName=name, Runtime="python3.12")
    assert client.get_function_configuration(FunctionName=name)["Runtime"] == "python3.11"
    client.delete_function(FunctionName=name)
    assert state(client, restricted) == before


def test_service_exception_when_the_code_store_fails(restricted: KilnServer) -> None:
    """Honest internal failure: the code directory is not a directory any more."""
    client = restricted.client()
    before = state(client, restricted)
    tasks = restricted.data_dir / "code" / "tasks"
    moved = tasks.with_name("tasks.moved")
    tasks.rename(moved)
    tasks.write_text("not a directory")
    try:
        name = unique_name("svc")
        expect_error(client, "ServiceException", 500, client.create_function,
                     **create_kwargs(FunctionName=name,
                                     Code={"ZipFile": make_zip({"app.py": ECHO,
                                                                "n.txt": name})}))
    finally:
        tasks.unlink()
        moved.rename(tasks)
    assert restricted.process.poll() is None
    expect_error(client, "ResourceNotFoundException", 404, client.get_function,
                 FunctionName=name)
    assert state(client, restricted) == before
    # And it recovers once the disk is sane again.
    created = create_python_function(client, ECHO)
    assert json.loads(client.invoke(FunctionName=created, Payload=b'{"back": 1}')[
        "Payload"].read()) == {"back": 1}
    client.delete_function(FunctionName=created)
    assert state(client, restricted) == before
