"""Firecracker's REST API over one microVM run by the QEMU engine.

Pre-boot / post-boot rules follow Firecracker: devices and the machine are configured before
``InstanceStart``; ``PATCH /vm`` and ``/snapshot/create`` need a started VM (the latter a paused
one); ``/snapshot/load`` only on a fresh monitor.  When the guest powers off or reboots, the engine
exits and so does the monitor (``done`` is set), as Firecracker's process does.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
from collections.abc import Awaitable, Callable
from typing import Any

from kiln import __version__
from kiln.vmm import model
from kiln.vmm.http import HttpRequest, HttpResponse
from kiln.vmm.mmds import Mmds
from kiln.vmm.model import ApiError, VmConfig
from kiln.vmm.qemu import Incoming, QemuVm
from kiln.vmm.vsock import VsockHost

API_VERSION = "1.17.0"
SNAPSHOT_FORMAT = "kiln-vmm-snapshot/2"
#: The state file starts with a JSON line (the configuration); the device state follows.
MAX_STATE_HEADER = 1 << 20
NOT_STARTED, RUNNING, PAUSED = "Not started", "Running", "Paused"


class Monitor:
    def __init__(self, vm_id: str, accelerator: str, workdir: str, qemu_bin: str) -> None:
        self.vm_id = vm_id
        self.accelerator = accelerator
        self.workdir = workdir
        self.qemu_bin = qemu_bin
        self.config = VmConfig()
        self.mmds = Mmds()
        self.state = NOT_STARTED
        self.vm: QemuVm | None = None
        self.vsock: VsockHost | None = None
        self.done = asyncio.Event()
        self.exit_code = 0
        self._touched = False  # any pre-boot resource configured: no snapshot/load any more
        self._lock = asyncio.Lock()
        self._watcher: asyncio.Task[None] | None = None
        self._routes: dict[tuple[str, str], Callable[[bytes], Awaitable[Any]]] = {
            ("GET", "/"): self._info,
            ("GET", "/version"): self._version,
            ("GET", "/machine-config"): self._get_machine,
            ("PUT", "/machine-config"): self._put_machine,
            ("PATCH", "/machine-config"): self._patch_machine,
            ("PUT", "/boot-source"): self._put_boot,
            ("PUT", "/vsock"): self._put_vsock,
            ("PUT", "/serial"): self._put_serial,
            ("PUT", "/mmds"): self._put_mmds,
            ("PATCH", "/mmds"): self._patch_mmds,
            ("GET", "/mmds"): self._get_mmds,
            ("PUT", "/mmds/config"): self._put_mmds_config,
            ("PUT", "/actions"): self._actions,
            ("PATCH", "/vm"): self._patch_vm,
            ("GET", "/vm/config"): self._vm_config,
            ("PUT", "/snapshot/create"): self._snapshot_create,
            ("PUT", "/snapshot/load"): self._snapshot_load,
        }

    async def handle(self, request: HttpRequest) -> HttpResponse:
        try:
            result = await self._dispatch(request)
        except ApiError as exc:
            body = json.dumps({"fault_message": exc.message}).encode()
            return HttpResponse(exc.status, body, "application/json")
        if result is None:
            return HttpResponse(204, b"", "application/json")
        return HttpResponse(200, json.dumps(result).encode(), "application/json")

    async def _dispatch(self, request: HttpRequest) -> Any:
        path = request.path.rstrip("/") or "/"
        if path.startswith("/drives/") and request.method == "PUT":
            drive_id = path[len("/drives/"):]
            async with self._lock:
                return await self._put_drive(drive_id, request.body)
        route = self._routes.get((request.method, path))
        if route is None:
            raise ApiError(f"Invalid request method and/or path: {request.method} {path}.")
        async with self._lock:
            return await route(request.body)

    # -- rules --------------------------------------------------------------------------------

    def _pre_boot(self) -> None:
        if self.state != NOT_STARTED:
            raise ApiError("The requested operation is not supported after starting the "
                           "microVM.")
        self._touched = True

    def _post_boot(self) -> QemuVm:
        if self.vm is None:
            raise ApiError("The requested operation is not supported before starting the "
                           "microVM.")
        return self.vm

    # -- resources -----------------------------------------------------------------------------

    async def _info(self, _body: bytes) -> dict[str, Any]:
        return {"app_name": "kiln-vmm", "id": self.vm_id, "state": self.state,
                "vmm_version": __version__,
                "kiln": {"engine": "qemu", "accelerator": self.accelerator}}

    async def _version(self, _body: bytes) -> dict[str, Any]:
        return {"firecracker_version": API_VERSION}

    async def _get_machine(self, _body: bytes) -> dict[str, Any]:
        return self.config.machine.describe()

    async def _put_machine(self, body: bytes) -> None:
        self._pre_boot()
        self.config.machine = model.MachineConfig.parse(body)

    async def _patch_machine(self, body: bytes) -> None:
        self._pre_boot()
        patch = model.parse_body(body)
        if not isinstance(patch, dict):
            raise model.deserialize_error("invalid type: expected a JSON object")
        merged = {k: v for k, v in self.config.machine.describe().items() if k != "huge_pages"}
        merged.update(patch)
        self.config.machine = model.MachineConfig.parse(json.dumps(merged).encode())

    async def _put_boot(self, body: bytes) -> None:
        self._pre_boot()
        self.config.boot = model.BootSource.parse(body)

    async def _put_drive(self, drive_id: str, body: bytes) -> None:
        self._pre_boot()
        if not drive_id or "/" in drive_id:
            raise ApiError("Invalid drive id in the request path.")
        self.config.drives[drive_id] = model.Drive.parse(drive_id, body, self.config.drives)

    async def _put_vsock(self, body: bytes) -> None:
        self._pre_boot()
        self.config.vsock = model.Vsock.parse(body)

    async def _put_serial(self, body: bytes) -> None:
        self._pre_boot()
        value = model.fields(body, {"serial_out_path": ("string", False),
                                    "rate_limiter": ("object", False)})
        self.config.serial_out_path = value.get("serial_out_path")

    async def _put_mmds(self, body: bytes) -> None:
        self.mmds.put(body)

    async def _patch_mmds(self, body: bytes) -> None:
        self.mmds.patch(body)

    async def _get_mmds(self, _body: bytes) -> Any:
        return self.mmds.data if self.mmds.data is not None else {}

    async def _put_mmds_config(self, body: bytes) -> None:
        self._pre_boot()
        self.config.mmds = self.mmds.config = model.MmdsConfig.parse(body)

    async def _vm_config(self, _body: bytes) -> dict[str, Any]:
        c = self.config
        result: dict[str, Any] = {"machine-config": c.machine.describe(), "drives": [
            {k: v for k, v in vars(d).items() if v is not None} for d in c.drives.values()]}
        if c.boot is not None:
            result["boot-source"] = {k: v for k, v in vars(c.boot).items() if v is not None}
        if c.vsock is not None:
            result["vsock"] = vars(c.vsock)
        if c.mmds is not None:
            result["mmds-config"] = vars(c.mmds)
        return result

    # -- actions -------------------------------------------------------------------------------

    async def _actions(self, body: bytes) -> None:
        value = model.fields(body, {"action_type": ("string", True)})
        action = model.enum(value, "action_type", ("FlushMetrics", "InstanceStart",
                                                   "SendCtrlAltDel"))
        if action == "InstanceStart":
            self._pre_boot()
            if self.config.boot is None:
                raise ApiError("Cannot start microvm without kernel configuration.")
            await self._launch(None)
            self.state = RUNNING
        elif action == "SendCtrlAltDel":
            await self._post_boot().ctrl_alt_del()
        else:
            raise ApiError("The metrics system is not initialized.")

    async def _launch(self, incoming: Incoming | None) -> None:
        vm = QemuVm(self.config, self.accelerator, self.workdir, self.qemu_bin)
        vsock = VsockHost(self.mmds, self.config.vsock.uds_path if self.config.vsock else None)
        try:
            await vsock.start()
            await vm.start(incoming)
        except (ApiError, OSError) as exc:
            await vm.kill()
            await vsock.close()
            if isinstance(exc, ApiError):
                raise
            raise ApiError(f"Cannot start the microVM: {exc}") from None
        if vm.channel is not None:
            vsock.attach(*vm.channel)
        self.vm, self.vsock = vm, vsock
        self._watcher = asyncio.get_running_loop().create_task(self._watch(vm))

    async def _watch(self, vm: QemuVm) -> None:
        self.exit_code = await vm.wait()
        vm.close()
        if self.vsock is not None:
            await self.vsock.close()
        self.done.set()

    async def _patch_vm(self, body: bytes) -> None:
        value = model.fields(body, {"state": ("string", True)})
        wanted = model.enum(value, "state", ("Paused", "Resumed"))
        vm = self._post_boot()
        if wanted == "Paused":
            await vm.pause()
            self.state = PAUSED
        else:
            await vm.resume()
            self.state = RUNNING

    async def _snapshot_create(self, body: bytes) -> None:
        params = model.SnapshotCreate.parse(body)
        vm = self._post_boot()
        if self.state != PAUSED:
            raise ApiError("Cannot create a snapshot: the microVM is not paused.")
        device_state = await vm.save(params.mem_file_path)
        state = {"format": SNAPSHOT_FORMAT, "engine": "qemu", "accelerator": self.accelerator,
                 "config": self.config.to_json()}
        tmp = f"{params.snapshot_path}.tmp"
        try:  # one JSON line, then the device state
            with open(tmp, "wb") as f:
                f.write(json.dumps(state).encode() + b"\n" + device_state)
            os.replace(tmp, params.snapshot_path)
        except OSError as exc:
            raise ApiError(f"Cannot save the microVM state: {exc}") from None

    async def _snapshot_load(self, body: bytes) -> None:
        params = model.SnapshotLoad.parse(body)
        if self.state != NOT_STARTED or self._touched:
            raise ApiError("Loading a microVM snapshot not allowed after configuring "
                           "boot-specific resources.")
        try:
            with open(params.snapshot_path, "rb") as f:
                header = f.readline(MAX_STATE_HEADER)
            state = json.loads(header)
            if not stat.S_ISSOCK(os.stat(params.mem_path).st_mode):  # else an image server
                os.close(os.open(params.mem_path, os.O_RDONLY | os.O_CLOEXEC))
        except (OSError, ValueError) as exc:
            raise ApiError(f"Load snapshot error: Cannot load the microVM state: {exc}") from None
        if not isinstance(state, dict) or state.get("format") != SNAPSHOT_FORMAT:
            raise ApiError("Load snapshot error: the snapshot file is not a Kiln VMM snapshot.")
        if state.get("accelerator") != self.accelerator:
            raise ApiError(f"Load snapshot error: the snapshot was taken with "
                           f"{state.get('accelerator')}, this host runs {self.accelerator}.")
        config = VmConfig.from_json(state["config"])
        if params.uds_path is not None and config.vsock is not None:
            config.vsock.uds_path = params.uds_path
        self.config = config
        self.mmds.config = config.mmds
        await self._launch(Incoming(params.snapshot_path, len(header), params.mem_path))
        self.state = PAUSED
        if params.resume_vm:
            assert self.vm is not None
            await self.vm.resume()
            self.state = RUNNING

    async def close(self) -> None:
        if self.vm is not None:
            await self.vm.kill()
        if self.vsock is not None:
            await self.vsock.close()
