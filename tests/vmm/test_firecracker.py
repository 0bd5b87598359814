"""The Firecracker engine against tests/vmm/fake_firecracker.py (no firecracker binary can be
installed here): the API passed through; the guest's MMDS, which the monitor serves where
Firecracker's vsock forwards the guest's connections (``<uds_path>_<MMDS_PORT>``); a jailed
monitor running an operator's binary; and a microvm sandbox end to end, Kiln's real guest agent
on the fake's vsock device."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path

import pytest

from kiln.sandbox.microvm import MicrovmBackend
from kiln.sandbox.types import SandboxSpec
from kiln.vmm import mux
from kiln.vmm.client import read_response
from kiln.vmm.guest import image
from tests.conftest import wait_for
from tests.vmm.conftest import Spec, start
from tests.vmm.fake_firecracker import GuestChannel, write_snapshot

FAKE = Path(__file__).with_name("fake_firecracker.py")
MMDS_SOCK = f"v.sock_{mux.MMDS_PORT}"


@pytest.fixture
def binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fake as an operator's ``firecracker`` binary; its request log is ``requests.log``."""
    path = tmp_path / "firecracker"
    path.write_text(f"#!/bin/sh\nexec {sys.executable} {FAKE} \"$@\"\n")
    path.chmod(0o755)
    monkeypatch.setenv("FAKE_FC_LOG", str(tmp_path / "requests.log"))
    return path


def requests(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "requests.log").read_text().splitlines()]


async def test_api_passed_through(tmp_path: Path, spec: Spec, binary: Path) -> None:
    m = start(tmp_path, "fc", spec, "--firecracker-bin", str(binary))
    try:
        info = await m.client.get("/")
        assert info["app_name"] == "Firecracker" and info["id"] == "fc"
        assert info["kiln"] == {"engine": "firecracker", "accelerator": "kvm"}
        await m.client.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
        assert "kernel file cannot be opened" in await m.client.fault(
            "PUT", "/boot-source", {"kernel_image_path": str(tmp_path / "absent")})
        assert ["PUT", "/machine-config", '{"vcpu_count": 2, "mem_size_mib": 256}'] in \
            requests(tmp_path)
        await m.client.put("/actions", {"action_type": "SendCtrlAltDel"})
        assert wait_for(lambda: m.process.poll() is not None, 10)
        assert m.process.returncode == 0
    finally:
        m.stop()


async def test_the_guest_reads_the_mmds_over_vsock(tmp_path: Path, spec: Spec,
                                                   binary: Path) -> None:
    m = start(tmp_path, "fc", spec, "--firecracker-bin", str(binary))
    uds = str(tmp_path / "v.sock")
    guest = GuestChannel(uds)  # connects to <uds>_<port>, as Firecracker forwards the guest's
    try:
        await m.client.put("/vsock", {"guest_cid": 3, "uds_path": uds})
        await m.client.put("/mmds", {"kiln": {"runtime": {"argv": ["/a"]}}})
        assert json.loads(await mux.mmds_get(guest, "/kiln/runtime")) == {"argv": ["/a"]}
        await m.client.patch("/mmds", {"kiln": {"runtime": {"argv": ["/b"], "cwd": "/"}}})
        assert await m.client.get("/mmds") == {"kiln": {"runtime": {"argv": ["/b"], "cwd": "/"}}}
        assert await mux.mmds_get(guest, "/kiln/runtime/cwd") == '"/"'  # what was PUT, exactly
        with pytest.raises(OSError, match="404"):
            await mux.mmds_get(guest, "/kiln/nothing")
        with pytest.raises(ConnectionRefusedError):  # no host program on another port
            await guest.connect(9001)
        # Firecracker's MMDS config names network interfaces, which Kiln's VMs have none of...
        assert "does not correspond to any existing network interface" in await m.client.fault(
            "PUT", "/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"})
        assert await _untokened_get(uds) == 200
        # ... but where one has them, the version it sets holds over vsock too (V2: sessions).
        await m.client.put("/network-interfaces/eth0", {"iface_id": "eth0",
                                                        "host_dev_name": "tap0"})
        await m.client.put("/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"})
        assert await _untokened_get(uds) == 401
        assert json.loads(await mux.mmds_get(guest, "/kiln/runtime/argv")) == ["/b"]
    finally:
        m.stop()
    assert not os.path.exists(f"{uds}_{mux.MMDS_PORT}")  # the monitor removed its socket


async def _untokened_get(uds: str) -> int:
    """The status of a guest's MMDS GET without a session token."""
    reader, writer = await asyncio.open_unix_connection(f"{uds}_{mux.MMDS_PORT}")
    try:
        writer.write(b"GET /kiln HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n")
        status, _headers, _body = await read_response(reader)
        return status
    finally:
        writer.close()


async def test_a_snapshot_loaded_without_vsock_override_keeps_its_mmds(
        tmp_path: Path, spec: Spec, binary: Path) -> None:
    """Without ``vsock_override`` the restored device keeps the snapshot's ``uds_path``, which
    the monitor learns from ``GET /vm/config``."""
    uds = str(tmp_path / "v.sock")
    write_snapshot(str(tmp_path / "state"), {"drives": [], "vsock": {"guest_cid": 3,
                                                                     "uds_path": uds}})
    (tmp_path / "mem").write_bytes(b"")
    m = start(tmp_path, "fc", spec, "--firecracker-bin", str(binary))
    try:
        await m.client.put("/snapshot/load", {
            "snapshot_path": str(tmp_path / "state"),
            "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "mem")}})
        await m.client.put("/mmds", {"restored": "yes"})
        assert await mux.mmds_get(GuestChannel(uds), "/restored") == '"yes"'
    finally:
        m.stop()


async def test_a_jailed_monitor_runs_a_binary_from_outside_the_system_directories(
        tmp_path: Path, spec: Spec) -> None:
    """The monitor binds the binary into its jail; the MMDS socket beside the jail's vsock
    belongs to the jail's user, whom Firecracker runs as."""
    binary = tmp_path / "opt" / "firecracker"
    binary.parent.mkdir()
    binary.write_text(f"#!{sys.executable}\n{FAKE.read_text()}")
    binary.chmod(0o755)
    m = start(tmp_path, "fcjail", spec, "--jail", "--firecracker-bin", str(binary))
    run = tmp_path / "fcjail" / "root" / "run"
    try:
        assert (await m.client.get("/"))["app_name"] == "Firecracker"
        await m.client.put("/vsock", {"guest_cid": 3, "uds_path": "/run/v.sock"})
        assert (run / MMDS_SOCK).stat().st_uid == (run / "v.sock").stat().st_uid == 65534
        await m.client.put("/mmds", {"jailed": "yes"})
        assert await mux.mmds_get(GuestChannel(str(run / "v.sock")), "/jailed") == '"yes"'
    finally:
        m.stop()


# -- a microvm sandbox through Firecracker's API -----------------------------------------------

RUNTIME = """
import os, socket
print("INIT in", os.getcwd(), flush=True)
host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
api = socket.create_connection((host, int(port)))
api.sendall(b"GET /2018-06-01/runtime/invocation/next HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n")
reply = b""
while not reply.endswith(b"}"):
    reply += api.recv(65536)
print("event", reply.partition(b"\\r\\n\\r\\n")[2].decode(), flush=True)
"""
EVENT = b'{"n": 1}'


def fake_image(images: Path) -> None:
    """A current guest image whose files only need to be readable (Firecracker opens them),
    but for the kernels' first bytes: the fake loads only an ELF."""
    built = images / "0123"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({"files": image._file_digests()}))
    for name in ("vmlinuz", "initrd.cpio", "rootfs.ext4"):
        (built / name).write_bytes(b"\0" * 512)
    (built / "vmlinux").write_bytes(b"\x7fELF" + b"\0" * 508)
    (images / "current").symlink_to("0123")


async def _runtime_api(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """The host's RuntimeApi, reduced to answering one /next."""
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"GET /2018-06-01/runtime/invocation/next "), head
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(EVENT), EVENT))
    await writer.drain()
    writer.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="the fake guest needs namespaces of its own")
async def test_a_microvm_sandbox_boots_and_restores_through_firecracker(
        tmp_path: Path, binary: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KILN_VMM_FIRECRACKER", str(binary))
    fake_image(tmp_path / "images")
    code = tmp_path / "code"
    code.mkdir()
    (code / "handler.txt").write_text("the function's code")
    backend = MicrovmBackend(tmp_path / "sandboxes", images=tmp_path / "images", jail=False)
    output: list[bytes] = []
    spec = SandboxSpec(env_id="a" * 32, argv=[sys.executable, "-c", RUNTIME],
                       env={"PATH": os.environ["PATH"]}, task_root=code,
                       on_output=output.append)
    try:
        cold = await backend.create(spec)
        server = await asyncio.start_unix_server(_runtime_api, sock=cold.listener)
        await asyncio.wait_for(cold.start(), 60)  # the agent read argv from the MMDS, ran it
        assert await asyncio.wait_for(cold.wait(), 60) == 0
        cold.drain_output()
        assert b"".join(output) == b"INIT in /var/task\nevent " + EVENT + b"\n"
        server.close()
        assert not cold.restored and len(backend.snapshots) == 1  # taken at its first /next

        warm = await backend.create(SandboxSpec(**{**vars(spec), "env_id": "b" * 32}))
        await asyncio.wait_for(warm.start(), 60)  # the control port, on the restored vsock
        assert warm.restored
        vm_dir = str(warm.dir)
    finally:
        await backend.close()
    sent = requests(tmp_path)
    boot = next(json.loads(body) for _m, path, body in sent if path == "/boot-source")
    assert Path(boot["kernel_image_path"]).name == "vmlinux"  # the ELF, which Firecracker loads
    assert not [r for r in sent if r[1] == "/mmds/config"]
    mmds = [json.loads(body) for method, path, body in sent if (method, path) == ("PUT", "/mmds")]
    assert mmds[0]["kiln"]["runtime"]["cwd"] == "/var/task"
    load = next(json.loads(body) for _m, path, body in sent if path == "/snapshot/load")
    assert load["vsock_override"] == {"uds_path": f"{vm_dir}/v.sock"}
    assert load["mem_backend"]["backend_type"] == "File"
