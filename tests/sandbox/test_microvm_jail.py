"""The microvm backend with jailed monitors (as Firecracker's jailer runs it): a cold boot, its
snapshot, a restore from it, each answering through the Runtime API; the engine runs as the
jail's unprivileged user, and nothing is left after the environments are destroyed."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from kiln.runtime.runtimes import BOOTSTRAP_DIR
from kiln.sandbox.microvm import JAIL_UID, MicrovmBackend, MicrovmSandbox, can_jail
from kiln.sandbox.types import SandboxSpec
from tests.conftest import REPO
from tests.e2e.test_microvm import CACHE
from tests.sandbox.conftest import invoke_once

pytestmark = pytest.mark.skipif(not can_jail(), reason="jailed monitors need root")

HANDLER = "import os\nprint('init in the jail')\n\ndef handler(event, context):\n" \
          "    print('event', event)\n    return {'pid': os.getpid(), 'event': event}\n"


@pytest.fixture
def workdir() -> Iterator[Path]:
    """Outside /tmp: the jail mounts its own /tmp over whatever is bound there."""
    subprocess.run([str(REPO / "scripts" / "ensure-qemu")], check=True)
    subprocess.run([sys.executable, "-m", "kiln.cli", "microvm", "build-image", "--data-dir",
                    str(CACHE)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    path = CACHE / f"jail-{uuid.uuid4().hex[:8]}"
    (path / "code" / "c0de").mkdir(parents=True)
    (path / "code" / "c0de" / "app.py").write_text(HANDLER)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def engine_uids(sandbox: MicrovmSandbox) -> set[int]:
    """Real uids of the processes under ``sandbox``'s monitor (the jailed monitor, QEMU)."""
    uids, todo = set(), [sandbox.monitor_pid]
    while todo:
        pid = todo.pop()
        try:
            todo += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
            if pid != sandbox.monitor_pid:  # the waiter outside the jail stays root
                uids.add(int(Path(f"/proc/{pid}/status").read_text().split("Uid:")[1].split()[0]))
        except OSError:
            continue
    return uids


async def invoke(sandbox: MicrovmSandbox, payload: bytes) -> bytes:
    api, result = await invoke_once(sandbox, payload, timeout=60)
    sandbox.drain_output()
    api.close()
    assert result.error_type is None, result.body
    return result.body


async def test_jailed_boot_snapshot_and_restore(workdir: Path) -> None:
    backend = MicrovmBackend(workdir / "sandboxes", images=CACHE / "microvm" / "images",
                             jail=True)
    task_root = workdir / "code" / "c0de"
    outputs: list[list[bytes]] = [[], []]

    def spec(index: int) -> SandboxSpec:
        return SandboxSpec(
            env_id=uuid.uuid4().hex, task_root=task_root, on_output=outputs[index].append,
            argv=[sys.executable, "-s", "-u", str(BOOTSTRAP_DIR / "python_bootstrap.py")],
            env={"_HANDLER": "app.handler", "LAMBDA_TASK_ROOT": str(task_root),
                 "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11", "PATH": "/usr/bin:/bin",
                 "AWS_LAMBDA_FUNCTION_NAME": "jail", "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
                 "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "128"})

    try:
        cold = await backend.create(spec(0))
        body = await invoke(cold, b'{"n": 1}')
        assert b'"event": {"n": 1}' in body
        assert b"init in the jail" in b"".join(outputs[0])
        assert engine_uids(cold) == {JAIL_UID}
        assert len(backend.snapshots) == 1  # taken when the runtime first asked for work

        restored = await backend.create(spec(1))
        again = await invoke(restored, b'{"n": 2}')
        assert b'"event": {"n": 2}' in again
        assert again.split(b'"pid": ')[1][:3] == body.split(b'"pid": ')[1][:3]  # the snapshot
        assert b"event {'n': 2}" in b"".join(outputs[1])
        directories = [cold.dir, restored.dir]
    finally:
        await backend.close()
    assert not any(d.exists() for d in directories)
    assert not list((workdir / "sandboxes" / "microvm" / "vms").iterdir())
