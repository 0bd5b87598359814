"""VMM fixtures: monitors as real processes, Firecracker's spec as the judge of every exchange,
and one booted test guest per session (snapshotted, so other tests restore it in ~0.2 s)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from kiln.vmm.client import VmmClient
from tests.conftest import REPO, wait_for

# Firecracker's spec is read in place from the team's reference notes beside the checkout
# (../shared/reference), never copied into the project; KILN_FIRECRACKER_SPEC overrides.
SPEC_PATH = Path(os.environ.get(
    "KILN_FIRECRACKER_SPEC",
    REPO.parent / "shared" / "reference" / "firecracker" / "firecracker-api.yaml"))
BOOT_ARGS = "console=ttyS0 reboot=k panic=-1 quiet"
GUEST_PORT = 5000


class Spec:
    """Firecracker's Swagger 2.0 document; request and response bodies checked in place."""

    def __init__(self, path: Path) -> None:
        with path.open() as f:
            self.doc = yaml.safe_load(f)

    def _schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        # Swagger 2.0 schemas are JSON Schema draft 4 with refs into "definitions".
        return {**schema, "definitions": self.doc["definitions"]}

    def operation(self, method: str, path: str) -> dict[str, Any]:
        for template, item in self.doc["paths"].items():
            parts, actual = template.strip("/").split("/"), path.strip("/").split("/")
            if len(parts) == len(actual) and all(
                p == a or (p.startswith("{") and a) for p, a in zip(parts, actual, strict=True)
            ):
                operation: dict[str, Any] = item[method.lower()]
                return operation
        raise AssertionError(f"{method} {path} is not in Firecracker's API")

    def check_request(self, method: str, path: str, body: Any) -> None:
        for param in self.operation(method, path).get("parameters", []):
            if param["in"] == "body":
                jsonschema.Draft4Validator(self._schema(param["schema"])).validate(body)

    def check_response(self, method: str, path: str, status: int, body: bytes) -> None:
        responses = self.operation(method, path)["responses"]
        response = responses.get(status) or responses["default"]
        if "schema" not in response:
            assert body == b"", f"{status} must have no body"
            return
        jsonschema.Draft4Validator(self._schema(response["schema"])).validate(json.loads(body))


@pytest.fixture(scope="session", autouse=True)
def qemu_installed() -> None:
    """Monitors refuse to start without their engine: install it first (idempotent)."""
    subprocess.run([str(REPO / "scripts" / "ensure-qemu")], check=True)


@pytest.fixture(scope="session")
def spec() -> Spec:
    if not SPEC_PATH.is_file():
        pytest.skip(f"Firecracker's API spec not found at {SPEC_PATH} (the reference notes "
                    "beside the checkout); set KILN_FIRECRACKER_SPEC to its path")
    return Spec(SPEC_PATH)


class CheckedClient(VmmClient):
    """A client whose every exchange must conform to Firecracker's spec."""

    def __init__(self, api_sock: str, spec: Spec) -> None:
        super().__init__(api_sock)
        self.spec = spec

    async def raw(self, method: str, path: str, payload: Any = None,
                  valid_request: bool = True) -> tuple[int, Any]:
        """Send; check the request (unless deliberately invalid) and the response."""
        if payload is not None and valid_request:
            self.spec.check_request(method, path, payload)
        body = None if payload is None else json.dumps(payload).encode()
        status, headers, data = await self.request(method, path, body)
        self.spec.check_response(method, path, status, data)
        if status != 204:
            assert headers["content-type"] == "application/json"
        return status, json.loads(data) if data else None

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        status, value = await self.raw(method, path, payload)
        assert status in (200, 204), value
        return value

    async def fault(self, method: str, path: str, payload: Any = None,
                    valid_request: bool = True) -> str:
        """The request must fail with 400 and Firecracker's error body; returns the message."""
        status, value = await self.raw(method, path, payload, valid_request)
        assert status == 400, value
        assert set(value) == {"fault_message"} and value["fault_message"]
        message: str = value["fault_message"]
        return message


@dataclass
class Monitor:
    vm_id: str
    api_sock: str
    vm_dir: Path
    process: subprocess.Popen[bytes]
    console: Path
    client: CheckedClient

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.vm_dir, ignore_errors=True)

    def console_text(self) -> str:
        return self.console.read_text(errors="replace")


def start(base: Path, vm_id: str, spec: Spec, *extra: str) -> Monitor:
    """Start ``python -m kiln.vmm`` and wait until its socket accepts connections."""
    api_sock = str(base / f"{vm_id}.sock")
    console = base / f"{vm_id}.console"
    with console.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "kiln.vmm", "--api-sock", api_sock, "--id", vm_id,
             "--base-dir", str(base), *extra],
            stdin=subprocess.DEVNULL, stdout=out, cwd=REPO)
    assert wait_for(lambda: os.path.exists(api_sock) or process.poll() is not None, 30)
    assert process.poll() is None, f"monitor exited with {process.returncode}"
    return Monitor(vm_id, api_sock, base / vm_id, process, console, CheckedClient(api_sock, spec))


@pytest.fixture
def monitor(tmp_path: Path, spec: Spec) -> Iterator[Monitor]:
    """A fresh monitor, not configured."""
    m = start(tmp_path, "vm-test", spec)
    yield m
    m.stop()


# -- the test guest -------------------------------------------------------------------------------


@dataclass
class Guest:
    kernel: str
    initrd: str
    rootfs: str


@pytest.fixture(scope="session")
def guest() -> Guest:
    """Built by scripts/vmm-test-guest (cached; QEMU installed by scripts/ensure-qemu)."""
    out = subprocess.run([str(REPO / "scripts" / "vmm-test-guest")], check=True,
                         capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return Guest(f"{out}/vmlinuz", f"{out}/initrd.gz", f"{out}/rootfs.ext4")


def guest_config(guest: Guest, uds_path: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        ("/machine-config", {"vcpu_count": 1, "mem_size_mib": 192}),
        ("/boot-source", {"kernel_image_path": guest.kernel, "initrd_path": guest.initrd,
                          "boot_args": BOOT_ARGS}),
        ("/drives/rootfs", {"drive_id": "rootfs", "path_on_host": guest.rootfs,
                            "is_root_device": False, "is_read_only": True}),
        ("/vsock", {"guest_cid": 3, "uds_path": uds_path}),
        ("/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"}),
    ]


async def ask(uds_path: str, line: str, port: int = GUEST_PORT) -> str:
    """One line to the guest program over vsock (Firecracker's CONNECT handshake)."""
    reader, writer = await asyncio.open_unix_connection(uds_path)
    try:
        writer.write(f"CONNECT {port}\n".encode())
        ok = await asyncio.wait_for(reader.readline(), 30)
        assert ok.startswith(b"OK "), ok
        writer.write(line.encode() + b"\n")
        return (await asyncio.wait_for(reader.readline(), 30)).decode().strip()
    finally:
        writer.close()


async def wait_guest(uds_path: str, timeout: float = 120) -> float:
    """Seconds until the guest program answers."""
    start_time = time.monotonic()
    while True:
        try:
            assert await ask(uds_path, "echo up") == "up"
            return time.monotonic() - start_time
        except (OSError, AssertionError):
            if time.monotonic() - start_time > timeout:
                raise
            await asyncio.sleep(0.05)


@dataclass
class Snapshot:
    state: str
    mem: str
    boot_seconds: float


@pytest.fixture(scope="session")
def snapshot(tmp_path_factory: pytest.TempPathFactory, spec: Spec, guest: Guest) -> Snapshot:
    """Boot the test guest once, snapshot it (paused), and stop it."""
    base = tmp_path_factory.mktemp("vmm-snap")
    m = start(base, "source", spec)

    async def boot() -> Snapshot:
        for path, body in guest_config(guest, str(base / "source.vsock")):
            await m.client.put(path, body)
        await m.client.put("/actions", {"action_type": "InstanceStart"})
        seconds = await wait_guest(str(base / "source.vsock"))
        await m.client.patch("/vm", {"state": "Paused"})
        snap = Snapshot(str(base / "snap.json"), str(base / "snap.mem"), seconds)
        await m.client.put("/snapshot/create",
                           {"snapshot_path": snap.state, "mem_file_path": snap.mem})
        return snap

    try:
        return asyncio.run(boot())
    finally:
        m.stop()


async def restore(m: Monitor, snap: Snapshot, uds_path: str, resume: bool = True) -> None:
    await m.client.put("/snapshot/load", {
        "snapshot_path": snap.state, "resume_vm": resume,
        "mem_backend": {"backend_type": "File", "backend_path": snap.mem},
        "vsock_override": {"uds_path": uds_path}})


@asynccontextmanager
async def restored(base: Path, vm_id: str, spec: Spec,
                   snap: Snapshot) -> AsyncIterator[tuple[Monitor, str]]:
    """A monitor restored from ``snap`` (running, its vsock at the returned path) whose guest
    answers; stopped on exit."""
    m = start(base, vm_id, spec)
    try:
        uds = str(base / f"{vm_id}.vsock")
        await restore(m, snap, uds)
        await wait_guest(uds, timeout=30)
        yield m, uds
    finally:
        m.stop()
