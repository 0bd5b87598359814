"""The Lambda control plane (REST API 2015-03-31) end to end, through boto3 against a real
``kiln serve``: every operation, pagination, waiters, ARNs in paths, exact code hashes."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import WaiterError

from tests.conftest import (
    ROLE,
    KilnServer,
    create_python_function,
    make_zip,
    start_server,
    unique_name,
)

ACCOUNT = "000000000000"
REGION = "us-east-1"
TIMESTAMP_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+0000$")
ECHO = "import os\n\ndef handler(event, context):\n    return {'event': event, 'tag': 'v1'}\n"


def arn(name: str) -> str:
    return f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{name}"


def code_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def strip(response: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in response.items() if k != "ResponseMetadata"}


def as_listed(config: dict[str, Any]) -> dict[str, Any]:
    """ListFunctions gives a subset of the configuration: AWS leaves State and
    LastUpdateStatus (and their reasons) to GetFunction."""
    omitted = {"State", "StateReason", "StateReasonCode", "LastUpdateStatus",
               "LastUpdateStatusReason", "LastUpdateStatusReasonCode", "RuntimeVersionConfig",
               "ResponseMetadata"}
    return {k: v for k, v in config.items() if k not in omitted}


def task_dirs(server: KilnServer) -> set[str]:
    return set(os.listdir(server.data_dir / "code" / "tasks"))


def invoke_json(client: Any, name: str, payload: Any = None) -> Any:
    response = client.invoke(FunctionName=name, Payload=json.dumps(payload or {}).encode())
    assert response["StatusCode"] == 200
    body = json.loads(response["Payload"].read())
    assert "FunctionError" not in response, body
    return body


def all_function_names(client: Any) -> list[str]:
    names: list[str] = []
    for page in client.get_paginator("list_functions").paginate():
        names.extend(f["FunctionName"] for f in page["Functions"])
    return names


# -- CreateFunction / GetFunction / GetFunctionConfiguration ----------------------------------

def test_create_function_stores_and_returns_every_accepted_field(
        lambda_client: Any) -> None:
    name = unique_name("create")
    data = make_zip({"app.py": ECHO, "lib/helper.py": "X = 1\n"})
    role = "arn:aws:iam::000000000000:role/service-role/kiln-everything"
    created = lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=role, Handler="app.handler",
        Code={"ZipFile": data}, Description="all the fields", Timeout=42, MemorySize=1536,
        Environment={"Variables": {"GREETING": "hello", "EMPTY": "", "UNI": "é✓"}},
        EphemeralStorage={"Size": 2048}, Architectures=["arm64"], PackageType="Zip")
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    expected = {
        "FunctionName": name, "FunctionArn": arn(name), "Runtime": "python3.11", "Role": role,
        "Handler": "app.handler", "Description": "all the fields", "Timeout": 42,
        "MemorySize": 1536, "Environment": {"Variables": {"GREETING": "hello", "EMPTY": "",
                                                          "UNI": "é✓"}},
        "EphemeralStorage": {"Size": 2048}, "Architectures": ["arm64"], "PackageType": "Zip",
        "CodeSha256": code_sha256(data), "CodeSize": len(data), "Version": "$LATEST",
        "State": "Active", "LastUpdateStatus": "Successful",
    }
    assert strip(created) | expected == strip(created)
    assert TIMESTAMP_RE.match(created["LastModified"])
    assert re.fullmatch(r"[0-9a-f-]{36}", created["RevisionId"])

    configuration = strip(lambda_client.get_function_configuration(FunctionName=name))
    assert configuration == strip(created)
    function = lambda_client.get_function(FunctionName=name)
    assert function["Configuration"] == strip(created)
    assert function["Code"]["RepositoryType"] == "S3"
    listed = [f for page in lambda_client.get_paginator("list_functions").paginate()
              for f in page["Functions"] if f["FunctionName"] == name]
    assert listed == [as_listed(created)]
    assert "State" not in listed[0] and "LastUpdateStatus" not in listed[0]
    lambda_client.delete_function(FunctionName=name)


def test_create_function_defaults(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    config = lambda_client.get_function_configuration(FunctionName=name)
    assert config["Timeout"] == 3
    assert config["MemorySize"] == 128
    assert config["EphemeralStorage"] == {"Size": 512}
    assert config["Architectures"] == ["x86_64"]
    assert config["PackageType"] == "Zip"
    assert config["Description"] == ""
    assert config["Version"] == "$LATEST"
    assert config["Environment"].get("Variables", {}) == {}
    assert invoke_json(lambda_client, name, {"k": 1}) == {"event": {"k": 1}, "tag": "v1"}
    lambda_client.delete_function(FunctionName=name)


@pytest.mark.parametrize("files", [
    {"app.py": ECHO},
    {"app.py": ECHO, "data.bin": os.urandom(200_000)},
    {"app.py": ECHO, "pkg/a/b/c.py": "# deep\n", "README": "x" * 10_000},
])
def test_code_sha256_size_and_download_are_exact(lambda_client: Any, kiln_server: KilnServer,
                                                 files: dict[str, str | bytes]) -> None:
    data = make_zip(files)
    name = unique_name("sha")
    created = lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": data})
    assert created["CodeSha256"] == code_sha256(data)
    assert created["CodeSize"] == len(data)
    location = lambda_client.get_function(FunctionName=name)["Code"]["Location"]
    assert location.startswith(kiln_server.url)
    with urllib.request.urlopen(location, timeout=30) as response:
        assert response.status == 200
        assert response.read() == data
    # The unpacked code is what the function runs.
    root = kiln_server.data_dir / "code" / "tasks" / hashlib.sha256(data).hexdigest()
    for path, content in files.items():
        stored = (root / path).read_bytes()
        assert stored == (content.encode() if isinstance(content, str) else content)
    lambda_client.delete_function(FunctionName=name)


def test_download_url_for_unknown_code_is_not_found(kiln_server: KilnServer) -> None:
    for sha in ("0" * 64, "abc", "..%2F..%2Fkiln.sqlite3"):
        response = httpx.get(f"{kiln_server.url}/kiln/v1/code/{sha}.zip")
        assert response.status_code == 404


# -- function identifiers in paths ------------------------------------------------------------

def test_full_partial_and_percent_encoded_arns_are_accepted(lambda_client: Any,
                                                           kiln_server: KilnServer) -> None:
    name = create_python_function(lambda_client, ECHO)
    forms = [name, arn(name), f"{ACCOUNT}:function:{name}", f"{name}:$LATEST",
             f"{arn(name)}:$LATEST", f"{ACCOUNT}:function:{name}:$LATEST"]
    for identifier in forms:
        config = lambda_client.get_function_configuration(FunctionName=identifier)
        assert config["FunctionName"] == name, identifier
        assert lambda_client.get_function(FunctionName=identifier)["Configuration"][
            "FunctionArn"] == arn(name)
        assert invoke_json(lambda_client, identifier, {"via": identifier})["event"] == {
            "via": identifier}
    updated = lambda_client.update_function_configuration(
        FunctionName=f"{ACCOUNT}:function:{name}", Description="by partial ARN")
    assert updated["Description"] == "by partial ARN"
    updated = lambda_client.update_function_code(
        FunctionName=arn(name), ZipFile=make_zip({"app.py": ECHO.replace("v1", "v2")}))
    assert invoke_json(lambda_client, arn(name))["tag"] == "v2"

    # What botocore sends on the wire: the ARN percent-encoded in one path segment.
    for identifier in (arn(name), f"{ACCOUNT}:function:{name}", f"{arn(name)}:$LATEST"):
        quoted = urllib.parse.quote(identifier, safe="")
        assert "%3A" in quoted
        response = httpx.get(f"{kiln_server.url}/2015-03-31/functions/{quoted}/configuration")
        assert response.status_code == 200, response.text
        assert response.json()["FunctionArn"] == arn(name)
        response = httpx.get(f"{kiln_server.url}/2015-03-31/functions/{quoted}")
        assert response.status_code == 200
        assert response.json()["Configuration"]["FunctionName"] == name
    # Qualifier as a query parameter, agreeing with the path or alone.
    config = lambda_client.get_function_configuration(FunctionName=name, Qualifier="$LATEST")
    assert config["Version"] == "$LATEST"
    lambda_client.delete_function(FunctionName=arn(name))
    with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
        lambda_client.get_function(FunctionName=name)


def test_create_function_by_arn(lambda_client: Any) -> None:
    """CreateFunction's FunctionName may be a full or partial ARN, as in AWS."""
    for make_identifier in (arn, lambda name: f"{ACCOUNT}:function:{name}"):
        name = unique_name("byarn")
        created = lambda_client.create_function(
            FunctionName=make_identifier(name), Runtime="python3.11", Role=ROLE,
            Handler="app.handler", Code={"ZipFile": make_zip({"app.py": ECHO})})
        assert created["FunctionName"] == name
        assert created["FunctionArn"] == arn(name)
        assert invoke_json(lambda_client, name)["tag"] == "v1"
        lambda_client.delete_function(FunctionName=name)


# -- ListFunctions ----------------------------------------------------------------------------

def test_list_functions_pagination(lambda_client: Any) -> None:
    prefix = unique_name("page")
    data = make_zip({"app.py": ECHO})
    mine = [f"{prefix}-{i:02d}" for i in range(7)]
    for name in mine:
        lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                      Handler="app.handler", Code={"ZipFile": data})
    try:
        # Marker / MaxItems by hand: no page over MaxItems, no duplicates, nothing missed.
        seen: list[str] = []
        pages = 0
        marker: str | None = None
        while True:
            kwargs: dict[str, Any] = {"MaxItems": 3}
            if marker:
                kwargs["Marker"] = marker
            page = lambda_client.list_functions(**kwargs)
            pages += 1
            assert len(page["Functions"]) <= 3
            seen.extend(f["FunctionName"] for f in page["Functions"])
            marker = page.get("NextMarker")
            if not marker:
                break
            assert len(page["Functions"]) == 3
        assert len(seen) == len(set(seen))
        assert set(mine) <= set(seen)
        assert pages >= 3
        assert [n for n in seen if n.startswith(prefix)] == mine  # stable order

        # The boto3 paginator with a page size, and with a total cap.
        paginator = lambda_client.get_paginator("list_functions")
        by_pages = [f["FunctionName"] for p in paginator.paginate(
            PaginationConfig={"PageSize": 2}) for f in p["Functions"]]
        assert by_pages == seen
        capped = paginator.paginate(PaginationConfig={"MaxItems": 4, "PageSize": 3})
        result = capped.build_full_result()
        assert [f["FunctionName"] for f in result["Functions"]] == seen[:4]
        assert "NextToken" in result
        rest = paginator.paginate(PaginationConfig={"StartingToken": result["NextToken"],
                                                    "PageSize": 3}).build_full_result()
        assert [f["FunctionName"] for f in rest["Functions"]] == seen[4:]

        # Every listed entry is the full configuration.
        listed = {f["FunctionName"]: f for p in paginator.paginate() for f in p["Functions"]}
        assert as_listed(lambda_client.get_function_configuration(
            FunctionName=mine[0])) == listed[mine[0]]
    finally:
        for name in mine:
            lambda_client.delete_function(FunctionName=name)
    assert not set(mine) & set(all_function_names(lambda_client))


def test_list_functions_returns_at_most_50_per_page(lambda_client: Any) -> None:
    prefix = unique_name("many")
    data = make_zip({"app.py": ECHO})
    mine = [f"{prefix}-{i:02d}" for i in range(51)]
    for name in mine:
        lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                      Handler="app.handler", Code={"ZipFile": data})
    try:
        page = lambda_client.list_functions(MaxItems=1000)
        assert len(page["Functions"]) == 50
        assert "NextMarker" in page
        assert set(mine) <= set(all_function_names(lambda_client))
    finally:
        for name in mine:
            lambda_client.delete_function(FunctionName=name)


# -- UpdateFunctionCode -----------------------------------------------------------------------

def test_update_function_code(lambda_client: Any, kiln_server: KilnServer) -> None:
    first = make_zip({"app.py": ECHO})
    name = unique_name("code")
    created = lambda_client.create_function(
        FunctionName=name, Runtime="python3.11", Role=ROLE, Handler="app.handler",
        Code={"ZipFile": first}, Description="kept", Timeout=7,
        Environment={"Variables": {"KEEP": "me"}})
    assert invoke_json(lambda_client, name)["tag"] == "v1"  # a warm environment on v1
    first_dir = hashlib.sha256(first).hexdigest()
    assert first_dir in task_dirs(kiln_server)

    second = make_zip({"app.py": ECHO.replace("v1", "v2"), "extra.txt": "more"})
    updated = lambda_client.update_function_code(FunctionName=name, ZipFile=second,
                                                 Architectures=["arm64"])
    assert updated["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert updated["CodeSha256"] == code_sha256(second)
    assert updated["CodeSize"] == len(second)
    assert updated["Architectures"] == ["arm64"]
    assert updated["RevisionId"] != created["RevisionId"]
    assert updated["LastModified"] >= created["LastModified"]
    assert updated["LastUpdateStatus"] == "Successful"
    for key in ("Description", "Timeout", "Environment", "Handler", "Runtime", "Role",
                "MemorySize", "FunctionArn"):
        assert updated[key] == created[key], key
    assert strip(lambda_client.get_function_configuration(FunctionName=name)) == strip(updated)
    # The new code runs at once: warm environments on the old code were retired.
    assert invoke_json(lambda_client, name)["tag"] == "v2"
    location = lambda_client.get_function(FunctionName=name)["Code"]["Location"]
    with urllib.request.urlopen(location, timeout=30) as response:
        assert response.read() == second
    # Code nobody uses any more is gone; the new code is there.
    assert first_dir not in task_dirs(kiln_server)
    assert hashlib.sha256(second).hexdigest() in task_dirs(kiln_server)

    # Updating to identical code is fine and keeps it.
    again = lambda_client.update_function_code(FunctionName=name, ZipFile=second)
    assert again["CodeSha256"] == code_sha256(second)
    assert hashlib.sha256(second).hexdigest() in task_dirs(kiln_server)
    assert invoke_json(lambda_client, name)["tag"] == "v2"
    lambda_client.delete_function(FunctionName=name)
    assert hashlib.sha256(second).hexdigest() not in task_dirs(kiln_server)


def test_update_function_code_dry_run_changes_nothing(lambda_client: Any,
                                                      kiln_server: KilnServer) -> None:
    name = create_python_function(lambda_client, ECHO)
    before = strip(lambda_client.get_function_configuration(FunctionName=name))
    dirs = task_dirs(kiln_server)
    candidate = make_zip({"app.py": ECHO.replace("v1", "dry")})
    answer = lambda_client.update_function_code(FunctionName=name, ZipFile=candidate,
                                                DryRun=True)
    assert answer["CodeSha256"] == code_sha256(candidate)
    assert answer["CodeSize"] == len(candidate)
    assert strip(lambda_client.get_function_configuration(FunctionName=name)) == before
    assert task_dirs(kiln_server) == dirs
    assert invoke_json(lambda_client, name)["tag"] == "v1"
    with pytest.raises(lambda_client.exceptions.InvalidParameterValueException):
        lambda_client.update_function_code(FunctionName=name, ZipFile=b"not a zip", DryRun=True)
    lambda_client.delete_function(FunctionName=name)


def test_functions_sharing_code_keep_it_until_the_last_one_goes(
        lambda_client: Any, kiln_server: KilnServer) -> None:
    data = make_zip({"app.py": ECHO, "shared.txt": unique_name()})
    names = [unique_name("share") for _ in range(2)]
    for name in names:
        lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                      Handler="app.handler", Code={"ZipFile": data})
    sha_dir = hashlib.sha256(data).hexdigest()
    lambda_client.update_function_code(FunctionName=names[0],
                                       ZipFile=make_zip({"app.py": ECHO + "# other\n"}))
    assert sha_dir in task_dirs(kiln_server)
    assert invoke_json(lambda_client, names[1])["tag"] == "v1"
    lambda_client.delete_function(FunctionName=names[1])
    assert sha_dir not in task_dirs(kiln_server)
    lambda_client.delete_function(FunctionName=names[0])


# -- UpdateFunctionConfiguration --------------------------------------------------------------

def test_update_function_configuration(lambda_client: Any) -> None:
    source = ECHO + (
        "\ndef other(event, context):\n"
        "    return {'env': os.environ.get('COLOR'), 'memory': context.memory_limit_in_mb,\n"
        "            'remaining_ok': 0 < context.get_remaining_time_in_millis() <= 61000}\n")
    name = create_python_function(lambda_client, source,
                                  Environment={"Variables": {"COLOR": "red"}})
    created = lambda_client.get_function_configuration(FunctionName=name)
    assert invoke_json(lambda_client, name)["tag"] == "v1"
    role = "arn:aws:iam::000000000000:role/another"
    updated = lambda_client.update_function_configuration(
        FunctionName=name, Handler="app.other", Role=role, Timeout=61, MemorySize=256,
        Description="changed", Environment={"Variables": {"COLOR": "blue"}},
        EphemeralStorage={"Size": 1024}, Runtime="python3.11")
    changed = {"Handler": "app.other", "Role": role, "Timeout": 61, "MemorySize": 256,
               "Description": "changed", "Environment": {"Variables": {"COLOR": "blue"}},
               "EphemeralStorage": {"Size": 1024}}
    assert {k: updated[k] for k in changed} == changed
    for key in ("CodeSha256", "CodeSize", "Runtime", "FunctionArn", "Architectures",
                "PackageType", "Version"):
        assert updated[key] == created[key], key
    assert updated["RevisionId"] != created["RevisionId"]
    assert strip(lambda_client.get_function_configuration(FunctionName=name)) == strip(updated)
    # The running function sees the new configuration (old environments retired).
    # memory_limit_in_mb is a string in the AWS Python runtime (awslambdaric) too.
    assert invoke_json(lambda_client, name) == {"env": "blue", "memory": "256",
                                                "remaining_ok": True}

    # A partial update changes only what it names; an empty Variables map clears them.
    partial = lambda_client.update_function_configuration(FunctionName=name, Timeout=5)
    assert partial["Timeout"] == 5
    assert partial["Handler"] == "app.other"
    assert partial["Environment"] == {"Variables": {"COLOR": "blue"}}
    cleared = lambda_client.update_function_configuration(
        FunctionName=name, Environment={"Variables": {}})
    assert cleared["Environment"].get("Variables", {}) == {}
    assert invoke_json(lambda_client, name)["env"] is None
    lambda_client.delete_function(FunctionName=name)


def test_revision_id_optimistic_locking(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    revision = lambda_client.get_function(FunctionName=name)["Configuration"]["RevisionId"]
    first = lambda_client.update_function_configuration(FunctionName=name, Timeout=10,
                                                         RevisionId=revision)
    assert first["Timeout"] == 10
    # The same (now stale) revision is refused for configuration and code.
    with pytest.raises(lambda_client.exceptions.PreconditionFailedException) as caught:
        lambda_client.update_function_configuration(FunctionName=name, Timeout=20,
                                                    RevisionId=revision)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert caught.value.response["Error"]["Code"] == "PreconditionFailedException"
    assert "Revision Id" in caught.value.response["Error"]["Message"]
    with pytest.raises(lambda_client.exceptions.PreconditionFailedException):
        lambda_client.update_function_code(FunctionName=name, RevisionId=revision,
                                           ZipFile=make_zip({"app.py": ECHO + "#\n"}))
    after = lambda_client.get_function_configuration(FunctionName=name)
    assert strip(after) == strip(first)
    # The current revision works, for code too, and moves the revision on.
    second = lambda_client.update_function_code(
        FunctionName=name, RevisionId=first["RevisionId"],
        ZipFile=make_zip({"app.py": ECHO.replace("v1", "v3")}))
    assert second["RevisionId"] not in (revision, first["RevisionId"])
    assert invoke_json(lambda_client, name)["tag"] == "v3"
    lambda_client.delete_function(FunctionName=name)


def test_concurrent_creates_of_one_name_yield_one_function(kiln_server: KilnServer,
                                                           lambda_client: Any) -> None:
    name = unique_name("race")
    zips = [make_zip({"app.py": ECHO, "who.txt": str(i)}) for i in range(6)]

    def create(data: bytes) -> str:
        client = kiln_server.client()
        try:
            client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                   Handler="app.handler", Code={"ZipFile": data})
        except client.exceptions.ResourceConflictException:
            return "conflict"
        return code_sha256(data)

    with ThreadPoolExecutor(len(zips)) as pool:
        outcomes = list(pool.map(create, zips))
    winners = [o for o in outcomes if o != "conflict"]
    assert len(winners) == 1, outcomes
    config = lambda_client.get_function_configuration(FunctionName=name)
    assert config["CodeSha256"] == winners[0]
    lambda_client.delete_function(FunctionName=name)
    # The losers stored no code; once the winner is deleted nothing of any of them is left.
    dirs = task_dirs(kiln_server)
    assert not {hashlib.sha256(z).hexdigest() for z in zips} & dirs


def test_concurrent_updates_with_one_revision_let_exactly_one_through(
        kiln_server: KilnServer, lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    revision = lambda_client.get_function_configuration(FunctionName=name)["RevisionId"]

    def update(timeout: int) -> str:
        client = kiln_server.client()
        try:
            client.update_function_configuration(FunctionName=name, Timeout=timeout,
                                                 RevisionId=revision)
        except client.exceptions.PreconditionFailedException:
            return "stale"
        return str(timeout)

    with ThreadPoolExecutor(6) as pool:
        outcomes = list(pool.map(update, range(10, 16)))
    winners = [o for o in outcomes if o != "stale"]
    assert len(winners) == 1, outcomes
    config = lambda_client.get_function_configuration(FunctionName=name)
    assert config["Timeout"] == int(winners[0])
    lambda_client.delete_function(FunctionName=name)


# -- DeleteFunction ---------------------------------------------------------------------------

def test_delete_function(lambda_client: Any, kiln_server: KilnServer) -> None:
    data = make_zip({"app.py": ECHO, "unique.txt": unique_name()})
    name = unique_name("delete")
    lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": data})
    assert invoke_json(lambda_client, name)["tag"] == "v1"
    location = lambda_client.get_function(FunctionName=name)["Code"]["Location"]
    deleted = lambda_client.delete_function(FunctionName=name)
    assert deleted["ResponseMetadata"]["HTTPStatusCode"] == 204
    for call in (lambda_client.get_function, lambda_client.get_function_configuration,
                 lambda_client.delete_function, lambda_client.invoke):
        with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
            call(FunctionName=name)
    assert name not in all_function_names(lambda_client)
    assert hashlib.sha256(data).hexdigest() not in task_dirs(kiln_server)
    assert httpx.get(location).status_code == 404
    # The name is free again.
    lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": data})
    assert invoke_json(lambda_client, name)["tag"] == "v1"
    lambda_client.delete_function(FunctionName=name)


# -- GetAccountSettings -----------------------------------------------------------------------

def test_get_account_settings(lambda_client: Any) -> None:
    before = lambda_client.get_account_settings()
    limit = before["AccountLimit"]
    assert limit["CodeSizeUnzipped"] == 262_144_000
    assert limit["CodeSizeZipped"] == 52_428_800
    assert limit["ConcurrentExecutions"] >= 1
    assert 0 < limit["UnreservedConcurrentExecutions"] <= limit["ConcurrentExecutions"]
    assert limit["TotalCodeSize"] > 0
    usage = before["AccountUsage"]
    data = make_zip({"app.py": ECHO, "pad.bin": os.urandom(5000)})
    name = unique_name("acct")
    lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                  Handler="app.handler", Code={"ZipFile": data})
    during = lambda_client.get_account_settings()["AccountUsage"]
    assert during["FunctionCount"] == usage["FunctionCount"] + 1
    assert during["TotalCodeSize"] == usage["TotalCodeSize"] + len(data)
    lambda_client.delete_function(FunctionName=name)
    assert lambda_client.get_account_settings()["AccountUsage"] == usage


# -- waiters ----------------------------------------------------------------------------------

def test_waiters(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO)
    fast = {"Delay": 1, "MaxAttempts": 3}
    lambda_client.get_waiter("function_exists").wait(FunctionName=name, WaiterConfig=fast)
    lambda_client.get_waiter("function_active_v2").wait(FunctionName=name, WaiterConfig=fast)
    lambda_client.get_waiter("function_active").wait(FunctionName=name, WaiterConfig=fast)
    lambda_client.update_function_code(FunctionName=name,
                                       ZipFile=make_zip({"app.py": ECHO + "#\n"}))
    lambda_client.get_waiter("function_updated_v2").wait(FunctionName=name, WaiterConfig=fast)
    lambda_client.update_function_configuration(FunctionName=name, MemorySize=512)
    lambda_client.get_waiter("function_updated").wait(FunctionName=name, WaiterConfig=fast)
    lambda_client.delete_function(FunctionName=name)
    with pytest.raises(WaiterError) as caught:
        lambda_client.get_waiter("function_exists").wait(
            FunctionName=name, WaiterConfig={"Delay": 0, "MaxAttempts": 2})
    assert caught.value.last_response["Error"]["Code"] == "ResourceNotFoundException"
    with pytest.raises(WaiterError):
        lambda_client.get_waiter("function_active_v2").wait(
            FunctionName=name, WaiterConfig={"Delay": 0, "MaxAttempts": 1})


def test_function_exists_waiter_polls_until_created(kiln_server: KilnServer,
                                                    lambda_client: Any) -> None:
    """The waiter sees ResourceNotFoundException first, then the function once it exists."""
    name = unique_name("wait")
    waiting_client = kiln_server.client()
    calls: list[int] = []

    def after_get_function(http_response: Any, **_kwargs: Any) -> None:
        calls.append(http_response.status_code)
        if len(calls) == 1:
            create_python_function(lambda_client, ECHO, name=name)

    waiting_client.meta.events.register("after-call.lambda.GetFunction", after_get_function)
    waiting_client.get_waiter("function_exists").wait(
        FunctionName=name, WaiterConfig={"Delay": 0, "MaxAttempts": 5})
    assert calls == [404, 200]
    lambda_client.delete_function(FunctionName=name)


def test_names_are_case_sensitive_and_exactly_matched(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, ECHO, name=unique_name("Case"))
    for other in (name.lower(), name.upper(), name + "x", name[:-1]):
        with pytest.raises(lambda_client.exceptions.ResourceNotFoundException):
            lambda_client.get_function(FunctionName=other)
    lambda_client.delete_function(FunctionName=name)


def test_state_survives_a_restart(tmp_path: Path) -> None:
    """Functions, their code and configuration live in the data dir, not in the process."""
    server = start_server(tmp_path / "data")
    try:
        client = server.client()
        data = make_zip({"app.py": ECHO})
        name = create_python_function(client, ECHO, Description="persisted", Timeout=9)
        before = strip(client.get_function_configuration(FunctionName=name))
    finally:
        server.stop()
    assert "Traceback" not in server.output()
    server = start_server(tmp_path / "data")
    try:
        client = server.client()
        assert strip(client.get_function_configuration(FunctionName=name)) == before
        assert before["CodeSha256"] == code_sha256(data)
        assert invoke_json(client, name)["tag"] == "v1"
        location = client.get_function(FunctionName=name)["Code"]["Location"]
        with urllib.request.urlopen(location, timeout=30) as response:
            assert response.read() == data
    finally:
        server.stop()
