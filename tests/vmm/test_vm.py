"""A real guest under the QEMU engine: boot (once per session), vsock both ways with
Firecracker's handshake, the MMDS from inside, pause/resume, snapshots restored into new
monitors, SendCtrlAltDel ending the VM, and what is refused once it runs."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from kiln.vmm.qemu import MemoryImageServer, seal_memory_image
from tests.conftest import process_gone, wait_for
from tests.vmm.conftest import Snapshot, Spec, ask, restore, restored, start, wait_guest


def test_cold_boot_took_place(snapshot: Snapshot) -> None:
    assert snapshot.boot_seconds > 0
    assert os.path.getsize(snapshot.mem) > 1 << 20


async def test_restored_vm_answers_over_vsock(tmp_path: Path, spec: Spec,
                                              snapshot: Snapshot) -> None:
    async with restored(tmp_path, "restored", spec, snapshot) as (m, uds):
        assert (await m.client.get("/"))["state"] == "Running"
        assert await ask(uds, "echo hello from the host") == "hello from the host"
        # Several connections at once, each its own stream.
        answers = await asyncio.gather(*(ask(uds, f"echo {i}") for i in range(5)))
        assert answers == [str(i) for i in range(5)]


async def test_vsock_refusals(tmp_path: Path, spec: Spec, snapshot: Snapshot) -> None:
    async with restored(tmp_path, "refusals", spec, snapshot) as (_, uds):
        # Nobody listens on guest port 4999: Firecracker closes without an answer.
        reader, writer = await asyncio.open_unix_connection(uds)
        writer.write(b"CONNECT 4999\n")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        # A malformed handshake is closed too.
        reader, writer = await asyncio.open_unix_connection(uds)
        writer.write(b"HELLO\n")
        assert await asyncio.wait_for(reader.read(), 30) == b""
        writer.close()
        # Guest-initiated, with no host listener on <uds>_7000: the guest's connect is refused.
        assert (await ask(uds, "host 7000 hi")).startswith("error ConnectionRefusedError")


async def test_guest_initiated_connection_and_mmds(tmp_path: Path, spec: Spec,
                                                   snapshot: Snapshot) -> None:
    m = start(tmp_path, "g2h", spec)
    uds = str(tmp_path / "r.vsock")

    async def host_service(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        writer.write(b"host got " + line)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(host_service, f"{uds}_7000")
    try:
        await restore(m, snapshot, uds)
        await wait_guest(uds, timeout=30)
        assert await ask(uds, "host 7000 ping") == "host got ping"
        # The MMDS (V2 per the snapshot's config; contents are set after restore).
        await m.client.put("/mmds", {"latest": {"meta-data": {"function": "hello"}}})
        assert await ask(uds, "mmds /latest/meta-data/function") == '"hello"'
        await m.client.patch("/mmds", {"latest": {"meta-data": {"function": "bye"}}})
        assert await ask(uds, "mmds /latest/meta-data/function") == '"bye"'
        assert (await ask(uds, "mmds /latest/nothing")).startswith("error OSError: MMDS GET")
    finally:
        server.close()
        m.stop()


async def test_restore_from_a_shared_memory_image(tmp_path: Path, spec: Spec,
                                                  snapshot: Snapshot) -> None:
    """Two VMs restored from one sealed memory image (mapped copy-on-write, nothing copied):
    each runs on its own, the image stays as it was, and neither can be snapshotted."""
    image = seal_memory_image(snapshot.mem)
    deep = tmp_path / ("d" * 100)  # longer than a Unix socket address may be
    deep.mkdir()
    server = MemoryImageServer(image, str(deep / "mem.sock"), asyncio.get_running_loop())
    shared = Snapshot(snapshot.state, str(deep / "mem.sock"), 0)
    monitors = [start(tmp_path, f"shared{i}", spec) for i in range(2)]
    try:
        with pytest.raises(PermissionError):
            os.pwrite(image, b"x", 0)  # sealed: no writer, not even its owner
        before = os.pread(image, 1 << 20, 0)
        for i, m in enumerate(monitors):
            await restore(m, shared, str(tmp_path / f"s{i}.vsock"))
        for i in range(2):
            await wait_guest(str(tmp_path / f"s{i}.vsock"), timeout=30)
            assert await ask(str(tmp_path / f"s{i}.vsock"), f"echo vm {i}") == f"vm {i}"
        assert os.pread(image, 1 << 20, 0) == before
        c = monitors[0].client
        await c.patch("/vm", {"state": "Paused"})
        assert "shared memory image" in await c.fault("PUT", "/snapshot/create", {
            "snapshot_path": str(tmp_path / "s2"), "mem_file_path": str(tmp_path / "m2")})
    finally:
        for m in monitors:
            m.stop()
        server.close()


async def test_pause_resume_snapshot_rules(tmp_path: Path, spec: Spec,
                                           snapshot: Snapshot) -> None:
    m = start(tmp_path, "rules", spec)
    try:
        uds = str(tmp_path / "r.vsock")
        await restore(m, snapshot, uds, resume=False)
        c = m.client
        assert (await c.get("/"))["state"] == "Paused"
        await c.patch("/vm", {"state": "Resumed"})
        assert (await c.get("/"))["state"] == "Running"
        await wait_guest(uds, timeout=30)
        snap = {"snapshot_path": str(tmp_path / "s2"), "mem_file_path": str(tmp_path / "m2")}
        assert "not paused" in await c.fault("PUT", "/snapshot/create", snap)
        after_boot = "not supported after starting the microVM"
        assert after_boot in await c.fault("PUT", "/machine-config",
                                           {"vcpu_count": 1, "mem_size_mib": 256})
        assert after_boot in await c.fault("PUT", "/actions", {"action_type": "InstanceStart"})
        assert after_boot in await c.fault("PUT", "/vsock", {"guest_cid": 3, "uds_path": "/x"})
        assert "not allowed after configuring" in await c.fault("PUT", "/snapshot/load", {
            "snapshot_path": snapshot.state, "mem_file_path": snapshot.mem})
        # A snapshot of the restored VM (paused), then it resumes and keeps serving.
        await c.patch("/vm", {"state": "Paused"})
        assert (await c.get("/"))["state"] == "Paused"
        await c.put("/snapshot/create", snap)
        await c.patch("/vm", {"state": "Resumed"})
        assert await ask(uds, "echo still here") == "still here"
    finally:
        m.stop()
    # The second-generation snapshot restores too (its guest answers).
    async with restored(tmp_path, "gen2", spec,
                        Snapshot(snap["snapshot_path"], snap["mem_file_path"], 0)):
        pass


async def test_ctrl_alt_del_ends_the_vm_and_the_monitor(tmp_path: Path, spec: Spec,
                                                        snapshot: Snapshot) -> None:
    async with restored(tmp_path, "cad", spec, snapshot) as (m, uds):
        await m.client.put("/actions", {"action_type": "SendCtrlAltDel"})
        assert wait_for(lambda: m.process.poll() is not None, 60)
        assert m.process.returncode == 0
        assert not os.path.exists(m.api_sock)
        assert not os.path.exists(uds)


async def test_snapshot_refused_across_accelerators(tmp_path: Path, spec: Spec,
                                                    snapshot: Snapshot) -> None:
    state = Path(snapshot.state).read_bytes()  # a JSON line, then the device state
    other = "kvm" if b'"accelerator": "tcg"' in state else "tcg"
    forged = tmp_path / "forged.json"
    forged.write_bytes(state.replace(b'"accelerator": "tcg"', f'"accelerator": "{other}"'.encode())
                       .replace(b'"accelerator": "kvm"', f'"accelerator": "{other}"'.encode()))
    m = start(tmp_path, "accel", spec)
    try:
        message = await m.client.fault("PUT", "/snapshot/load", {
            "snapshot_path": str(forged), "mem_file_path": snapshot.mem})
        assert f"taken with {other}" in message
        assert (await m.client.get("/"))["state"] == "Not started"
    finally:
        m.stop()


def test_monitor_killed_takes_qemu_with_it(tmp_path: Path, spec: Spec,
                                           snapshot: Snapshot) -> None:
    m = start(tmp_path, "kill9", spec)
    try:
        asyncio.run(restore(m, snapshot, str(tmp_path / "r.vsock")))
        qemu = _children(m.process.pid)
        assert qemu, "QEMU runs as the monitor's child"
        m.process.kill()
        m.process.wait()
        assert wait_for(lambda: all(process_gone(pid) for pid in qemu), 10)
    finally:
        m.stop()


def _children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(entry))
            except (OSError, ValueError):
                continue
    return found
