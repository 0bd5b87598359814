"""The channel protocol with both ends in one process (a socketpair for the virtio-serial port),
the host end being the monitor's VsockHost: what a real guest rarely exercises."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kiln.vmm import mux
from kiln.vmm.mmds import Mmds
from kiln.vmm.vsock import VsockHost


@dataclass
class Pair:
    host: VsockHost
    guest: mux.Mux
    uds: str
    mmds: Mmds


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    host_end, guest_end = socket.socketpair()
    uds = str(tmp_path / "v.sock")
    mmds = Mmds()
    host = VsockHost(mmds, uds)
    await host.start()
    host.attach(*await asyncio.open_connection(sock=host_end))
    reader, writer = await asyncio.open_connection(sock=guest_end)
    guest = mux.Mux(reader, writer, mux.GUEST_SIDE)
    task = asyncio.ensure_future(guest.run())
    yield Pair(host, guest, uds, mmds)
    task.cancel()
    await host.close()
    writer.close()


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1 << 16):
        writer.write(data)
        await writer.drain()


async def _connect(uds: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(uds)
    writer.write(f"CONNECT {port}\n".encode())
    assert (await reader.readline()).startswith(b"OK ")
    return reader, writer


async def test_large_transfer_in_frames(pair: Pair) -> None:
    guest, uds = pair.guest, pair.uds
    guest.listen(52, _echo)
    reader, writer = await _connect(uds, 52)
    blob = bytes(range(256)) * 4096  # 1 MiB: many frames
    writer.write(blob)
    assert await reader.readexactly(len(blob)) == blob
    writer.close()


async def test_data_right_after_accept_keeps_its_order(pair: Pair) -> None:
    """The guest speaks first; the host client still reads ``OK`` before the data."""
    guest, uds = pair.guest, pair.uds

    async def greeter(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"banner\n")
        await writer.drain()
        await reader.read()

    guest.listen(53, greeter)
    reader, writer = await asyncio.open_unix_connection(uds)
    writer.write(b"CONNECT 53\n")
    assert (await reader.readline()).startswith(b"OK ")
    assert await reader.readline() == b"banner\n"
    writer.close()


async def test_close_travels_both_ways(pair: Pair) -> None:
    guest, uds = pair.guest, pair.uds
    closed = asyncio.Event()

    async def one_line(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readline()
        writer.write(b"bye\n")
        await writer.drain()  # then the handler returns: the connection closes

    async def until_eof(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()
        closed.set()

    guest.listen(54, one_line)
    guest.listen(55, until_eof)
    reader, writer = await _connect(uds, 54)
    writer.write(b"hi\n")
    assert await reader.read() == b"bye\n"  # guest closed: host sees EOF
    writer.close()
    _reader, writer = await _connect(uds, 55)
    writer.close()
    await asyncio.wait_for(closed.wait(), 10)  # host closed: guest sees EOF


async def test_new_channel_drops_the_old_ones_connections(pair: Pair) -> None:
    pair.guest.listen(56, _echo)
    reader, writer = await _connect(pair.uds, 56)
    host_end, guest_end = socket.socketpair()
    pair.host.attach(*await asyncio.open_connection(sock=host_end))
    assert await asyncio.wait_for(reader.read(), 10) == b""
    writer.close()
    guest_end.close()


async def test_reset_drops_the_peers_connections() -> None:
    one, two = socket.socketpair()
    host = mux.Mux(*await asyncio.open_connection(sock=one), mux.HOST_SIDE)
    guest = mux.Mux(*await asyncio.open_connection(sock=two), mux.GUEST_SIDE)
    ended = asyncio.Event()

    async def until_eof(reader: asyncio.StreamReader, _writer: asyncio.StreamWriter) -> None:
        await reader.read()
        ended.set()

    guest.listen(57, until_eof)
    tasks = [asyncio.ensure_future(host.run()), asyncio.ensure_future(guest.run())]
    _reader, writer = await host.connect(57)
    host.reset()
    await asyncio.wait_for(ended.wait(), 10)
    writer.close()
    for task in tasks:
        task.cancel()
    host.close()
    guest.close()


async def test_guest_connects_to_host_and_mmds(pair: Pair) -> None:
    guest, uds = pair.guest, pair.uds
    server = await asyncio.start_unix_server(_echo, f"{uds}_9001")
    try:
        reader, writer = await guest.connect(9001)
        writer.write(b"ping")
        assert await reader.readexactly(4) == b"ping"
        writer.close()
        with pytest.raises(ConnectionRefusedError):
            await guest.connect(9002)
        pair.mmds.put(b'{"a": {"b": "c"}}')
        assert await mux.mmds_get(guest, "/a/b") == '"c"'
    finally:
        server.close()
