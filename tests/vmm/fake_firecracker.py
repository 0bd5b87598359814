"""A stand-in for the ``firecracker`` binary (none is installable here), to test Kiln's host side
of the Firecracker engine: ``fake_firecracker.py --api-sock PATH --id ID``.

Its API checks what Kiln sends as Firecracker does (the rules and messages Kiln's requests
meet), records each request to ``$FAKE_FC_LOG`` (if set), and its vsock device behaves like
Firecracker's on its Unix sockets: ``PUT /vsock`` binds ``uds_path`` (refused if the file
exists); a host connection there writes ``CONNECT <port>\\n`` and reads ``OK <n>\\n`` once the
guest accepts (bytes sent before stay queued), or is closed if no guest program listens; a guest
connection to host port ``P`` is a connection to ``<uds_path>_P``, refused when nobody listens.
``SendCtrlAltDel`` makes it exit, as a guest reboot ends Firecracker.  ``InstanceStart`` refuses
a kernel that is no ELF file, as x86_64 Firecracker before its bzImage support does.

The "guest" is Kiln's real guest agent, running in this process on that vsock device (a moment
after ``InstanceStart``, as a booting guest's agent is), with its runtime as a child.  Run as
root, the process first gets a mount and network namespace of its own, so the guest has a
``/var/task`` (a tmpfs) and a loopback of its own for the agent's ``127.0.0.1:9001``.  What it
cannot be: a VM.  Snapshots are files naming the configuration; a restored guest is a fresh
agent (no runtime carries over), so restores test the host's side only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import socketserver
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from http.server import BaseHTTPRequestHandler
from typing import Any

from kiln.vmm.mmds import merge_patch
from kiln.vmm.mux import run_handler

StreamHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
#: How long the fake guest takes to "boot" before its agent listens.
BOOT_SECONDS = 0.2


class GuestChannel:
    """The guest's side of Firecracker's vsock: what ``kiln.vmm.guest.channel`` gives the agent
    over AF_VSOCK, here on the device's Unix sockets."""

    def __init__(self, uds_path: str) -> None:
        self.uds_path = uds_path
        self.ports: dict[int, StreamHandler] = {}

    def listen(self, port: int, handler: StreamHandler) -> None:
        self.ports[port] = handler

    async def connect(self, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        try:
            return await asyncio.open_unix_connection(f"{self.uds_path}_{port}")
        except OSError as exc:  # Firecracker answers the guest with a RST
            raise ConnectionRefusedError(f"port {port} refused") from exc


class VsockDevice:
    """The host's side: ``uds_path`` and its ``CONNECT``/``OK`` handshake."""

    def __init__(self, uds_path: str) -> None:
        self.channel = GuestChannel(uds_path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(uds_path)  # no unlink first: Firecracker's bind fails on a file
        self.listener.listen(64)
        self.local_port = 1 << 30
        self.tasks: set[asyncio.Future[Any]] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_unix_server(self._host, sock=self.listener)

    async def _host(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        words = (await reader.readline()).decode(errors="replace").split()
        handler = self.channel.ports.get(int(words[1])) if (
            len(words) == 2 and words[0].lower() == "connect" and words[1].isdigit()) else None
        if handler is None:
            writer.close()
            return
        guest_end, device_end = socket.socketpair()
        guest_reader, guest_writer = await asyncio.open_connection(sock=guest_end)
        self._spawn(run_handler(handler, guest_reader, guest_writer))
        device_reader, device_writer = await asyncio.open_connection(sock=device_end)
        self.local_port += 1
        writer.write(f"OK {self.local_port}\n".encode())
        await asyncio.gather(_pump(reader, device_writer), _pump(device_reader, writer))
        writer.close()
        device_writer.close()

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def run_guest(device: VsockDevice) -> None:
    """Kiln's guest agent on ``device``, as the image's /init starts it."""
    from kiln.vmm.guest import agent

    await asyncio.sleep(BOOT_SECONDS)
    guest = agent.Agent(device.channel)
    asyncio.get_running_loop().add_signal_handler(signal.SIGCHLD, guest.reap)
    device.channel.listen(agent.CONTROL_PORT, guest.on_control)
    await asyncio.start_server(guest.on_runtime, "127.0.0.1", agent.RUNTIME_API_PORT)


class FakeVm:
    def __init__(self, vm_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.vm_id = vm_id
        self.loop = loop
        self.state = "Not started"
        self.touched = False
        self.config: dict[str, Any] = {"drives": []}
        self.mmds: dict[str, Any] | None = None
        self.device: VsockDevice | None = None
        self.guest: Any = None
        self.rebooting = False

    def call(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` on the device's event loop (this is the API thread) and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def boot(self, device: VsockDevice) -> None:
        """The guest boots while the API goes on (InstanceStart returns at once)."""
        self.guest = asyncio.run_coroutine_threadsafe(run_guest(device), self.loop)

    def handle(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        """(status, JSON answer or None); a fault is ``(400, message)``."""
        if method == "GET":
            if path == "/":
                return 200, {"app_name": "Firecracker", "id": self.vm_id, "state": self.state,
                             "vmm_version": "1.16.0"}
            if path == "/mmds":
                return 200, self.mmds if self.mmds is not None else {}
            if path == "/vm/config":
                return 200, self.config
        elif method == "PUT" and path == "/snapshot/load":
            return self.load(body)
        elif method == "PUT" and path == "/snapshot/create":
            if self.state != "Paused":
                return 400, "Cannot create a snapshot of a microVM that is not paused."
            write_snapshot(body["snapshot_path"], self.config)
            with open(body["mem_file_path"], "wb") as f:
                f.write(b"\0" * 4096)
            return 204, None
        elif method == "PATCH" and path == "/vm":
            if self.state == "Not started":
                return 400, "The requested operation is not supported before starting the microVM."
            self.state = "Paused" if body["state"] == "Paused" else "Running"
            return 204, None
        elif method == "PUT" and path == "/actions":
            return self.action(body["action_type"])
        elif method in ("PUT", "PATCH") and path == "/mmds":
            if not isinstance(body, dict):
                return 400, "The MMDS contents must be a JSON object."
            self.mmds = body if method == "PUT" else merge_patch(self.mmds or {}, body)
            return 204, None
        elif method == "PUT":
            if self.state != "Not started":
                return 400, "The requested operation is not supported after starting the microVM."
            self.touched = True
            return self.configure(path, body)
        return 400, f"fake: {method} {path}"

    def configure(self, path: str, body: dict[str, Any]) -> tuple[int, Any]:
        if path == "/machine-config":
            self.config["machine-config"] = body
        elif path == "/boot-source":
            for key in ("kernel_image_path", "initrd_path"):
                if key in body and not os.access(body[key], os.R_OK):
                    return 400, f"The {key.split('_')[0]} file cannot be opened: No such file"
            self.config["boot-source"] = body
        elif path.startswith("/drives/"):
            if body.get("drive_id") != path.removeprefix("/drives/"):
                return 400, "The id from the path does not match the id from the body!"
            if not os.access(body["path_on_host"], os.R_OK):
                return 400, "Unable to create the block device: No such file or directory"
            self.config["drives"].append(body)
        elif path == "/vsock":
            try:
                device = VsockDevice(body["uds_path"])
            except OSError as exc:
                return 400, f"Cannot create backend for vsock device: UnixBind({exc})"
            self.call(device.start())
            self.device = device
            self.config["vsock"] = body
        elif path.startswith("/network-interfaces/"):
            if body.get("iface_id") != path.removeprefix("/network-interfaces/"):
                return 400, "The id from the path does not match the id from the body!"
            self.config.setdefault("network-interfaces", []).append(body)
        elif path == "/mmds/config":
            if not body.get("network_interfaces"):
                return 400, ("The list of network interface IDs that allow forwarding MMDS "
                             "requests is empty.")
            known = {i["iface_id"] for i in self.config.get("network-interfaces", [])}
            if not set(body["network_interfaces"]) <= known:
                return 400, ("The list of network interface IDs provided contains at least one "
                             "ID that does not correspond to any existing network interface.")
            self.config["mmds-config"] = {"version": "V1", **body}
        else:
            return 400, f"fake: PUT {path}"
        return 204, None

    def action(self, action: str) -> tuple[int, Any]:
        if action == "SendCtrlAltDel":
            self.rebooting = True  # once answered
            return 204, None
        if action != "InstanceStart" or self.state != "Not started":
            return 400, f"fake: action {action} in state {self.state}"
        if "boot-source" not in self.config:
            return 400, "Cannot start microvm without kernel configuration."
        with open(self.config["boot-source"]["kernel_image_path"], "rb") as kernel:
            if kernel.read(4) != b"\x7fELF":
                return 400, ("Cannot load kernel due to invalid memory configuration or invalid "
                             "kernel image: Kernel Loader: failed to load ELF kernel image: "
                             "Invalid Elf magic number")
        if self.device is not None:
            self.boot(self.device)
        self.state = "Running"
        return 204, None

    def load(self, body: dict[str, Any]) -> tuple[int, Any]:
        if self.state != "Not started" or self.touched:
            return 400, ("Loading a microVM snapshot not allowed after configuring boot-specific "
                         "resources.")
        with open(body["snapshot_path"]) as f:
            self.config = json.load(f)["fake-firecracker"]
        os.close(os.open(body["mem_backend"]["backend_path"], os.O_RDONLY))
        vsock = self.config.get("vsock")
        if vsock is not None:
            vsock["uds_path"] = body.get("vsock_override", vsock)["uds_path"]
            self.device = VsockDevice(vsock["uds_path"])
            self.call(self.device.start())
            self.boot(self.device)
        self.state = "Running" if body.get("resume_vm") else "Paused"
        return 204, None


def write_snapshot(path: str, config: dict[str, Any]) -> None:
    """This fake's snapshot state file: the configuration it restores."""
    with open(path, "w") as f:
        json.dump({"fake-firecracker": config}, f)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    vm: FakeVm

    def _answer(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if "FAKE_FC_LOG" in os.environ:
            with open(os.environ["FAKE_FC_LOG"], "a") as log:
                log.write(json.dumps([self.command, self.path, raw.decode()]) + "\n")
        try:
            status, value = self.vm.handle(self.command, self.path, json.loads(raw or b"null"))
        except (ValueError, KeyError, TypeError, OSError) as exc:
            status, value = 400, f"An error occurred when deserializing the request: {exc!r}"
        if status == 400:
            value = {"fault_message": value}
        self._send(status, value)
        if self.vm.rebooting:
            self.wfile.flush()
            os._exit(0)

    do_GET = do_PUT = do_PATCH = _answer

    def _send(self, status: int, value: object) -> None:
        self.send_response(status)
        data = b"" if value is None else json.dumps(value).encode()
        if data:
            self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:  # the client may be gone once it has read an empty answer's headers
            self.wfile.write(data)

    def address_string(self) -> str:
        return "unix"

    def log_message(self, *_args: object) -> None:
        pass


def guest_namespaces() -> None:
    """As root: a mount namespace with a tmpfs /var (the guest's /var/task) and a network
    namespace with its own loopback, before any thread starts."""
    from kiln.sandbox import _namespaces as ns

    ns.unshare(ns.CLONE_NEWNS | ns.CLONE_NEWNET)
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    ns.mount("fake-guest", "/var", "tmpfs", 0, "mode=755")
    os.mkdir("/var/task")
    ns.loopback_up()


def _keep_the_clock(_clock: int, _ns: int) -> int:
    return 0


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--api-sock", required=True)
    parser.add_argument("--id", required=True)
    options = parser.parse_args()
    if os.geteuid() == 0:
        guest_namespaces()
    # The guest's agent sets the clock from the host's hello; this guest's clock is the host's.
    time.clock_settime_ns = _keep_the_clock
    loop = asyncio.new_event_loop()
    Handler.vm = FakeVm(options.id, loop)
    socketserver.UnixStreamServer.allow_reuse_address = True
    server = socketserver.UnixStreamServer(options.api_sock, Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    loop.run_forever()


if __name__ == "__main__":
    main()
