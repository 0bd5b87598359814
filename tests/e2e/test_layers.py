"""Layers end to end through boto3: PublishLayerVersion and the other layer operations, layer
permissions, functions stacking layers at /opt (Python, Node.js, a ``provided`` bootstrap),
their errors, and ListFunctions with ``FunctionVersion=ALL``."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import shutil
import zipfile
from typing import Any

import httpx
import pytest

from tests.conftest import ROLE, KilnServer, expect_error, make_zip, unique_name

REGION = "us-east-1"
ACCOUNT = "000000000000"
SITE = "python/lib/python3.11/site-packages"

PYTHON_APP = """
import os
import shutil
import subprocess
import sys

import shared


def handler(event, context):
    found = {}
    try:
        import pkgx
        found["pkgx"] = pkgx.NAME
    except ImportError as exc:
        found["pkgx"] = repr(exc)
    tool = shutil.which("layer-tool")
    return {
        "shared": shared.VALUE,
        **found,
        "tool": subprocess.run([tool], capture_output=True, text=True).stdout.strip()
        if tool else None,
        "lib": sorted(os.listdir(os.environ["LD_LIBRARY_PATH"].split(":")[-1])),
        "sys_path": sys.path,
    }
"""


def layer_arn(name: str, version: int | None = None) -> str:
    arn = f"arn:aws:lambda:{REGION}:{ACCOUNT}:layer:{name}"
    return arn if version is None else f"{arn}:{version}"


def sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def publish(client: Any, name: str, files: dict[str, str | bytes],
            executable: tuple[str, ...] = (), **kwargs: Any) -> dict[str, Any]:
    return dict(client.publish_layer_version(
        LayerName=name, Content={"ZipFile": make_zip(files, executable)}, **kwargs))


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> Any:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}), **kwargs)
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return body


def strip(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


# -- the layer operations ---------------------------------------------------------------------

def test_publish_get_list_and_delete_layer_versions(lambda_client: Any) -> None:
    name = unique_name("layer")
    data = make_zip({"python/one.py": "X = 1\n"})
    first = strip(lambda_client.publish_layer_version(
        LayerName=name, Content={"ZipFile": data}, Description="first",
        CompatibleRuntimes=["python3.11", "python3.12"], CompatibleArchitectures=["x86_64"],
        LicenseInfo="MIT"))
    assert first["LayerArn"] == layer_arn(name)
    assert first["LayerVersionArn"] == layer_arn(name, 1)
    assert first["Version"] == 1
    assert first["Description"] == "first"
    assert first["CompatibleRuntimes"] == ["python3.11", "python3.12"]
    assert first["CompatibleArchitectures"] == ["x86_64"]
    assert first["LicenseInfo"] == "MIT"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000", first["CreatedDate"])
    assert first["Content"]["CodeSha256"] == sha256(data)
    assert first["Content"]["CodeSize"] == len(data)
    assert httpx.get(first["Content"]["Location"]).content == data  # really downloads

    second = publish(lambda_client, name, {"nodejs/node_modules/x/index.js": "1"},
                     CompatibleRuntimes=["nodejs20.x"])
    assert second["Version"] == 2 and second["LayerVersionArn"] == layer_arn(name, 2)
    assert "LicenseInfo" not in second and second["Description"] == ""

    assert strip(lambda_client.get_layer_version(LayerName=name, VersionNumber=1)) == first
    assert strip(lambda_client.get_layer_version(LayerName=layer_arn(name),
                                                 VersionNumber=1)) == first
    assert strip(lambda_client.get_layer_version_by_arn(Arn=layer_arn(name, 1))) == first

    listed = lambda_client.list_layer_versions(LayerName=name)["LayerVersions"]
    assert [v["Version"] for v in listed] == [2, 1]  # newest first
    assert listed[1] == {k: v for k, v in first.items() if k not in ("Content", "LayerArn")}
    page = lambda_client.list_layer_versions(LayerName=name, MaxItems=1)
    assert [v["Version"] for v in page["LayerVersions"]] == [2]
    rest = lambda_client.list_layer_versions(LayerName=name, Marker=page["NextMarker"])
    assert [v["Version"] for v in rest["LayerVersions"]] == [1] and "NextMarker" not in rest
    only_python = lambda_client.list_layer_versions(LayerName=name,
                                                    CompatibleRuntime="python3.12")
    assert [v["Version"] for v in only_python["LayerVersions"]] == [1]
    assert lambda_client.list_layer_versions(LayerName=unique_name("none"))[
        "LayerVersions"] == []

    layers = {item["LayerName"]: item for page in
              lambda_client.get_paginator("list_layers").paginate() for item in page["Layers"]}
    assert layers[name]["LayerArn"] == layer_arn(name)
    assert layers[name]["LatestMatchingVersion"]["Version"] == 2
    publish(lambda_client, f"{name}-other", {"a.txt": "a"})
    paged, marker = [], None
    while True:  # one layer a page
        answer = lambda_client.list_layers(MaxItems=1, **({"Marker": marker} if marker else {}))
        assert len(answer["Layers"]) == 1
        paged.append(answer["Layers"][0]["LayerName"])
        marker = answer.get("NextMarker")
        if marker is None:
            break
    assert paged == sorted(paged) and {name, f"{name}-other"} <= set(paged)
    by_runtime = {item["LayerName"]: item for item in
                  lambda_client.list_layers(CompatibleRuntime="python3.11")["Layers"]}
    assert by_runtime[name]["LatestMatchingVersion"]["LayerVersionArn"] == layer_arn(name, 1)
    by_arch = {item["LayerName"] for item in
               lambda_client.list_layers(CompatibleArchitecture="arm64")["Layers"]}
    assert name not in by_arch

    lambda_client.delete_layer_version(LayerName=name, VersionNumber=1)
    lambda_client.delete_layer_version(LayerName=name, VersionNumber=1)  # idempotent
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version, LayerName=name, VersionNumber=1)
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version_by_arn, Arn=layer_arn(name, 1))
    assert [v["Version"] for v in
            lambda_client.list_layer_versions(LayerName=name)["LayerVersions"]] == [2]
    assert name not in {item["LayerName"] for item in
                        lambda_client.list_layers(CompatibleRuntime="python3.11")["Layers"]}
    lambda_client.delete_layer_version(LayerName=name, VersionNumber=2)
    assert name not in {item["LayerName"] for page in
                        lambda_client.get_paginator("list_layers").paginate()
                        for item in page["Layers"]}
    # Numbers are never reused.
    assert publish(lambda_client, name, {"a.txt": "a"})["Version"] == 3


def test_layer_operation_errors(lambda_client: Any) -> None:
    name = unique_name("layer")
    publish(lambda_client, name, {"a.txt": "a"})
    invalid = "InvalidParameterValueException"
    expect_error(lambda_client, invalid, 400, lambda_client.get_layer_version,
                 LayerName=name, VersionNumber=0)
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version, LayerName=name, VersionNumber=9)
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version, LayerName=unique_name("no"), VersionNumber=1)
    expect_error(lambda_client, invalid, 400, lambda_client.get_layer_version_by_arn,
                 Arn=layer_arn(name))  # no version
    expect_error(lambda_client, invalid, 400, lambda_client.get_layer_version,
                 LayerName="bad name!", VersionNumber=1)
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": b"not a zip"})
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"S3Bucket": "bucket", "S3Key": "key.zip"})
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": make_zip({"a": "a"})},
                 CompatibleRuntimes=["cobol"])
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": make_zip({"a": "a"})},
                 CompatibleRuntimes=["python3.11"] * 16)
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": make_zip({"a": "a"})},
                 CompatibleArchitectures=["sparc"])
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": make_zip({"a": "a"})},
                 Description="d" * 257)
    expect_error(lambda_client, invalid, 400, lambda_client.list_layers, MaxItems=51)
    expect_error(lambda_client, invalid, 400, lambda_client.list_layers,
                 CompatibleRuntime="cobol")
    # A layer larger than 250 MB unzipped (declared sizes are checked before inflating).
    expect_error(lambda_client, invalid, 400, lambda_client.publish_layer_version,
                 LayerName=name, Content={"ZipFile": zeros_zip(251)})
    # Nothing of the failed requests was kept.
    assert [v["Version"] for v in
            lambda_client.list_layer_versions(LayerName=name)["LayerVersions"]] == [1]


def test_layer_version_permissions(lambda_client: Any) -> None:
    name = unique_name("layer")
    version = publish(lambda_client, name, {"a.txt": "a"})["Version"]
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version_policy, LayerName=name, VersionNumber=version)
    added = lambda_client.add_layer_version_permission(
        LayerName=name, VersionNumber=version, StatementId="account",
        Action="lambda:GetLayerVersion", Principal="123456789012")
    assert json.loads(added["Statement"]) == {
        "Sid": "account", "Effect": "Allow",
        "Principal": {"AWS": "arn:aws:iam::123456789012:root"},
        "Action": "lambda:GetLayerVersion", "Resource": layer_arn(name, version)}
    org = lambda_client.add_layer_version_permission(
        LayerName=name, VersionNumber=version, StatementId="org", Principal="*",
        Action="lambda:GetLayerVersion", OrganizationId="o-abcdefghij",
        RevisionId=added["RevisionId"])
    policy = lambda_client.get_layer_version_policy(LayerName=name, VersionNumber=version)
    assert policy["RevisionId"] == org["RevisionId"]
    document = json.loads(policy["Policy"])
    assert document["Version"] == "2012-10-17"
    assert [s["Sid"] for s in document["Statement"]] == ["account", "org"]
    assert document["Statement"][1]["Principal"] == "*"
    assert document["Statement"][1]["Condition"] == {
        "StringEquals": {"aws:PrincipalOrgID": "o-abcdefghij"}}

    permission = {"LayerName": name, "VersionNumber": version, "StatementId": "new",
                  "Principal": "*", "Action": "lambda:GetLayerVersion"}
    for code, status, changes in [
        ("ResourceConflictException", 409, {"StatementId": "org"}),
        ("PreconditionFailedException", 412, {"RevisionId": added["RevisionId"]}),  # stale
        ("InvalidParameterValueException", 400, {"Action": "lambda:InvokeFunction"}),
        ("InvalidParameterValueException", 400, {"Principal": "someone"}),
        ("InvalidParameterValueException", 400, {"StatementId": "no spaces"}),
        ("ResourceNotFoundException", 404, {"VersionNumber": version + 1}),
    ]:
        expect_error(lambda_client, code, status, lambda_client.add_layer_version_permission,
                     **{**permission, **changes})
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.remove_layer_version_permission, LayerName=name,
                 VersionNumber=version, StatementId="nobody")

    lambda_client.remove_layer_version_permission(LayerName=name, VersionNumber=version,
                                                  StatementId="account")
    remaining = json.loads(lambda_client.get_layer_version_policy(
        LayerName=name, VersionNumber=version)["Policy"])
    assert [s["Sid"] for s in remaining["Statement"]] == ["org"]
    lambda_client.remove_layer_version_permission(LayerName=name, VersionNumber=version,
                                                  StatementId="org")
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_layer_version_policy, LayerName=name, VersionNumber=version)


# -- functions with layers --------------------------------------------------------------------

def test_python_layers_merge_in_order_and_versions_snapshot_them(lambda_client: Any) -> None:
    first = publish(lambda_client, unique_name("la"), {
        "python/shared.py": "VALUE = 'from-a'\n",
        f"{SITE}/pkgx/__init__.py": "NAME = 'pkgx-in-site-packages'\n",
        "lib/liba.txt": "a",
    })
    second = publish(lambda_client, unique_name("lb"), {
        "python/shared.py": "VALUE = 'from-b'\n",
        "bin/layer-tool": "#!/bin/sh\necho tool-from-b\n",
        "lib/libb.txt": "b",
    }, executable=("bin/layer-tool",))
    arns = [first["LayerVersionArn"], second["LayerVersionArn"]]
    name = unique_name("withlayers")
    created = lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": PYTHON_APP})}, Layers=arns)
    expected_layers = [{"Arn": arns[0], "CodeSize": first["Content"]["CodeSize"]},
                       {"Arn": arns[1], "CodeSize": second["Content"]["CodeSize"]}]
    assert created["Layers"] == expected_layers
    assert lambda_client.get_function(FunctionName=name)["Configuration"]["Layers"] == \
        expected_layers

    body = invoke(lambda_client, name)
    assert body["shared"] == "from-b"  # the later layer's file wins
    assert body["pkgx"] == "pkgx-in-site-packages"
    assert body["tool"] == "tool-from-b"  # bin/ is on PATH
    assert body["lib"] == ["liba.txt", "libb.txt"]  # lib/ on LD_LIBRARY_PATH, layers merged
    opt_python = next(p for p in body["sys_path"] if p.endswith("/python"))
    position = body["sys_path"].index(opt_python)  # after its site-packages, as in Lambda
    assert body["sys_path"][position - 1] == f"{opt_python}/lib/python3.11/site-packages"

    published = lambda_client.publish_version(FunctionName=name)
    assert published["Layers"] == expected_layers

    # Reversed order: the other file wins; the published version keeps its snapshot.
    updated = lambda_client.update_function_configuration(FunctionName=name,
                                                          Layers=list(reversed(arns)))
    assert [layer["Arn"] for layer in updated["Layers"]] == list(reversed(arns))
    assert invoke(lambda_client, name)["shared"] == "from-a"
    assert invoke(lambda_client, name, Qualifier=published["Version"])["shared"] == "from-b"

    # A deleted layer version still serves the versions that use it (even in a new
    # environment), but no new configuration.
    lambda_client.delete_layer_version(LayerName=first["LayerArn"],
                                       VersionNumber=first["Version"])
    # The function keeps it through changes of its code and configuration.
    lambda_client.update_function_code(FunctionName=name,
                                       ZipFile=make_zip({"app.py": PYTHON_APP + "\n"}))
    lambda_client.update_function_configuration(FunctionName=name, Layers=arns)
    assert invoke(lambda_client, name)["shared"] == "from-b"
    removed = lambda_client.update_function_configuration(FunctionName=name, Layers=[])
    assert "Layers" not in removed
    without = lambda_client.invoke(FunctionName=name, Payload=b"{}")
    assert without["FunctionError"] == "Unhandled"
    assert json.loads(without["Payload"].read())["errorType"] == "Runtime.ImportModuleError"
    cold = invoke(lambda_client, name, Qualifier=published["Version"])  # $LATEST's change
    assert (cold["shared"], cold["pkgx"]) == ("from-b", "pkgx-in-site-packages")  # retired it
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.create_function, FunctionName=unique_name("late"),
                 Runtime="python3.11", Role=ROLE, Handler="app.handler",
                 Code={"ZipFile": make_zip({"app.py": PYTHON_APP})}, Layers=arns)
    lambda_client.delete_function(FunctionName=name)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_node_function_requires_a_module_from_a_layer(lambda_client: Any) -> None:
    layer = publish(lambda_client, unique_name("nodelayer"), {
        "nodejs/node_modules/greeter/index.js":
            "exports.greet = (who) => `hello ${who} from a layer`;\n",
    }, CompatibleRuntimes=["nodejs20.x"])
    name = unique_name("nodefn")
    lambda_client.create_function(
        FunctionName=name, Runtime="nodejs20.x", Role=ROLE, Handler="index.handler",
        Layers=[layer["LayerVersionArn"]], Code={"ZipFile": make_zip({"index.js": (
            "const { greet } = require('greeter');\n"
            "exports.handler = async (event) => ({ message: greet(event.who) });\n")})})
    assert invoke(lambda_client, name, {"who": "kiln"}) == {
        "message": "hello kiln from a layer"}


LAYER_BOOTSTRAP = """#!/usr/bin/python3
import json
import os
import urllib.request

api = "http://" + os.environ["AWS_LAMBDA_RUNTIME_API"] + "/2018-06-01/runtime/invocation/"
with open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], os.environ["_HANDLER"])) as source:
    greeting = source.read().strip()
while True:
    with urllib.request.urlopen(api + "next") as response:
        request_id = response.headers["Lambda-Runtime-Aws-Request-Id"]
        event = json.loads(response.read())
    answer = json.dumps({"greeting": greeting, "event": event, "runtime": "layer bootstrap"})
    urllib.request.urlopen(urllib.request.Request(
        api + request_id + "/response", data=answer.encode(), method="POST")).read()
"""


def test_provided_function_runs_the_bootstrap_of_a_layer(lambda_client: Any) -> None:
    layer = publish(lambda_client, unique_name("runtime"), {"bootstrap": LAYER_BOOTSTRAP},
                    executable=("bootstrap",), CompatibleRuntimes=["provided.al2023"])
    name = unique_name("provided")
    lambda_client.create_function(
        FunctionName=name, Runtime="provided.al2023", Role=ROLE, Handler="greeting.txt",
        Layers=[layer["LayerVersionArn"]],
        Code={"ZipFile": make_zip({"greeting.txt": "hello from the function zip\n"})})
    assert invoke(lambda_client, name, {"n": 1}) == {
        "greeting": "hello from the function zip", "event": {"n": 1},
        "runtime": "layer bootstrap"}


def test_function_layer_errors(lambda_client: Any) -> None:
    invalid = "InvalidParameterValueException"
    layer = publish(lambda_client, unique_name("e"), {"a.txt": "a"})
    newer = publish(lambda_client, layer["LayerArn"], {"b.txt": "b"})
    name = unique_name("errs")
    base = {"Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
            "Code": {"ZipFile": make_zip({"app.py": "def handler(e, c):\n    return 1\n"})}}
    cases: list[list[Any]] = [
        [layer["LayerVersionArn"]] * 6,  # > 5 layers
        [layer_arn(unique_name("missing"), 1)],  # no such layer
        [layer_arn(layer["LayerArn"].rsplit(":", 1)[1], 99)],  # no such version
        [layer["LayerArn"]],  # not a version ARN
        [layer["LayerVersionArn"], newer["LayerVersionArn"]],  # two versions of one layer
        [layer["LayerVersionArn"].replace(REGION, "eu-west-1")],  # another region
    ]
    messages = []
    for layers in cases:
        error = expect_error(lambda_client, invalid, 400, lambda_client.create_function,
                             FunctionName=name, Layers=layers, **base)
        messages.append(error.response["Error"]["Message"])
    assert messages[0] == "Cannot reference more than 5 layers."
    assert messages[1] == f"Layer version {cases[1][0]} does not exist."
    assert messages[2] == f"Layer version {cases[2][0]} does not exist."
    assert "Two different versions of the same layer" in messages[4]
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_function, FunctionName=name)  # nothing was created

    lambda_client.create_function(FunctionName=name, **base)
    for layers in cases:
        expect_error(lambda_client, invalid, 400, lambda_client.update_function_configuration,
                     FunctionName=name, Layers=layers)
    assert "Layers" not in lambda_client.get_function_configuration(FunctionName=name)


def test_layers_and_code_over_250_mb_unzipped_are_refused(lambda_client: Any,
                                                          kiln_server: KilnServer) -> None:
    big = [unique_name("big") for _ in range(2)]
    arns = [lambda_client.publish_layer_version(
        LayerName=layer, Content={"ZipFile": zeros_zip(126)})["LayerVersionArn"]
        for layer in big]
    name = unique_name("huge")
    error = expect_error(
        lambda_client, "InvalidParameterValueException", 400, lambda_client.create_function,
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": "x = 1\n"})}, Layers=arns)
    assert error.response["Error"]["Message"] == (
        "Function code combined with layers exceeds the maximum allowed size of 262144000 "
        f"bytes. The actual size is {2 * 126 * (1 << 20) + 6} bytes.")
    lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": make_zip({"app.py": "x = 1\n"})}, Layers=arns[:1])
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_code, FunctionName=name,
                 ZipFile=zeros_zip(125))
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_configuration, FunctionName=name, Layers=arns)
    lambda_client.delete_function(FunctionName=name)
    for layer in big:
        lambda_client.delete_layer_version(LayerName=layer, VersionNumber=1)
    # Nothing keeps the big zips: they are gone from the server's disk.
    leftovers = [p for p in (kiln_server.data_dir / "code" / "tasks").iterdir()
                 if (p / "zeros.bin").exists()]
    assert leftovers == []


def zeros_zip(megabytes: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive, \
            archive.open("zeros.bin", "w") as sink:
        chunk = bytes(1 << 20)
        for _ in range(megabytes):
            sink.write(chunk)
    return buffer.getvalue()


# -- ListFunctions with FunctionVersion=ALL ---------------------------------------------------

def test_list_functions_with_all_versions(lambda_client: Any) -> None:
    prefix = unique_name("all")
    names = [f"{prefix}-a", f"{prefix}-b"]
    for name in names:
        lambda_client.create_function(
            FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
            Code={"ZipFile": make_zip({"app.py": f"NAME = {name!r}\n"})}, Publish=True)
    lambda_client.update_function_configuration(FunctionName=names[0], MemorySize=256)
    lambda_client.publish_version(FunctionName=names[0])

    def listed(**kwargs: Any) -> list[tuple[str, str]]:
        found = []
        for page in lambda_client.get_paginator("list_functions").paginate(**kwargs):
            found.extend((f["FunctionName"], f["Version"]) for f in page["Functions"]
                         if f["FunctionName"].startswith(prefix))
        return found

    assert listed() == [(names[0], "$LATEST"), (names[1], "$LATEST")]
    everything = [(names[0], "$LATEST"), (names[0], "1"), (names[0], "2"),
                  (names[1], "$LATEST"), (names[1], "1")]
    assert listed(FunctionVersion="ALL") == everything
    assert listed(FunctionVersion="ALL", PaginationConfig={"PageSize": 1}) == everything
    versions = [f for page in lambda_client.get_paginator("list_functions").paginate(
        FunctionVersion="ALL") for f in page["Functions"] if f["FunctionName"] == names[0]]
    assert [f["FunctionArn"].rsplit(":", 1)[1] for f in versions[1:]] == ["1", "2"]
    assert [f["MemorySize"] for f in versions] == [256, 128, 256]
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.list_functions, FunctionVersion="SOME")
