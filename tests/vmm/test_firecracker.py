"""With a firecracker binary configured, the monitor passes Firecracker's API through to it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.vmm.conftest import Spec, start


async def test_api_passed_through(tmp_path: Path, spec: Spec,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "requests.log"
    binary = tmp_path / "firecracker"
    binary.write_text(f"#!/bin/sh\nexec {sys.executable} "
                      f"{Path(__file__).with_name('fake_firecracker.py')} \"$@\"\n")
    binary.chmod(0o755)
    monkeypatch.setenv("FAKE_FC_LOG", str(log))
    m = start(tmp_path, "fc", spec, "--firecracker-bin", str(binary))
    try:
        info = await m.client.get("/")
        assert info["app_name"] == "Firecracker" and info["id"] == "fc"
        assert info["kiln"] == {"engine": "firecracker", "accelerator": "kvm"}
        await m.client.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
        assert await m.client.fault("PUT", "/boot-source",
                                    {"kernel_image_path": "/k"}) == "fake: PUT /boot-source"
        requests = [json.loads(line) for line in log.read_text().splitlines()]
        assert ["PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 256}'] in requests
        await m.client.put("/actions", {"action_type": "SendCtrlAltDel"})
        assert wait_for(lambda: m.process.poll() is not None, 10)
        assert m.process.returncode == 0
    finally:
        m.stop()
