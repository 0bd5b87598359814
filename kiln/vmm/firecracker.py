"""The Firecracker engine: the operator's real ``firecracker`` binary, its API passed through.

The monitor starts ``firecracker --api-sock <work dir>/firecracker.sock --id ID`` (its serial
console is the monitor's stdout) and relays every request unchanged; only ``GET /`` gains Kiln's
``kiln`` field (engine and accelerator).  The monitor exits when Firecracker does.

The guest's MMDS: Kiln's guests read it over vsock (host port ``MMDS_PORT``), on this engine as on
QEMU's, because Firecracker serves its own MMDS only through a guest network interface, which Kiln
does not configure.  Firecracker forwards a guest's connection to host port ``P`` to the Unix
socket ``<uds_path>_P``; once the vsock device exists (``PUT /vsock``, ``PUT /snapshot/load``) the
monitor serves the MMDS there with :class:`~kiln.vmm.mmds.Mmds`'s guest HTTP, answering from
Firecracker's own store (``GET /mmds``: what was PUT, exactly) in the version ``/mmds/config`` set.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from typing import Any

from kiln.vmm.client import VmmClient
from kiln.vmm.http import HttpRequest, HttpResponse, serve
from kiln.vmm.jail import die_with_monitor
from kiln.vmm.mmds import Mmds
from kiln.vmm.model import DEFAULT_MMDS_IPV4, MmdsConfig
from kiln.vmm.mux import MMDS_PORT
from kiln.vmm.qemu import addressable, listen_unix
from kiln.vmm.vsock import guest_port_path

START_TIMEOUT = 10.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}
#: The requests after which Firecracker's vsock device has a (new) ``uds_path``.
_VSOCK_SETTERS = {"/vsock", "/snapshot/load"}


class FirecrackerProxy:
    def __init__(self, vm_id: str, binary: str, workdir: str) -> None:
        self.vm_id = vm_id
        self.binary = binary
        self.socket = f"{workdir}/firecracker.sock"
        self.client = VmmClient(self.socket)
        self.process: asyncio.subprocess.Process | None = None
        self.done = asyncio.Event()
        self.exit_code = 0
        #: The guest's MMDS sessions (tokens); its data and version are Firecracker's.
        self.mmds = Mmds()
        self._mmds_path: str | None = None
        self._mmds_server: asyncio.Server | None = None

    async def start(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.socket)
        self.process = await asyncio.create_subprocess_exec(
            self.binary, "--api-sock", self.socket, "--id", self.vm_id,
            stdin=asyncio.subprocess.DEVNULL, preexec_fn=die_with_monitor)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_TIMEOUT
        while True:
            if self.process.returncode is not None:
                raise RuntimeError(f"firecracker exited with {self.process.returncode}")
            try:
                await self.client.request("GET", "/")
                break
            except OSError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.005)
        self._watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        assert self.process is not None
        self.exit_code = await self.process.wait()
        self.done.set()

    async def handle(self, request: HttpRequest) -> HttpResponse:
        headers = {k: v for k, v in request.headers.items() if k not in _HOP_BY_HOP}
        try:
            status, reply_headers, body = await self.client.request(
                request.method, request.path, request.body if request.body else None, headers)
            if (status < 300 and request.method == "PUT"
                    and request.path.rstrip("/") in _VSOCK_SETTERS):
                await self._serve_mmds(await self._uds_path(request))
        except OSError as exc:
            fault = json.dumps({"fault_message": f"firecracker is unreachable: {exc}"})
            return HttpResponse(500, fault.encode(), "application/json")
        if request.method == "GET" and request.path == "/" and status == 200:
            info = json.loads(body)
            info["kiln"] = {"engine": "firecracker", "accelerator": "kvm"}
            body = json.dumps(info).encode()
        return HttpResponse(status, body, reply_headers.get("content-type", "application/json"))

    # -- the guest's MMDS, over vsock ------------------------------------------------------------

    async def _uds_path(self, request: HttpRequest) -> str | None:
        """The vsock device's ``uds_path`` after Firecracker accepted ``request``: the one it
        names, else (a snapshot loaded without ``vsock_override``) the restored device's."""
        with contextlib.suppress(ValueError):
            body = json.loads(request.body)
            named = body.get("vsock_override", body) if isinstance(body, dict) else None
            if isinstance(named, dict) and isinstance(named.get("uds_path"), str):
                return str(named["uds_path"])
        vsock = (await self._get("/vm/config")).get("vsock")
        return str(vsock["uds_path"]) if isinstance(vsock, dict) else None

    async def _serve_mmds(self, uds_path: str | None) -> None:
        path = guest_port_path(uds_path, MMDS_PORT) if uds_path else None
        if path == self._mmds_path:
            return
        self._stop_mmds()
        if path is None:
            return
        try:
            with addressable(path) as address:
                listener = listen_unix(address, backlog=16)
        except OSError as exc:  # Firecracker bound uds_path beside it, so hardly ever
            print(f"kiln.vmm: cannot serve the guest's MMDS on {path}: {exc}", file=sys.stderr)
            return
        self._mmds_path = path
        self._mmds_server = await serve(listener, self._guest_mmds)

    def _stop_mmds(self) -> None:
        if self._mmds_server is not None:
            self._mmds_server.close()
            self._mmds_server = None
        if self._mmds_path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self._mmds_path)
            self._mmds_path = None

    async def _guest_mmds(self, request: HttpRequest) -> HttpResponse:
        """One request of the guest's, answered from Firecracker's store and MMDS version."""
        try:
            data = await self._get("/mmds")
            config = (await self._get("/vm/config")).get("mmds-config")
        except OSError:
            return HttpResponse(503, b"The MMDS is unavailable.", "text/plain")
        self.mmds.data = data
        self.mmds.config = _mmds_config(config) if isinstance(config, dict) else None
        return await self.mmds.serve(request)

    async def _get(self, path: str) -> dict[str, Any]:
        """A JSON object Firecracker answers; ``{}`` for an error or anything else (an empty
        store)."""
        status, _headers, body = await self.client.request("GET", path)
        with contextlib.suppress(ValueError):
            value = json.loads(body) if status == 200 else None
            if isinstance(value, dict):
                return value
        return {}

    async def close(self) -> None:
        self._stop_mmds()
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()


def _mmds_config(value: dict[str, Any]) -> MmdsConfig:
    return MmdsConfig(list(value.get("network_interfaces", [])), str(value.get("version", "V1")),
                      str(value.get("ipv4_address", DEFAULT_MMDS_IPV4)),
                      bool(value.get("imds_compat", False)))

