"""The host side of a microVM's vsock, with Firecracker's semantics, over the mux channel.

* Host-initiated: a client connects to the Unix socket ``uds_path`` and writes
  ``CONNECT <port>\\n``; once the guest accepts it reads ``OK <n>\\n`` and the socket carries the
  connection.  A refused connection is closed without a reply, as Firecracker does.
* Guest-initiated to host port ``P``: the monitor connects to ``<uds_path>_P``, where host
  software listens; nobody listening means the guest's connect is refused.
* Port ``MMDS_PORT`` is the MMDS, served by the monitor itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Coroutine
from typing import Any

from kiln.vmm.http import serve
from kiln.vmm.mmds import Mmds
from kiln.vmm.mux import HOST_SIDE, MMDS_PORT, Mux
from kiln.vmm.qemu import listen_unix

MAX_CONNECT_LINE = 32


def guest_port_path(uds_path: str, port: int) -> str:
    """Where a guest's connection to host port ``port`` arrives: Firecracker's
    ``<uds_path>_<port>``, which host software listens on."""
    return f"{uds_path}_{port}"


class VsockHost:
    def __init__(self, mmds: Mmds, uds_path: str | None) -> None:
        self._mmds = mmds
        self.uds_path = uds_path
        self._mux: Mux | None = None
        self._listener: socket.socket | None = None
        self._mmds_listener: socket.socket | None = None
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        """Serve the MMDS (on an abstract socket) and, with vsock configured, ``uds_path``."""
        self._mmds_listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._mmds_listener.bind(f"\0kiln-vmm-mmds-{os.getpid()}-{id(self)}")
        self._mmds_listener.listen(16)
        self._servers.append(await serve(self._mmds_listener, self._mmds.serve))
        if self.uds_path is not None:
            self._listener = listen_unix(self.uds_path, backlog=128)
            self._spawn(self._accept_loop(self._listener))

    def attach(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Use this (freshly connected) channel; the guest is told to drop old connections."""
        if self._mux is not None:
            self._mux.close()
        self._mux = Mux(reader, writer, HOST_SIDE, self._accept_from_guest)
        self._mux.reset()
        self._spawn(self._mux.run())

    async def close(self) -> None:
        if self._mux is not None:
            self._mux.close()
        for task in list(self._tasks):
            task.cancel()
        for server in self._servers:
            server.close()
        for sock in (self._listener, self._mmds_listener):
            if sock is not None:
                sock.close()
        if self.uds_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.uds_path)

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            client, _ = await loop.sock_accept(listener)
            self._spawn(self._host_connect(client))

    async def _host_connect(self, client: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        line = b""
        try:
            # Byte by byte: whatever follows the line belongs to the connection.
            while not line.endswith(b"\n") and len(line) < MAX_CONNECT_LINE:
                byte = await loop.sock_recv(client, 1)
                if not byte:
                    break
                line += byte
        except OSError:
            line = b""
        words = line.decode("ascii", "replace").split()
        if (len(words) != 2 or words[0] != "CONNECT" or not words[1].isdigit()
                or self._mux is None or int(words[1]) >= 1 << 32):
            client.close()
            return
        await self._mux.open(int(words[1]), client, greeting=lambda n: f"OK {n}\n".encode())

    async def _accept_from_guest(self, port: int) -> socket.socket | None:
        if port == MMDS_PORT:
            assert self._mmds_listener is not None
            address = self._mmds_listener.getsockname()
        elif self.uds_path is not None:
            address = guest_port_path(self.uds_path, port)
        else:
            return None
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.get_running_loop().sock_connect(sock, address)
        except OSError:
            sock.close()
            return None
        return sock

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
