"""The core end-to-end suite against ``kiln serve`` with ``KILN_SANDBOX_BACKEND=microvm``: every
environment is a QEMU microVM behind Kiln's Firecracker-API monitor (TCG on hosts without
hardware KVM), booted once per configuration and restored from its snapshot after that.

The guest image is built once (``kiln microvm build-image``) into a cache shared by runs
(``$KILN_MICROVM_TEST_CACHE``, default ``~/.cache/kiln/microvm-test``) and linked into each
server's data directory."""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import itertools
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    REPO,
    ROLE,
    KilnServer,
    create_python_function,
    make_zip,
    unique_name,
    wait_for,
)
from tests.e2e.conftest import CACHE, start_with_images
from tests.e2e.test_runtimes import create_provided, invoke, request_id

HOST_NODE = shutil.which("node")


def host_node_version() -> str | None:
    """``node --version`` of the node the host runs nodejs*.x on (None: no Node.js here)."""
    if HOST_NODE is None:
        return None
    return subprocess.run([HOST_NODE, "--version"], capture_output=True, text=True,
                          check=True).stdout.strip()


def test_build_image_is_cached_by_its_inputs(microvm_images: Path) -> None:
    built = subprocess.run([sys.executable, "-m", "kiln.cli", "microvm", "build-image",
                            "--data-dir", str(CACHE)], capture_output=True, text=True,
                           check=True, cwd=REPO)
    assert "up to date" in built.stderr  # the session's build is reused, not redone
    assert Path(built.stdout.strip()) == (microvm_images / "current").resolve()
    manifest = json.loads((microvm_images / "current" / "manifest.json").read_text())
    assert manifest["kernel"][0].startswith("linux-image-") and manifest["kernel_release"]
    assert {"python3.11", "busybox-static"} <= {name for name, _ in manifest["packages"]}
    # The host's own node (or none, as the host has none): the image says which.
    assert (manifest["node"] and manifest["node"]["version"]) == host_node_version()


def test_build_image_refuses_a_node_the_guest_root_cannot_run(microvm_images: Path,
                                                              tmp_path: Path) -> None:
    """A "node" needing libraries the root's Debian packages lack (QEMU, here) fails the
    build, which names them; no image is made."""
    images = tmp_path / "microvm" / "images"
    images.mkdir(parents=True)
    (images / "debs").symlink_to(microvm_images / "debs")  # the session's packages
    built = subprocess.run([sys.executable, "-m", "kiln.cli", "microvm", "build-image",
                            "--data-dir", str(tmp_path)], capture_output=True, text=True,
                           cwd=REPO, env={**os.environ, "KILN_NODE_BINARY": "qemu-system-x86_64"})
    assert built.returncode == 2, built.stderr
    assert "/usr/bin/node cannot run in the guest: needs libpixman-1.so.0, " in built.stderr
    assert "KILN_NODE_BINARY" in built.stderr and "Traceback" not in built.stderr
    assert not (images / "current").exists()


def start_microvm_server(data_dir: Path, images: Path) -> KilnServer:
    return start_with_images(data_dir, images, KILN_SANDBOX_BACKEND="microvm")


@pytest.fixture(scope="module")
def server(microvm_images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = start_microvm_server(tmp_path_factory.mktemp("microvm") / "data", microvm_images)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: KilnServer) -> Any:
    return server.client()


def tail(response: dict[str, Any]) -> str:
    return base64.b64decode(response["LogResult"]).decode()


# -- create, invoke, Tail logs, warm reuse ----------------------------------------------------

HELLO = """
import os, platform

def handler(event, context):
    print("hello from the guest", event.get("n"))
    return {"event": event, "pid": os.getpid(), "kernel": platform.release(),
            "remaining": context.get_remaining_time_in_millis(),
            "memory": context.memory_limit_in_mb, "request_id": context.aws_request_id,
            "task_root": os.environ["LAMBDA_TASK_ROOT"], "cwd": os.getcwd(),
            "runtime_api": os.environ["AWS_LAMBDA_RUNTIME_API"]}
"""


def test_invoke_tail_logs_and_warm_reuse(client: Any) -> None:
    name = create_python_function(client, HELLO, Timeout=5)
    response, body = invoke(client, name, {"n": 1}, LogType="Tail")
    assert response["StatusCode"] == 200 and "FunctionError" not in response, body
    assert body["event"] == {"n": 1}
    assert body["request_id"] == request_id(response)
    assert body["kernel"] != os.uname().release  # the guest's own (Debian cloud) kernel
    assert body["task_root"] == body["cwd"] == "/var/task"
    assert body["runtime_api"] == "127.0.0.1:9001"
    assert 0 < body["remaining"] <= 5000  # deadlines are read on the host's clock
    assert body["memory"] == "128"
    log = tail(response)
    assert "hello from the guest 1" in log
    assert log.splitlines()[0] == f"START RequestId: {request_id(response)} Version: $LATEST"
    assert "Init Duration" in log.splitlines()[-1]
    response, again = invoke(client, name, {"n": 2}, LogType="Tail")
    assert again["pid"] == body["pid"]  # the same (warm) microVM
    assert "hello from the guest 2" in tail(response)
    assert "Init Duration" not in tail(response)


def test_megabyte_payloads_cross_the_channel_intact(client: Any) -> None:
    source = "def handler(event, context):\n    return {'echo': event['data'][::-1]}\n"
    name = create_python_function(client, source, Timeout=30)
    data = os.urandom(1 << 20).hex()  # 2 MB of JSON text each way
    response, body = invoke(client, name, {"data": data})
    assert "FunctionError" not in response and body == {"echo": data[::-1]}


# -- errors -----------------------------------------------------------------------------------

ERRORS = """
import os, signal, time

def handler(event, context):
    action = event.get("action")
    if action == "raise":
        raise ValueError("guest failure")
    if action == "sleep":
        print("about to sleep")
        time.sleep(30)
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"pid": os.getpid()}
"""


def test_function_error_is_unhandled_with_stack(client: Any) -> None:
    name = create_python_function(client, ERRORS)
    response, body = invoke(client, name, {"action": "raise"}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "ValueError" and body["errorMessage"] == "guest failure"
    assert any("app.py" in frame for frame in body["stackTrace"])
    assert "guest failure" in tail(response)


def test_init_error_is_import_module_error(client: Any) -> None:
    name = create_python_function(client, "x = 1\n", handler="missing.handler")
    response, body = invoke(client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'missing'" in body["errorMessage"]


def test_timeout_tears_the_vm_down_and_the_next_invoke_works(client: Any) -> None:
    name = create_python_function(client, ERRORS, Timeout=1)
    _, first = invoke(client, name, {})
    response, body = invoke(client, name, {"action": "sleep"}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Sandbox.Timedout",
                    "errorMessage": f"RequestId: {request_id(response)} Error: Task timed out "
                                    "after 1.00 seconds"}
    log = tail(response)
    assert "about to sleep" in log
    assert log.splitlines()[-1].endswith("\tStatus: timeout\t")
    response, body = invoke(client, name, {})  # a new microVM (restored from the snapshot)
    assert "FunctionError" not in response and body["pid"] == first["pid"]


@pytest.mark.parametrize(("action", "description"), [("exit", "exit status 3"),
                                                     ("kill", "signal: killed")])
def test_crash_is_runtime_exit_error(client: Any, action: str, description: str) -> None:
    name = create_python_function(client, ERRORS)
    response, body = invoke(client, name, {"action": action})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.ExitError",
                    "errorMessage": f"RequestId: {request_id(response)} Error: Runtime exited "
                                    f"with error: {description}"}
    response, body = invoke(client, name, {})
    assert "FunctionError" not in response and isinstance(body["pid"], int)


def test_running_out_of_the_vms_memory_is_out_of_memory(client: Any) -> None:
    source = ("def handler(event, context):\n    chunks = []\n    while True:\n"
              "        chunks.append(b'x' * (8 << 20))\n")
    name = create_python_function(client, source, MemorySize=128, Timeout=60)
    response, body = invoke(client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.OutOfMemory",
                    "errorMessage": f"RequestId: {request_id(response)} Error: Runtime exited "
                                    "with error: signal: killed"}


def test_crash_during_init(client: Any) -> None:
    name = create_python_function(client, "import os\nos._exit(2)\n")
    response, body = invoke(client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"].endswith("Runtime exited with error: exit status 2")


def test_missing_bootstrap_is_invalid_entrypoint(client: Any) -> None:
    name = create_provided(client, {"app.py": RIC_APP})
    response, body = invoke(client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.InvalidEntrypoint",
                    "errorMessage": f"RequestId: {request_id(response)} Error: Couldn't find "
                                    "valid bootstrap(s): [/var/task/bootstrap]"}


# -- snapshots: INIT once per configuration, every further environment restored ----------------

SNAPSHOT = """
import os, time, uuid

INIT_TOKEN = uuid.uuid4().hex   # made once, in the INIT the snapshot holds
first_request = None

def handler(event, context):
    global first_request
    first_request = first_request or context.aws_request_id
    time.sleep(event.get("hold", 0))
    return {"init": INIT_TOKEN, "environment": first_request,
            "entropy": os.urandom(8).hex(), "now_ms": int(time.time() * 1000),
            "log_stream": context.log_stream_name}
"""


def test_new_environments_are_restored_from_the_snapshot(client: Any) -> None:
    name = create_python_function(client, SNAPSHOT, Timeout=30)
    response, cold = invoke(client, name, {})
    with ThreadPoolExecutor(3) as pool:
        results = list(pool.map(lambda _i: invoke(client, name, {"hold": 2}, LogType="Tail"),
                                range(3)))
    bodies = [body for _, body in results]
    assert all("FunctionError" not in response for response, _ in results), bodies
    for result, body in results:  # the REPORT of a restored environment's first invoke
        report = tail(result).splitlines()[-1]
        restored = body["environment"] != request_id(response)
        assert ("Restore Duration" in report) == restored and "Init Duration" not in report
    # Three environments at once: the warm one and two new ones, each a restored snapshot:
    # their INIT token is the cold environment's, their own first request differs.
    assert {b["init"] for b in bodies} == {cold["init"]}
    assert len({b["environment"] for b in bodies}) == 3
    # Fresh entropy and the host's wall clock in every restored guest.
    assert len({b["entropy"] for b in bodies}) == 3
    assert all(abs(b["now_ms"] - time.time() * 1000) < 60_000 for b in bodies)
    # No environment names a log stream (a restored one could only name the snapshot's), as
    # Lambda's SnapStart environments do not.
    assert [b["log_stream"] for b in [cold, *bodies]] == [None] * 4


# -- nodejs*.x: Kiln's Node.js runtime on the host's own node, copied into the image ----------

NODE_APP = """
import crypto from "node:crypto";
import os from "node:os";
import { setTimeout } from "node:timers/promises";

const INIT_TOKEN = crypto.randomUUID();  // made once, in the INIT the snapshot holds

export const handler = async (event, context) => {
  if (event.fail) {
    throw new TypeError("node failure in the guest");
  }
  console.log("hello from node in the guest", event.n);
  await setTimeout(event.hold ?? 0);
  return { event, version: process.version, execPath: process.execPath, kernel: os.release(),
           requestId: context.awsRequestId, taskRoot: process.env.LAMBDA_TASK_ROOT,
           init: INIT_TOKEN };
};
"""


@pytest.mark.skipif(HOST_NODE is None, reason="no node here: nodejs runtimes are unsupported")
def test_nodejs_runs_the_hosts_node_in_the_guest(client: Any) -> None:
    name = unique_name("node")
    client.create_function(FunctionName=name, Runtime="nodejs20.x", Role=ROLE,
                           Handler="app.handler", Timeout=20,
                           Code={"ZipFile": make_zip({"app.mjs": NODE_APP})})
    response, body = invoke(client, name, {"n": 1}, LogType="Tail")
    assert "FunctionError" not in response, body
    assert body["event"] == {"n": 1} and body["requestId"] == request_id(response)
    assert body["version"] == host_node_version()  # what the process backend gives too
    assert body["execPath"] == "/usr/bin/node" and body["taskRoot"] == "/var/task"
    assert body["kernel"] != os.uname().release  # inside the microVM
    assert "hello from node in the guest 1" in tail(response)
    response, error = invoke(client, name, {"fail": True}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "TypeError"
    assert error["errorMessage"] == "node failure in the guest"
    assert "node failure in the guest" in tail(response)
    # A second environment at once: node restored from the first one's snapshot.
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda n: invoke(client, name, {"n": n, "hold": 1500},
                                                 LogType="Tail"), (2, 3)))
    assert all("FunctionError" not in response for response, _ in results), results
    assert {b["init"] for _, b in results} == {body["init"]}
    assert {b["version"] for _, b in results} == {body["version"]}
    assert sum("Restore Duration" in tail(response) for response, _ in results) == 1


# -- the agent's AF_VSOCK channel, on the guest kernel's own vsock (its loopback transport) -----

VSOCK_APP = """
import asyncio, errno, subprocess, sys
sys.path.insert(0, "/usr/lib/kiln")  # the agent's own modules, as the image holds them
from kiln.vmm.guest.channel import VsockChannel, vsock_present

async def exchange():
    channel = VsockChannel(cid=1)  # VMADDR_CID_LOCAL: this guest, over vsock_loopback
    async def echo(reader, writer):
        line = await reader.readline()
        writer.write(b"echo " + line)
        writer.write(b"%d" % len(await reader.read()))  # everything, until the end of file
    channel.listen(5000, echo)
    reader, writer = await channel.connect(5000)
    writer.write(b"ping\\n" + b"x" * (1 << 20))
    writer.write_eof()
    answer = (await reader.readline()).decode(), (await reader.read()).decode()
    try:
        await channel.connect(5001)  # nobody listens there
        refused = None
    except ConnectionRefusedError as exc:
        refused = [type(exc).__name__, errno.errorcode[exc.__cause__.errno]]
    return {"answer": answer, "refused": refused}

def handler(event, context):
    errors = [subprocess.run(["insmod", f"/var/task/{module}.ko"], capture_output=True,
                             text=True).stderr for module in event["modules"]]
    return {"insmod": errors, "vsock_device": vsock_present(), **asyncio.run(exchange())}
"""
VSOCK_MODULES = ("vsock", "vmw_vsock_virtio_transport_common", "vsock_loopback")


def guest_kernel_modules(images: Path, names: tuple[str, ...]) -> dict[str, bytes]:
    """``names``.ko of the image's kernel, from the kernel package the build cached."""
    manifest = json.loads((images / "current" / "manifest.json").read_text())
    (deb,) = (images / "debs").glob(f"{manifest['kernel'][0]}_*.deb")
    with subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)],
                          stdout=subprocess.PIPE) as unpack, \
            tarfile.open(fileobj=unpack.stdout, mode="r|") as archive:
        found = {}
        for member in archive:
            name = Path(member.name).name.removesuffix(".ko")
            if "/net/vmw_vsock/" in member.name and name in names:
                extracted = archive.extractfile(member)
                assert extracted is not None
                found[f"{name}.ko"] = extracted.read()
    assert len(found) == len(names), found.keys()
    return found


def test_agent_vsock_channel_over_the_guest_kernels_af_vsock(client: Any,
                                                             microvm_images: Path) -> None:
    """No engine here offers a vsock device (no /dev/vhost-vsock on these hosts), so the
    AF_VSOCK channel runs against the guest kernel's loopback transport: the agent's own
    module, in the image, on Debian's guest kernel."""
    modules = guest_kernel_modules(microvm_images, VSOCK_MODULES)
    name = unique_name("vsock")
    client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                           Handler="app.handler", Timeout=30,
                           Code={"ZipFile": make_zip({"app.py": VSOCK_APP, **modules})})
    response, body = invoke(client, name, {"modules": VSOCK_MODULES})
    assert "FunctionError" not in response, body
    assert body["insmod"] == ["", "", ""]
    assert body["vsock_device"] is False  # so the agent itself runs on the mux
    assert body["answer"] == ["echo ping\n", str(1 << 20)]
    # The kernel resets a connect to a port nobody serves (as Firecracker's RST does): the
    # channel says refused, as the mux does.
    assert body["refused"] == ["ConnectionRefusedError", "ECONNRESET"]


# -- an awslambdaric custom runtime (PyPI), run by the guest's Python --------------------------

RIC_BOOTSTRAP = """#!/bin/sh
cd "$LAMBDA_TASK_ROOT"
export PYTHONPATH="$LAMBDA_TASK_ROOT"
exec python3 -m awslambdaric "$_HANDLER"
"""

RIC_APP = """
import os

def handler(event, context):
    if event.get("fail"):
        raise RuntimeError("ric failure")
    print("hello from awslambdaric")
    return {"event": event, "request_id": context.aws_request_id, "pid": os.getpid()}
"""


def awslambdaric_files() -> dict[str, str | bytes]:
    """awslambdaric and its dependencies as installed here (cp311, like the guest's Python)."""
    files: dict[str, str | bytes] = {}
    for distribution in ("awslambdaric", "simplejson", "snapshot-restore-py"):
        dist = importlib.metadata.distribution(distribution)
        for entry in dist.files or []:
            path = str(entry)
            if "__pycache__" in path or ".dist-info" in path:
                continue
            files[path] = Path(str(dist.locate_file(entry))).read_bytes()
    return files


def test_awslambdaric_custom_runtime(client: Any) -> None:
    name = create_provided(client, {**awslambdaric_files(), "bootstrap": RIC_BOOTSTRAP,
                                    "app.py": RIC_APP}, Timeout=20)
    response, body = invoke(client, name, {"x": 1}, LogType="Tail")
    assert "FunctionError" not in response, body
    assert body["event"] == {"x": 1} and body["request_id"] == request_id(response)
    assert "hello from awslambdaric" in tail(response)
    response, error = invoke(client, name, {"fail": True})
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "RuntimeError" and error["errorMessage"] == "ric failure"
    response, again = invoke(client, name, {"x": 2})
    assert again["pid"] == body["pid"]


# -- layers: the version's merged layers arrive read-only at /opt ------------------------------

LAYERED = """
import os, subprocess
import shared

def handler(event, context):
    return {"shared": shared.VALUE, "file": shared.__file__,
            "tool": subprocess.run(["layer-tool"], capture_output=True, text=True).stdout}
"""


def test_layers_are_mounted_at_opt(client: Any) -> None:
    layer = client.publish_layer_version(LayerName=f"ml-{os.urandom(3).hex()}", Content={
        "ZipFile": make_zip({"python/shared.py": "VALUE = 'from-the-layer'\n",
                             "bin/layer-tool": "#!/bin/sh\necho tool-in-the-vm\n"},
                            executable=("bin/layer-tool",))})
    name = create_python_function(client, LAYERED, Layers=[layer["LayerVersionArn"]],
                                  Timeout=20)
    response, body = invoke(client, name, {})
    assert "FunctionError" not in response, body
    assert body == {"shared": "from-the-layer", "file": "/opt/python/shared.py",
                    "tool": "tool-in-the-vm\n"}


# -- the hostile battery: nothing of the host is visible from inside the microVM ---------------

HOSTILE = """
import errno, json, os, socket

def attempt(fn):
    try:
        return fn()
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))

def connect(address):
    with socket.create_connection(address, timeout=2):
        return "connected"

def cmdlines():
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            found.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\\0", b" ").decode())
        except OSError:
            pass
    return found

def handler(event, context):
    host = event["host"]
    return {
        "host_files": {p: os.path.exists(p) for p in host["paths"]},
        "host_pid": attempt(lambda: open(f"/proc/{host['pid']}/cmdline", "rb").read().decode()),
        "processes": cmdlines(),
        "interfaces": [name for _, name in socket.if_nameindex()],
        "kiln_port": attempt(lambda: connect(("127.0.0.1", host["port"]))),
        "host_ip": attempt(lambda: connect((host["ip"], host["port"]))),
        "signal_host": attempt(lambda: os.kill(host["pid"], 0)),
        "outside": attempt(lambda: connect(("10.0.2.2", 22))),
        "dns": attempt(lambda: socket.getaddrinfo("deb.debian.org", 80) and "resolved"),
        "disks": sorted(os.listdir("/sys/block")),
        "write_code": attempt(lambda: open("/var/task/x", "w").close()),
    }
"""


def test_hostile_function_sees_nothing_of_the_host(server: KilnServer, client: Any,
                                                   tmp_path: Path) -> None:
    marker = tmp_path / "host-secret"
    marker.write_text("secret")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("10.255.255.255", 1))  # no packet is sent: picks the host's address
        host_ip = probe.getsockname()[0]
    host = {"paths": [str(marker), str(REPO), str(server.data_dir), "/root/.cache/kiln"],
            "pid": server.process.pid, "port": server.port, "ip": host_ip}
    name = create_python_function(client, HOSTILE, Timeout=20)
    response, body = invoke(client, name, {"host": host})
    assert "FunctionError" not in response, body
    assert body["host_files"] == dict.fromkeys(host["paths"], False)
    assert body["host_pid"] in ("ENOENT", "") or "kiln" not in body["host_pid"]
    assert not [c for c in body["processes"] if "kiln.cli" in c or "qemu" in c]
    assert all("/usr/lib/kiln" in c or "python" in c or not c for c in body["processes"])
    assert body["interfaces"] == ["lo"]
    assert body["kiln_port"] == "ECONNREFUSED"  # the guest's loopback is its own
    assert body["host_ip"] in ("ENETUNREACH", "EHOSTUNREACH")  # and it has no other network
    assert body["signal_host"] == "ESRCH"  # the guest's processes are all it can see
    assert body["outside"] in ("ENETUNREACH", "EHOSTUNREACH")
    assert body["dns"] != "resolved"
    assert body["disks"] == ["vda", "vdb"]  # the read-only root and the code, nothing else
    assert body["write_code"] == "EROFS"


# -- kill -9: a restarted server sweeps what the dead one left ---------------------------------

def engines_under(data_dir: Path) -> list[int]:
    """Monitor and QEMU processes whose command line names ``data_dir``."""
    pids = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if str(data_dir).encode() in cmdline and (b"kiln.vmm" in cmdline or b"qemu" in cmdline):
            pids.append(int(pid))
    return pids


def test_restart_after_kill_9_sweeps_leftover_microvms(microvm_images: Path,
                                                       tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    server = start_microvm_server(data_dir, microvm_images)
    try:
        name = create_python_function(server.client(), HELLO)
        response, _ = invoke(server.client(), name, {})
        assert "FunctionError" not in response
        assert engines_under(data_dir), "no microVM is running for the environment"
    finally:
        server.stop(signal.SIGKILL)
    leftovers = engines_under(data_dir)
    assert leftovers  # kill -9 gave the server no chance to clean up
    server = start_microvm_server(data_dir, microvm_images)
    try:
        assert wait_for(lambda: not engines_under(data_dir))
        assert not list((data_dir / "sandboxes" / "microvm" / "vms").iterdir())
        response, body = invoke(server.client(), name, {"n": 3})
        assert "FunctionError" not in response and body["event"] == {"n": 3}
    finally:
        server.stop()


# -- the ELF vmlinux, which Firecracker boots ---------------------------------------------------

PT_LOAD, PT_NOTE, PF_X = 1, 4, 1
#: Xen's ELF note naming the kernel's 32-bit PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY): how
#: QEMU (and Firecracker's loader, where it looks) enters an ELF kernel directly.
XEN_ELFNOTE_PHYS32_ENTRY = 18


def elf_segments(elf: bytes) -> list[tuple[int, ...]]:
    """(p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz, p_align) of each
    program header of an ELF64 little-endian file."""
    phoff, = struct.unpack_from("<Q", elf, 32)
    phentsize, phnum = struct.unpack_from("<HH", elf, 54)
    return [struct.unpack_from("<IIQQQQQQ", elf, phoff + i * phentsize) for i in range(phnum)]


def elf_notes(elf: bytes, segments: list[tuple[int, ...]]) -> dict[tuple[bytes, int], bytes]:
    """Every note in the PT_NOTE segments, by (owner, type)."""
    notes = {}
    for _type, _flags, offset, _v, _p, filesz, _m, _a in (s for s in segments
                                                          if s[0] == PT_NOTE):
        at = offset
        while at < offset + filesz:
            namesz, descsz, kind = struct.unpack_from("<III", elf, at)
            name = elf[at + 12:at + 12 + namesz].rstrip(b"\0")
            desc_at = at + 12 + (namesz + 3) // 4 * 4
            notes[name, kind] = elf[desc_at:desc_at + descsz]
            at = desc_at + (descsz + 3) // 4 * 4
    return notes


def test_the_images_vmlinux_is_its_kernel_as_an_elf_executable(microvm_images: Path) -> None:
    current = microvm_images / "current"
    manifest = json.loads((current / "manifest.json").read_text())
    elf = (current / "vmlinux").read_bytes()
    assert manifest["vmlinux"] == {"from": "vmlinuz", "compression": "lz4", "bytes": len(elf),
                                   "sha256": hashlib.sha256(elf).hexdigest()}  # Debian's: LZ4
    assert (current / "vmlinux").stat().st_blocks * 512 < len(elf)  # its zero padding: holes
    assert elf[:7] == b"\x7fELF\x02\x01\x01"  # ELF64, little-endian, version 1
    e_type, e_machine, _version, entry = struct.unpack_from("<HHIQ", elf, 16)
    assert (e_type, e_machine) == (2, 62)  # an executable, for x86-64
    segments = elf_segments(elf)
    loads = sorted((s for s in segments if s[0] == PT_LOAD), key=lambda s: s[4])
    assert loads
    # A loader copies each one's file bytes to its physical address (Linux's per-CPU segment
    # has virtual address 0, so only physical addresses tell where they go).
    for _type, _flags, offset, _vaddr, _paddr, filesz, memsz, _align in loads:
        assert offset + filesz <= len(elf) and filesz <= memsz
    for below, above in itertools.pairwise(loads):
        assert below[4] + below[6] <= above[4]  # physical ranges do not overlap
    # Placed in guest memory above the first MiB, and all below Lambda's smallest 128 MB.
    assert loads[0][4] >= 1 << 20 and loads[-1][4] + loads[-1][6] <= 128 << 20
    code = [(s[4], s[4] + s[6]) for s in loads if s[1] & PF_X]

    def in_code(address: int) -> bool:
        return any(start <= address < end for start, end in code)

    assert in_code(entry)  # Linux's ELF entry (startup_64) is a physical address
    pvh = elf_notes(elf, segments)[b"Xen", XEN_ELFNOTE_PHYS32_ENTRY]
    assert in_code(int.from_bytes(pvh, "little"))
    # The kernel that reports the image's release (decompressed, not just well-formed).
    assert f"Linux version {manifest['kernel_release']} ".encode() in elf


def test_qemu_boots_the_vmlinux_to_a_first_response(microvm_images: Path,
                                                    tmp_path: Path) -> None:
    """No Firecracker here, so QEMU boots the ELF (by its PVH entry) with the image's own
    initramfs and root: an image whose ``vmlinuz`` is the vmlinux (QEMU tells a kernel's
    format by its bytes).  The function runs on it, and reports the image's kernel."""
    current = (microvm_images / "current").resolve()
    manifest = json.loads((current / "manifest.json").read_text())
    images = tmp_path / "images"
    elf_image = images / current.name
    elf_image.mkdir(parents=True)
    for name in ("manifest.json", "initrd.cpio", "rootfs.ext4", "vmlinux"):
        os.link(current / name, elf_image / name)
    os.link(current / "vmlinux", elf_image / "vmlinuz")
    (images / "current").symlink_to(current.name)
    server = start_microvm_server(tmp_path / "data", images)
    try:
        name = create_python_function(server.client(), HELLO)
        response, body = invoke(server.client(), name, {"n": 1})
        assert "FunctionError" not in response, body
        assert body["event"] == {"n": 1} and body["kernel"] == manifest["kernel_release"]
    finally:
        server.stop()
