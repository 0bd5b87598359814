"""The guest agent's channel choice and its AF_VSOCK streams' reset handling (no VM here:
tests/e2e/test_microvm.py runs the AF_VSOCK channel on the guest kernel's vsock loopback)."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path

import pytest

from kiln.vmm import mux
from kiln.vmm.guest import channel


def virtio_devices(tmp_path: Path, *ids: str) -> str:
    """A /sys/bus/virtio/devices with one device per id (as the kernel writes them)."""
    for index, device_id in enumerate(ids):
        (tmp_path / f"virtio{index}").mkdir()
        (tmp_path / f"virtio{index}" / "device").write_text(f"{device_id}\n")
    return str(tmp_path)


@pytest.mark.parametrize(("ids", "present"), [
    (("0x0002", "0x0003", "0x0013"), True),  # block, console, vsock (Firecracker)
    (("0x0002", "0x0003"), False),           # block, console: QEMU's virtio-serial channel
    ((), False),
])
def test_vsock_is_chosen_when_the_vm_has_a_vsock_device(tmp_path: Path, ids: tuple[str, ...],
                                                        present: bool) -> None:
    assert channel.vsock_present(virtio_devices(tmp_path, *ids)) is present


def test_no_virtio_bus_is_no_vsock(tmp_path: Path) -> None:
    assert channel.vsock_present(str(tmp_path / "absent")) is False


async def test_open_channel_gives_the_vsock_channel_to_the_host(tmp_path: Path) -> None:
    opened = await channel.open_channel(virtio_devices(tmp_path, "0x0013"))
    assert isinstance(opened, channel.VsockChannel) and opened.cid == socket.VMADDR_CID_HOST


async def test_open_channel_without_vsock_looks_for_the_virtio_serial_port(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_port() -> str:
        raise FileNotFoundError("no virtio-serial port named kiln-test")

    monkeypatch.setattr(mux, "find_port_device", no_port)
    with pytest.raises(FileNotFoundError, match="kiln-test"):
        await channel.open_channel(virtio_devices(tmp_path, "0x0003"))


async def test_a_reset_connection_reads_as_an_end_of_file() -> None:
    """A snapshot restore resets every vsock connection; the agent reads that as the mux's
    end of file (a TCP RST stands in for the vsock device's reset)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        ours = socket.create_connection(listener.getsockname())
        theirs, _ = listener.accept()
    reader, writer = await channel.streams(ours)
    theirs.sendall(b"before the reset")
    assert await reader.readexactly(16) == b"before the reset"
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    theirs.close()  # an abortive close: RST
    assert await reader.read() == b""  # not ConnectionResetError
    writer.close()
    await asyncio.sleep(0)
