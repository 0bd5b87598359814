"""Kiln's Python runtime started as a fork of the zygote looks to the function like a freshly
exec'd interpreter: same argv, sys.path, flags and environment; its own random sequence; none
of the launcher's modules.  Variables a fork cannot honour send it the ``execve`` way."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kiln.config import Settings
from kiln.invoke.service import InvokeRequest
from kiln.server import Kiln
from tests.conftest import ROLE, make_zip

pytestmark = pytest.mark.usefixtures("isolation_features")

INTROSPECT = """
import os, random, sys

def handler(event, context):
    return {"argv": sys.argv, "path": sys.path,
            "flags": [sys.flags.no_user_site, sys.flags.dont_write_bytecode],
            "forked": "-c" in sys.orig_argv, "random": random.random(),
            "kiln": sorted(m for m in sys.modules if m.split(".")[0] == "kiln"),
            "env": {k: os.environ.get(k) for k in ("PYTHONPATH", "MY_VAR", "_HANDLER")},
            "environ": open("/proc/self/environ", "rb").read().count(b"MY_VAR=on")}
"""


@pytest.fixture
async def kiln(tmp_path: Path) -> AsyncIterator[Kiln]:
    app = Kiln(Settings.from_env(environ={}, data_dir=tmp_path))
    await app.start()
    yield app
    await app.stop()


async def cold(kiln: Kiln, name: str, variables: dict[str, str]) -> dict[str, Any]:
    record = kiln.functions.create({
        "FunctionName": name, "Runtime": "python3.11", "Role": ROLE, "Handler": "app.handler",
        "Environment": {"Variables": {"MY_VAR": "on", "PYTHONPATH": "/opt/extra", **variables}},
        "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": INTROSPECT})).decode()},
    })
    outcome = await kiln.invoker.invoke(record, InvokeRequest(payload=b"{}",
                                                              invoked_arn=record.arn))
    assert outcome.result.error_type is None, outcome.result.body
    return dict(json.loads(outcome.result.body))


async def test_a_forked_runtime_is_a_fresh_interpreter(kiln: Kiln) -> None:
    forked = [await cold(kiln, f"z{i}", {}) for i in range(2)]
    executed = await cold(kiln, "x", {"PYTHONDONTWRITEBYTECODE": "1"})
    assert [f["forked"] for f in forked] == [True, True] and executed["forked"] is False
    assert executed["flags"] == [1, 1]  # the variable was honoured: it needs an execve
    for seen in (*forked, executed):
        assert seen["argv"] == executed["argv"] and seen["argv"][0].endswith(
            "/python_bootstrap.py")
        assert seen["path"] == executed["path"]
        assert seen["path"][0] == "/var/task" and seen["path"][2] == "/opt/extra"
        assert seen["flags"][0] == 1
        assert seen["kiln"] == []
        assert seen["env"] == {"PYTHONPATH": "/opt/extra", "MY_VAR": "on",
                               "_HANDLER": "app.handler"}
        assert seen["environ"] == 1  # /proc/self/environ shows the runtime's environment
    assert forked[0]["random"] != forked[1]["random"]  # re-seeded in every environment
