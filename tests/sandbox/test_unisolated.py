"""The ``unisolated`` backend (plain child processes, for hosts where ``process`` cannot
isolate) still runs functions, and the default says how to get it where it cannot run."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.invoke.service import InvokeRequest
from kiln.sandbox import isolated, make_backend
from kiln.server import Kiln
from tests.conftest import ROLE, make_zip

SOURCE = """
import os, time

def handler(event, context):
    time.sleep(event.get("sleep", 0))
    return {"root": os.environ["LAMBDA_TASK_ROOT"], "uid": os.getuid()}
"""


async def test_unisolated_runs_functions_without_isolation(tmp_path: Path) -> None:
    kiln = Kiln(Settings.from_env(environ={}, data_dir=tmp_path, sandbox_backend="unisolated"))
    await kiln.start()
    try:
        record = kiln.functions.create({
            "FunctionName": "plain", "Runtime": "python3.11", "Role": ROLE,
            "Handler": "app.handler", "Timeout": 1,
            "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": SOURCE})).decode()}})
        outcome = await kiln.invoker.invoke(record, InvokeRequest(payload=b"{}",
                                                                  invoked_arn=record.arn))
        body = json.loads(outcome.result.body)
        # The host's path of the code and the server's own user: nothing is isolated.
        assert Path(body["root"]).is_dir() and body["uid"] == os.getuid()
        outcome = await kiln.invoker.invoke(record, InvokeRequest(payload=b'{"sleep": 5}',
                                                                  invoked_arn=record.arn))
        assert json.loads(outcome.result.body)["errorType"] == "Sandbox.Timedout"
    finally:
        await kiln.stop()


def test_process_backend_names_the_way_out_where_it_cannot_isolate(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_args: object, **_kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", "/sys/fs/cgroup/memory/kiln")

    monkeypatch.setattr(isolated, "IsolatedBackend", refuse)
    with pytest.raises(RuntimeError, match="KILN_SANDBOX_BACKEND=unisolated"):
        make_backend("process", str(tmp_path))
