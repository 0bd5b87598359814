"""Helpers for the sandbox backends' tests: feature checks (skip with a printed reason), a way
to run a small program inside an environment and collect its output, and one invocation through
the real Runtime API."""

from __future__ import annotations

import asyncio
import os
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from kiln.runtime.api import RuntimeApi
from kiln.runtime.types import Invocation, InvocationResult
from kiln.sandbox.types import Sandbox, SandboxSpec

T = TypeVar("T")
PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def _missing_feature() -> str | None:
    if sys.platform != "linux":
        return "isolated backend needs Linux"
    if os.geteuid() != 0:
        return "isolated backend needs root (namespaces, mounts, cgroups)"
    try:
        from kiln.sandbox._cgroups import CgroupTree

        CgroupTree.detect("probe")
    except OSError as exc:
        return f"no usable cgroup hierarchy: {exc}"
    for name in ("mnt", "pid", "net", "ipc", "uts"):
        if not os.path.exists(f"/proc/self/ns/{name}"):
            return f"kernel lacks the {name} namespace"
    return None


MISSING = _missing_feature()


@pytest.fixture
def isolation_features() -> None:
    """Skip (printing why) where the kernel or the user cannot run the isolated backend."""
    if MISSING:
        print(f"SKIP reason: {MISSING}")
        pytest.skip(MISSING)


@pytest.fixture
def sandbox_root(tmp_path: Path) -> Path:
    return tmp_path / "sandboxes"


@pytest.fixture
def task_root(tmp_path: Path) -> Iterator[Path]:
    task = tmp_path / "task"
    task.mkdir()
    (task / "hello.txt").write_text("function code\n")
    os.chmod(tmp_path, 0o755)
    os.chmod(task, 0o755)
    os.chmod(task / "hello.txt", 0o644)
    yield task


def run(coro_fn: Callable[[], Awaitable[T]]) -> T:
    async def main() -> T:
        return await coro_fn()

    return asyncio.run(main())


def spec_for(
    task_root: Path,
    code: str,
    *,
    env_id: str | None = None,
    out: list[bytes] | None = None,
    **kwargs: Any,
) -> SandboxSpec:
    sink = out if out is not None else []
    return SandboxSpec(
        env_id=env_id or f"t-{uuid.uuid4().hex[:8]}",
        argv=[PYTHON, "-S", "-c", code],
        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        task_root=task_root,
        on_output=sink.append,
        **kwargs,
    )


async def run_program(backend: Any, task_root: Path, code: str, **kwargs: Any) -> tuple[int, str]:
    """Create, start and wait for one environment running ``code``; destroy it."""
    out: list[bytes] = []
    sandbox = await backend.create(spec_for(task_root, code, out=out, **kwargs))
    try:
        await sandbox.start()
        rc = await asyncio.wait_for(sandbox.wait(), 30)
        sandbox.drain_output()
    finally:
        await sandbox.destroy()
    return rc, b"".join(out).decode(errors="replace")


async def invoke_once(sandbox: Sandbox, payload: bytes,
                      timeout: float = 10) -> tuple[RuntimeApi, InvocationResult]:
    """Serve the Runtime API on ``sandbox``'s listener, start it and run one invocation of
    ``payload``: the API (the caller closes it) and the result."""
    api = RuntimeApi(sandbox.env_id)
    await api.serve(sandbox.listener)
    await sandbox.start()
    await asyncio.wait_for(api.ready.wait(), timeout)
    invocation = Invocation(uuid.uuid4().hex, payload, int((time.time() + 600) * 1000),
                            "arn:aws:lambda:us-east-1:000000000000:function:t", "Root=1-0")
    api.submit(invocation)
    return api, await asyncio.wait_for(invocation.result, timeout)
