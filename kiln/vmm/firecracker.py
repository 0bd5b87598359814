"""The Firecracker engine: the operator's real ``firecracker`` binary, its API passed through.

The monitor starts ``firecracker --api-sock <work dir>/firecracker.sock --id ID`` (its serial
console is the monitor's stdout) and relays every request unchanged; only ``GET /`` gains Kiln's
``kiln`` field (engine and accelerator).  The monitor exits when Firecracker does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from kiln.vmm.client import VmmClient
from kiln.vmm.http import HttpRequest, HttpResponse
from kiln.vmm.jail import die_with_monitor

START_TIMEOUT = 10.0
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "host"}


class FirecrackerProxy:
    def __init__(self, vm_id: str, binary: str, workdir: str) -> None:
        self.vm_id = vm_id
        self.binary = binary
        self.socket = f"{workdir}/firecracker.sock"
        self.client = VmmClient(self.socket)
        self.process: asyncio.subprocess.Process | None = None
        self.done = asyncio.Event()
        self.exit_code = 0

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
        except OSError as exc:
            fault = json.dumps({"fault_message": f"firecracker is unreachable: {exc}"})
            return HttpResponse(500, fault.encode(), "application/json")
        if request.method == "GET" and request.path == "/" and status == 200:
            info = json.loads(body)
            info["kiln"] = {"engine": "firecracker", "accelerator": "kvm"}
            body = json.dumps(info).encode()
        return HttpResponse(status, body, reply_headers.get("content-type", "application/json"))

    async def close(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()
