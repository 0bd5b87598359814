"""The per-function sandbox choice against ``kiln serve`` on its default ``process`` backend: a
function tagged ``kiln:sandbox=microvm`` runs in a microVM (another kernel: its own boot id),
its neighbours in the same server as isolated processes of the host's kernel; retagging moves a
function; SnapStart on a microVM function starts with INIT, on a process one it restores; a
killed server's microVMs are swept by the next one; without a guest image a tagged function's
invoke fails with ResourceNotReadyException.  The guest image is test_microvm's (built once)."""

from __future__ import annotations

import base64
import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    expect_error,
    process_gone,
    wait_for,
)
from tests.e2e.conftest import start_with_images

MICROVM = {"kiln:sandbox": "microvm"}
#: Which kernel the function runs on: every boot has its own random boot id.
PROBE = """
import platform

def handler(event, context):
    with open("/proc/sys/kernel/random/boot_id") as f:
        boot_id = f.read().strip()
    return {"boot_id": boot_id, "kernel": platform.release(), "stream": context.log_stream_name}
"""
HOST_BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()


@pytest.fixture(scope="module")
def server(microvm_images: Path,
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[KilnServer]:
    server = start_with_images(tmp_path_factory.mktemp("choice") / "data", microvm_images)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def client(server: KilnServer) -> Any:
    return server.client()


def probe(client: Any, name: str, qualifier: str = "$LATEST") -> tuple[dict[str, Any], str]:
    """Where the function ran, and its Tail log."""
    response = client.invoke(FunctionName=name, Qualifier=qualifier, LogType="Tail")
    assert "FunctionError" not in response, response["Payload"].read()
    return json.loads(response["Payload"].read()), base64.b64decode(
        response["LogResult"]).decode()


def test_tagged_functions_run_in_microvms_beside_process_ones(client: Any) -> None:
    plain = create_python_function(client, PROBE)
    in_vm = create_python_function(client, PROBE, Tags=MICROVM)
    host, _ = probe(client, plain)
    vm, _ = probe(client, in_vm)
    assert host["boot_id"] == HOST_BOOT_ID  # the process backend: the host's kernel
    assert vm["boot_id"] != HOST_BOOT_ID  # a kernel of its own
    assert probe(client, in_vm)[0] == vm  # warm: the same microVM
    assert probe(client, plain)[0] == host

    arn = client.get_function(FunctionName=plain)["Configuration"]["FunctionArn"]
    client.tag_resource(Resource=arn, Tags=MICROVM)  # moves it: its process environment retires
    moved, _ = probe(client, plain)
    assert moved["boot_id"] not in (HOST_BOOT_ID, vm["boot_id"]), moved
    client.untag_resource(Resource=arn, TagKeys=["kiln:sandbox"])  # back to the default
    back, _ = probe(client, plain)
    assert back["boot_id"] == HOST_BOOT_ID and back["stream"] != host["stream"]


def test_snapstart_restores_on_process_and_starts_with_init_in_a_microvm(client: Any) -> None:
    for tags, restored in ((MICROVM, False), ({}, True)):
        name = create_python_function(client, PROBE, Tags=tags,
                                      SnapStart={"ApplyOn": "PublishedVersions"})
        version = client.publish_version(FunctionName=name)["Version"]
        where, log = probe(client, name, version)
        assert (where["boot_id"] == HOST_BOOT_ID) == restored
        report = log.splitlines()[-1]
        assert ("Restore Duration" in report) == restored, report
        assert ("Init Duration" in report) != restored, report


def test_a_killed_servers_microvms_are_swept(microvm_images: Path,
                                             tmp_path: Path) -> None:
    data = tmp_path / "data"
    vms = data / "sandboxes" / "microvm" / "vms"
    first = start_with_images(data, microvm_images)
    try:
        client = first.client()
        name = create_python_function(client, PROBE, Tags=MICROVM)
        assert probe(client, name)[0]["boot_id"] != HOST_BOOT_ID
        # The spare monitor started after a boot records itself (its state file) a moment later.
        wait_for(lambda: len(list(vms.glob("*/monitor.json"))) > 1, timeout=5)
    finally:
        first.stop(signal.SIGKILL)
    monitors = {vm.parent: json.loads(vm.read_text())["pid"] for vm in vms.glob("*/monitor.json")}
    assert monitors
    # No function asks for a microVM: swept all the same.
    second = start_with_images(data, microvm_images)
    try:
        assert not any(vm.exists() for vm in monitors)
        assert wait_for(lambda: all(process_gone(pid) for pid in monitors.values()))
    finally:
        second.stop()


def test_without_a_guest_image_the_invoke_says_so(kiln_server: KilnServer,
                                                  lambda_client: Any) -> None:
    plain = create_python_function(lambda_client, PROBE)
    name = create_python_function(lambda_client, PROBE, Tags=MICROVM)
    error = expect_error(lambda_client, "ResourceNotReadyException", 502, lambda_client.invoke,
                         FunctionName=name)
    images = kiln_server.data_dir / "microvm" / "images"
    assert error.response["Error"]["Message"] == (
        f"Kiln could not make an execution environment for {name}: the microvm sandbox backend "
        f"is not available on this host: no microVM guest image in {images}: run 'kiln "
        "microvm build-image' first")
    assert probe(lambda_client, plain)[0]["boot_id"] == HOST_BOOT_ID
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.tag_resource, Resource=lambda_client.get_function(
                     FunctionName=name)["Configuration"]["FunctionArn"],
                 Tags={"kiln:sandbox": "unisolated"})
