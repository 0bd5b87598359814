"""The data plane over the real isolated backend (in-process ``Kiln``): INIT runs with a whole
vCPU and the CPU share proportional to memory applies once it is over; the REPORT line's
``Max Memory Used`` is the environment's cgroup peak."""

from __future__ import annotations

import base64
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.invoke.service import InvokeRequest
from kiln.sandbox._cgroups import CPU_PERIOD_US, MB_PER_VCPU, CgroupV1, CgroupV2
from kiln.sandbox.isolated import IsolatedSandbox
from kiln.server import Kiln
from tests.conftest import ROLE, make_zip

pytestmark = pytest.mark.usefixtures("isolation_features")

ALLOCATES = """
held = []

def handler(event, context):
    held.append(bytearray(event["mb"] * 2**20))  # zero-filled: every page is touched
    return len(held)
"""


@pytest.fixture
async def kiln(tmp_path: Path) -> AsyncIterator[Kiln]:
    # Never frozen while the test looks: freezing also ends INIT's CPU boost.
    settings = Settings.from_env(environ={}, data_dir=tmp_path, freeze_after_seconds=600.0)
    app = Kiln(settings)
    await app.start()
    yield app
    await app.stop()


def cpu_quota(sandbox: IsolatedSandbox) -> int:
    group = sandbox.cgroup
    if isinstance(group, CgroupV1):
        return int((group.dirs["cpu"] / "cpu.cfs_quota_us").read_text())
    assert isinstance(group, CgroupV2)
    return int((group.path / "cpu.max").read_text().split()[0])


async def test_cpu_share_after_init_and_memory_peak_in_report(kiln: Kiln) -> None:
    memory = 256
    record = kiln.functions.create({
        "FunctionName": "alloc", "Runtime": "python3.11", "Role": ROLE,
        "Handler": "app.handler", "MemorySize": memory,
        "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": ALLOCATES})).decode()},
    })
    reports = []
    for mb in (1, 60):
        outcome = await kiln.invoker.invoke(
            record, InvokeRequest(payload=f'{{"mb": {mb}}}'.encode(), invoked_arn=record.arn,
                                  tail=True))
        assert outcome.result.error_type is None, outcome.result.body
        reports.append(base64.b64decode(outcome.log_tail).decode().splitlines()[-1])
        (env,) = kiln.assignment.environments
        assert isinstance(env.sandbox, IsolatedSandbox)
        assert cpu_quota(env.sandbox) == round(CPU_PERIOD_US * memory / MB_PER_VCPU)
    used = [int(re.search(r"Max Memory Used: (\d+) MB", r)[1]) for r in reports]  # type: ignore[index]
    # The interpreter alone, then that plus the 60 MB the handler holds.
    assert 5 <= used[0] < 60 and used[1] >= used[0] + 60, reports
