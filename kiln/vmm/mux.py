"""Stream multiplexing over one virtio-serial port: vsock's semantics where there is no vsock.

Stdlib only and self-contained, because the guest agent carries a copy of this file into the VM.
Both ends run the same :class:`Mux`.  Frames are ``>IBI`` (connection id, kind, payload length)
plus the payload:

``CONNECT`` (payload ``>I`` port)  open a connection to the peer's ``port``
``OK`` / ``CLOSE``                  accept it / refuse or close it (either way, either side)
``DATA``                            bytes of an open connection, in order
``RESET``                           the peer lost every connection (the host sends it whenever it
                                    attaches, e.g. after a snapshot restore, as Firecracker's vsock
                                    sends TRANSPORT_RESET): drop them all

Each connection is a local stream socket whose bytes the mux pumps, so a host Unix-socket client
and a guest program look the same to it.  Connection ids carry the opener's side in the top bit
so both ends can open at once.  A slow reader of one connection delays the others (no per-
connection flow control): connections here carry request/response traffic.

Guest usage::

    mux = await open_guest_channel()                  # /dev/vportNpM named "kiln.vsock"
    mux.listen(5000, handler)                          # handler(reader, writer), like a server
    reader, writer = await mux.connect(9001)           # the host's uds_path + "_9001"
    text = await mmds_get(mux, "/latest/meta-data")    # MMDS, over port MMDS_PORT
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Protocol

HEADER = struct.Struct(">IBI")
PORT = struct.Struct(">I")
CONNECT, OK, DATA, CLOSE, RESET = 1, 2, 3, 4, 5
MAX_PAYLOAD = 65536
#: The port the host serves the MMDS on (169.254.169.254 as a number).
MMDS_PORT = 0xA9FEA9FE
PORT_NAME = "kiln.vsock"
HOST_SIDE, GUEST_SIDE = 0x80000000, 0

#: Gives a connected local socket for a port the peer opened, or None to refuse it.
Acceptor = Callable[[int], Awaitable[socket.socket | None]]
StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class Channel(Protocol):
    """What the guest agent needs of its channel to the host: a :class:`Mux`, or AF_VSOCK
    (:mod:`kiln.vmm.guest.channel`)."""

    def listen(self, port: int, handler: StreamHandler) -> None: ...

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]: ...


class Mux:
    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter | asyncio.WriteTransport,
        side: int,
        acceptor: Acceptor | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._side = side
        self._acceptor = acceptor
        self._listeners: dict[int, StreamHandler] = {}
        self._conns: dict[int, socket.socket] = {}
        self._pumps: dict[int, asyncio.Task[None]] = {}
        self._pending: dict[int, asyncio.Future[bool]] = {}
        self._greetings: dict[int, bytes] = {}
        self._next = 1
        self._tasks: set[asyncio.Task[None]] = set()

    # -- opening ------------------------------------------------------------------------------

    def listen(self, port: int, handler: StreamHandler) -> None:
        """Serve connections the peer opens to ``port`` (guest side)."""
        self._listeners[port] = handler

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """Open a connection to the peer's ``port``; ConnectionRefusedError if it refuses."""
        mine, theirs = socket.socketpair()
        if not await self.open(port, theirs):
            mine.close()
            raise ConnectionRefusedError(f"port {port} refused")
        return await asyncio.open_connection(sock=mine)

    async def open(
        self, port: int, sock: socket.socket, greeting: Callable[[int], bytes] | None = None
    ) -> bool:
        """Open a connection to ``port`` carried by ``sock`` (closed if refused).

        ``greeting(n)`` is written to ``sock`` once the peer accepts, before any of its data.
        """
        conn = self._side | self._next
        self._next = self._next % 0x7FFFFFFF + 1
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending[conn] = waiter
        self._conns[conn] = sock
        if greeting is not None:
            self._greetings[conn] = greeting(conn & 0x7FFFFFFF)
        self._send(conn, CONNECT, PORT.pack(port))
        try:
            accepted = await waiter
        finally:
            self._pending.pop(conn, None)
            self._greetings.pop(conn, None)
        if not accepted:
            self._drop(conn)
            return False
        self._start_pump(conn)
        return True

    def reset(self) -> None:
        """Tell the peer every connection is gone (after attaching to a channel)."""
        self._send(0, RESET)

    def close(self) -> None:
        """Close every connection and the channel."""
        self._drop_all()
        self._writer.close()

    # -- the channel --------------------------------------------------------------------------

    async def run(self) -> None:
        """Read frames until the channel ends; then close every connection."""
        try:
            while True:
                try:
                    header = await self._reader.readexactly(HEADER.size)
                    conn, kind, length = HEADER.unpack(header)
                    if length > MAX_PAYLOAD:
                        raise ValueError(f"frame of {length} bytes")
                    payload = await self._reader.readexactly(length) if length else b""
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                await self._frame(conn, kind, payload)
        finally:
            self._drop_all()

    async def _frame(self, conn: int, kind: int, payload: bytes) -> None:
        if kind == DATA:
            sock = self._conns.get(conn)
            if sock is None or conn in self._pending:
                return
            try:
                await asyncio.get_running_loop().sock_sendall(sock, payload)
            except OSError:
                self._send(conn, CLOSE)
                self._drop(conn)
        elif kind == CONNECT and len(payload) == PORT.size:
            self._spawn(self._accept(conn, PORT.unpack(payload)[0]))
        elif kind == OK and conn in self._pending:
            waiter = self._pending.pop(conn)
            greeting = self._greetings.pop(conn, b"")
            if greeting:
                self._conns[conn].setblocking(False)
                try:
                    self._conns[conn].send(greeting)  # a fresh socket's buffer has room
                except OSError:
                    waiter.set_result(False)
                    return
            waiter.set_result(True)
        elif kind == CLOSE:
            closing = self._pending.pop(conn, None)
            if closing is not None and not closing.done():
                closing.set_result(False)
            else:
                self._drop(conn)
        elif kind == RESET:
            self._drop_all()

    async def _accept(self, conn: int, port: int) -> None:
        sock: socket.socket | None = None
        handler = self._listeners.get(port)
        if handler is not None:
            sock, theirs = socket.socketpair()
            reader, writer = await asyncio.open_connection(sock=theirs)
            self._spawn(run_handler(handler, reader, writer))
        elif self._acceptor is not None:
            sock = await self._acceptor(port)
        if sock is None:
            self._send(conn, CLOSE)
            return
        self._conns[conn] = sock
        self._send(conn, OK)
        self._start_pump(conn)

    def _start_pump(self, conn: int) -> None:
        self._pumps[conn] = asyncio.get_running_loop().create_task(self._pump(conn))

    async def _pump(self, conn: int) -> None:
        """Local socket -> channel, until the socket's end of file."""
        sock = self._conns[conn]
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        try:
            while True:
                data = await loop.sock_recv(sock, MAX_PAYLOAD)
                if not data:
                    break
                self._send(conn, DATA, data)
                if isinstance(self._writer, asyncio.StreamWriter):
                    await self._writer.drain()
        except (OSError, ConnectionError):
            pass
        if self._conns.pop(conn, None) is not None:
            self._send(conn, CLOSE)
            sock.close()

    def _send(self, conn: int, kind: int, payload: bytes = b"") -> None:
        if not self._writer.is_closing():
            self._writer.write(HEADER.pack(conn, kind, len(payload)) + payload)

    def _drop(self, conn: int) -> None:
        sock = self._conns.pop(conn, None)
        pump = self._pumps.pop(conn, None)
        if pump is not None:
            pump.cancel()
        if sock is not None:
            sock.close()

    def _drop_all(self) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_result(False)
        for conn in list(self._conns):
            self._drop(conn)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def run_handler(
    handler: StreamHandler, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """``handler`` on one connection, which is closed after it."""
    try:
        await handler(reader, writer)
    finally:
        writer.close()


# -- guest side -------------------------------------------------------------------------------


def find_port_device(name: str = PORT_NAME, sysfs: str = "/sys/class/virtio-ports") -> str:
    """The ``/dev`` node of the virtio-serial port called ``name`` (no udev needed)."""
    for entry in sorted(os.listdir(sysfs)):
        with contextlib.suppress(OSError), open(f"{sysfs}/{entry}/name") as f:
            if f.read().strip() == name:
                return f"/dev/{entry}"
    raise FileNotFoundError(f"no virtio-serial port named {name}")


async def open_guest_channel(device: str | None = None) -> Mux:
    """Open the channel inside the guest and start its reader (a background task)."""
    path = device or find_port_device()
    loop = asyncio.get_running_loop()
    read_fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    reader = asyncio.StreamReader(limit=MAX_PAYLOAD * 4)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(read_fd, "rb", buffering=0)
    )
    write_fd = os.dup(read_fd)  # a port opens only once (EBUSY)
    transport, _ = await loop.connect_write_pipe(
        asyncio.BaseProtocol, os.fdopen(write_fd, "wb", buffering=0)
    )
    mux = Mux(reader, transport, GUEST_SIDE)
    mux._spawn(mux.run())
    return mux


async def mmds_get(mux: Channel, path: str = "/", token_ttl: int = 60) -> str:
    """GET ``path`` from the MMDS (the V2 session flow; a V1 store ignores the token)."""
    token = await _http(mux, "PUT", "/latest/api/token",
                        {"X-metadata-token-ttl-seconds": str(token_ttl)})
    return await _http(mux, "GET", path, {"X-metadata-token": token, "Accept": "application/json"})


async def _http(mux: Channel, method: str, path: str, headers: dict[str, str]) -> str:
    reader, writer = await mux.connect(MMDS_PORT)
    try:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        writer.write(f"{method} {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{head}"
                     "Content-Length: 0\r\n\r\n".encode())
        status_line = (await reader.readline()).decode()
        length = 0
        while (line := (await reader.readline()).decode().strip()):
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = (await reader.readexactly(length)).decode()
        status = int(status_line.split()[1])
        if status != 200:
            raise OSError(f"MMDS {method} {path}: {status} {body}")
        return body
    finally:
        writer.close()
