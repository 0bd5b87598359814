"""``Backends``: the default backend made at once, others when first asked for, leftovers of
every kind swept at startup, every backend made closed at the end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.sandbox import Backends, BackendUnavailable
from kiln.sandbox.fake import FakeBackend, FakeRuntime, FakeSandbox
from kiln.sandbox.isolated import IsolatedBackend
from kiln.sandbox.types import SandboxSpec
from kiln.sandbox.unisolated import UnisolatedBackend
from tests.conftest import wait_for
from tests.sandbox.conftest import run


def test_other_backends_are_made_when_first_asked_for(tmp_path: Path) -> None:
    backends = Backends("unisolated", str(tmp_path / "sandboxes"))
    default = backends.get("unisolated")
    assert isinstance(default, UnisolatedBackend) and backends.get("unisolated") is default
    images = tmp_path / "microvm" / "images"
    for _ in range(2):  # not kept as failed: asked again, it tries again
        with pytest.raises(BackendUnavailable, match=(
                f"^the microvm sandbox backend is not available on this host: no microVM "
                f"guest image in {images}: run 'kiln microvm build-image' first$")):
            backends.get("microvm")
    with pytest.raises(BackendUnavailable, match="unknown sandbox backend 'vm'"):
        backends.get("vm")
    run(backends.close)
    with pytest.raises(BackendUnavailable, match="shutting down"):
        backends.get("process")


def test_close_closes_every_backend_made(tmp_path: Path) -> None:
    made = {"process": FakeBackend({}), "microvm": FakeBackend({})}
    backends = Backends("process", str(tmp_path), made=made)
    spec = SandboxSpec("e", [], {"_HANDLER": "h"}, tmp_path)

    async def use_and_close() -> list[FakeSandbox]:
        sandboxes = []
        for backend in made.values():
            backend.programs["h"] = _exits
            sandboxes.append(await backend.create(spec))
        await backends.close()
        return sandboxes

    assert [s.destroyed for s in run(use_and_close)] == [True, True]


async def _exits(_runtime: FakeRuntime) -> int:
    return 0


def test_leftover_microvms_are_swept_without_an_image(tmp_path: Path) -> None:
    root = tmp_path / "sandboxes"
    vm = root / "microvm" / "vms" / "0123456789abcdef"
    vm.mkdir(parents=True)
    (vm / "api.sock").touch()
    (vm / "monitor.json").write_text(json.dumps({"pid": 0, "api_sock": str(vm / "api.sock")}))
    Backends("unisolated", str(root))
    assert not vm.exists()


def test_a_killed_process_backend_is_swept(tmp_path: Path, isolation_features: None) -> None:
    """A server killed with its process backend running left the launcher's pid file: the
    backend is made at startup even when another is the default, and its sweep runs."""
    root = tmp_path / "sandboxes"
    root.mkdir()
    launcher = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                 "kiln.sandbox._launcher"])
    cmdline = Path(f"/proc/{launcher.pid}/cmdline")
    try:
        # Popen returns once exec began; the new command line shows a moment later.
        assert wait_for(lambda: b"kiln.sandbox._launcher" in cmdline.read_bytes())
        (root / "launcher.pid").write_text(str(launcher.pid))
        backends = Backends("unisolated", str(root))
        assert launcher.wait(timeout=10) == -9  # the sweep's SIGKILL
        process = backends.get("process")
        assert isinstance(process, IsolatedBackend) and process.swept[0] == (
            f"launcher {launcher.pid}")
        run(backends.close)
        assert not (root / "launcher.pid").exists()
    finally:
        launcher.kill()
        launcher.wait()
