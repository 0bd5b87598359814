"""The guest agent's channel to the host: AF_VSOCK where the VM has a virtio-vsock device (the
real Firecracker), else :mod:`kiln.vmm.mux` over the virtio-serial port -- one small interface,
with vsock's semantics either way.  Stdlib only (the guest carries a copy).

    channel = await open_channel()                   # AF_VSOCK if vsock_present(), else the mux
    channel.listen(1024, handler)                    # the host: ``CONNECT 1024`` on uds_path
    reader, writer = await channel.connect(9001)     # the host's ``<uds_path>_9001``
    text = await mux.mmds_get(channel, "/kiln/runtime")

Over AF_VSOCK a connection the host resets (the device's TRANSPORT_RESET after a snapshot
restore) ends like an end of file, as the mux's RESET ends it; a connection the host does not
take (Firecracker answers one to an unserved port with a RST) is ConnectionRefusedError, as the
mux's refusal is.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import socket

from kiln.vmm import mux

#: virtio's device id of a vsock device (what the image's /init loads the vsock modules for).
VIRTIO_ID_VSOCK = 0x13
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
#: The errors of an AF_VSOCK connect the peer did not take: no listener (RST), or no answer.
REFUSED = (errno.ECONNREFUSED, errno.ECONNRESET, errno.ETIMEDOUT)


def vsock_present(devices: str = VIRTIO_DEVICES) -> bool:
    """Whether the VM has a virtio-vsock device."""
    with contextlib.suppress(OSError):
        for entry in os.listdir(devices):
            with contextlib.suppress(OSError, ValueError), \
                    open(f"{devices}/{entry}/device") as device:
                if int(device.read().strip(), 16) == VIRTIO_ID_VSOCK:
                    return True
    return False


async def open_channel(devices: str = VIRTIO_DEVICES) -> mux.Channel:
    if vsock_present(devices):
        return VsockChannel()
    return await mux.open_guest_channel()


class VsockChannel:
    """AF_VSOCK: the agent listens on its own ports and connects to the host's (CID 2)."""

    def __init__(self, cid: int = socket.VMADDR_CID_HOST) -> None:
        self.cid = cid
        self._servers: list[asyncio.Task[asyncio.Server]] = []

    def listen(self, port: int, handler: mux.StreamHandler) -> None:
        """Serve connections the host opens to ``port`` (bound now: a connect may come at
        once)."""
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        try:
            sock.bind((socket.VMADDR_CID_ANY, port))
            sock.listen(64)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise
        loop = asyncio.get_running_loop()
        self._servers.append(loop.create_task(loop.create_server(
            lambda: _ResetIsEof(_reader(), lambda r, w: mux.run_handler(handler, r, w)),
            sock=sock)))

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """A connection to the host's ``port``; ConnectionRefusedError if it does not take it."""
        sock = socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, (self.cid, port))
        except OSError as exc:
            sock.close()
            if exc.errno in REFUSED:
                raise ConnectionRefusedError(exc.errno, f"port {port} refused") from exc
            raise
        return await streams(sock)


def _reader() -> asyncio.StreamReader:
    return asyncio.StreamReader(limit=mux.MAX_PAYLOAD * 4)


class _ResetIsEof(asyncio.StreamReaderProtocol):
    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(None)


async def streams(sock: socket.socket) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Reader and writer of a connected stream socket, a reset read as an end of file."""
    loop = asyncio.get_running_loop()
    reader = _reader()
    protocol = _ResetIsEof(reader)
    transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=sock)
    return reader, asyncio.StreamWriter(transport, protocol, reader, loop)
