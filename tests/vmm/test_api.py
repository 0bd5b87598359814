"""Firecracker's API on a real monitor process, before boot: every answer checked against
Firecracker's own spec; bad input gets 400 with ``fault_message`` and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.vmm.conftest import Monitor


async def test_instance_info_reports_engine_and_accelerator(monitor: Monitor) -> None:
    info = await monitor.client.get("/")
    assert info["id"] == "vm-test"
    assert info["state"] == "Not started"
    assert info["kiln"]["engine"] == "qemu"
    hardware = Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()
    assert info["kiln"]["accelerator"] == ("kvm" if hardware else "tcg")


async def test_machine_config_defaults_put_patch(monitor: Monitor) -> None:
    c = monitor.client
    assert await c.get("/machine-config") == {
        "vcpu_count": 1, "mem_size_mib": 128, "smt": False, "track_dirty_pages": False,
        "huge_pages": "None"}
    await c.put("/machine-config", {"vcpu_count": 2, "mem_size_mib": 512, "smt": True})
    await c.patch("/machine-config", {"vcpu_count": 2, "mem_size_mib": 256})
    got = await c.get("/machine-config")
    assert (got["vcpu_count"], got["mem_size_mib"], got["smt"]) == (2, 256, True)


@pytest.mark.parametrize("body, valid, needle", [
    ({"vcpu_count": 0, "mem_size_mib": 128}, False, ""),
    ({"vcpu_count": 33, "mem_size_mib": 128}, False, ""),
    ({"vcpu_count": 3, "mem_size_mib": 128, "smt": True}, True, "vCPU number is invalid"),
    ({"vcpu_count": 1, "mem_size_mib": 0}, True, "memory size (MiB) is invalid"),
    ({"vcpu_count": 1}, False, "missing field `mem_size_mib`"),
    ({"vcpu_count": "1", "mem_size_mib": 128}, False, "invalid type for field `vcpu_count`"),
    ({"vcpu_count": 1, "mem_size_mib": 128, "color": "red"}, False, "unknown field `color`"),
    ({"vcpu_count": 1, "mem_size_mib": 128, "huge_pages": "1G"}, False, "unknown variant"),
])
async def test_machine_config_bad_input(monitor: Monitor, body: dict[str, object],
                                        valid: bool, needle: str) -> None:
    before = await monitor.client.get("/machine-config")
    message = await monitor.client.fault("PUT", "/machine-config", body, valid_request=valid)
    assert needle in message
    assert await monitor.client.get("/machine-config") == before


async def test_body_errors(monitor: Monitor) -> None:
    c = monitor.client
    status, _headers, data = await c.request("PUT", "/boot-source", b"{not json")
    c.spec.check_response("PUT", "/boot-source", status, data)
    assert status == 400 and b"deserializing the json body" in data
    status, _headers, data = await c.request("PUT", "/boot-source", None)
    assert status == 400 and b"body is empty" in data
    assert "deserializing" in await c.fault("PUT", "/vsock", [1, 2], valid_request=False)


async def test_unknown_route_and_method(monitor: Monitor) -> None:
    for method, path in (("GET", "/nope"), ("DELETE", "/machine-config"), ("POST", "/actions")):
        status, _headers, data = await monitor.client.request(method, path)
        assert status == 400
        assert b"Invalid request method and/or path" in data


async def test_boot_source_checks_files(monitor: Monitor, tmp_path: Path) -> None:
    c = monitor.client
    message = await c.fault("PUT", "/boot-source", {"kernel_image_path": "/nonexistent/vmlinuz"})
    assert "kernel file cannot be opened" in message and "os error 2" in message
    kernel = tmp_path / "vmlinuz"
    kernel.write_bytes(b"x")
    assert "initrd file" in await c.fault(
        "PUT", "/boot-source", {"kernel_image_path": str(kernel), "initrd_path": "/nope"})
    await c.put("/boot-source", {"kernel_image_path": str(kernel), "boot_args": "quiet"})
    config = await c.get("/vm/config")
    assert config["boot-source"] == {"kernel_image_path": str(kernel), "boot_args": "quiet"}
    c.spec.check_response("GET", "/vm/config", 200,
                          (await c.request("GET", "/vm/config"))[2])


async def test_drives(monitor: Monitor, tmp_path: Path) -> None:
    c = monitor.client
    disk = tmp_path / "disk.img"
    disk.write_bytes(b"\0" * 4096)
    body = {"drive_id": "root", "path_on_host": str(disk), "is_root_device": True,
            "is_read_only": True}
    await c.put("/drives/root", body)
    assert "does not match" in await c.fault("PUT", "/drives/other", body)
    second = {**body, "drive_id": "second"}
    assert "root block device already exists" in await c.fault("PUT", "/drives/second", second)
    assert "os error 2" in await c.fault(
        "PUT", "/drives/data", {**body, "drive_id": "data", "path_on_host": "/nope",
                                "is_root_device": False})
    assert "unknown variant" in await c.fault(
        "PUT", "/drives/data", {**body, "drive_id": "data", "cache_type": "Fast",
                                "is_root_device": False}, valid_request=False)
    await c.put("/drives/data", {**body, "drive_id": "data", "is_root_device": False})
    drives = (await c.get("/vm/config"))["drives"]
    assert [d["drive_id"] for d in drives] == ["root", "data"]


async def test_vsock_and_mmds_config(monitor: Monitor) -> None:
    c = monitor.client
    assert "guest_cid" in await c.fault("PUT", "/vsock", {"guest_cid": 2, "uds_path": "/x"},
                                        valid_request=False)
    await c.put("/vsock", {"guest_cid": 3, "uds_path": "/tmp/x.vsock"})
    assert "not link local" in await c.fault(
        "PUT", "/mmds/config", {"network_interfaces": ["eth0"], "ipv4_address": "10.0.0.1"})
    assert "empty" in await c.fault("PUT", "/mmds/config", {"network_interfaces": []})
    await c.put("/mmds/config", {"network_interfaces": ["eth0"], "version": "V2"})
    assert (await c.get("/vm/config"))["mmds-config"]["version"] == "V2"


async def test_mmds_store(monitor: Monitor) -> None:
    c = monitor.client
    assert await c.get("/mmds") == {}
    assert "not initialized" in await c.fault("PATCH", "/mmds", {"a": 1})
    await c.put("/mmds", {"latest": {"meta-data": {"a": "1", "b": "2"}}, "x": 1})
    await c.patch("/mmds", {"latest": {"meta-data": {"b": None, "c": "3"}}, "x": None})
    assert await c.get("/mmds") == {"latest": {"meta-data": {"a": "1", "c": "3"}}}
    assert "larger than the limit of 51200" in await c.fault("PUT", "/mmds", {"big": "x" * 60000})
    await c.patch("/mmds", {"one": "x" * 30000})
    assert "data store limit" in await c.fault("PATCH", "/mmds", {"two": "x" * 30000})
    assert await c.get("/mmds") == {"latest": {"meta-data": {"a": "1", "c": "3"}},
                                    "one": "x" * 30000}
    assert "JSON object" in await c.fault("PUT", "/mmds", [1], valid_request=False)


async def test_post_boot_operations_refused_before_boot(monitor: Monitor) -> None:
    c = monitor.client
    before_boot = "not supported before starting the microVM"
    assert before_boot in await c.fault("PATCH", "/vm", {"state": "Paused"})
    assert before_boot in await c.fault(
        "PUT", "/actions", {"action_type": "SendCtrlAltDel"})
    assert before_boot in await c.fault(
        "PUT", "/snapshot/create", {"snapshot_path": "/tmp/s", "mem_file_path": "/tmp/m"})
    assert "without kernel configuration" in await c.fault(
        "PUT", "/actions", {"action_type": "InstanceStart"})
    assert "unknown variant" in await c.fault("PUT", "/actions", {"action_type": "Reboot"},
                                              valid_request=False)
    assert "unknown variant" in await c.fault("PATCH", "/vm", {"state": "Sleeping"},
                                              valid_request=False)
    assert (await c.get("/"))["state"] == "Not started"


async def test_snapshot_load_only_on_a_fresh_monitor(monitor: Monitor, tmp_path: Path) -> None:
    c = monitor.client
    load = {"snapshot_path": str(tmp_path / "s"),
            "mem_backend": {"backend_type": "File", "backend_path": str(tmp_path / "m")}}
    assert "Cannot load the microVM state" in await c.fault("PUT", "/snapshot/load", load)
    (tmp_path / "s").write_text("{}")
    (tmp_path / "m").write_bytes(b"")
    assert "not a Kiln VMM snapshot" in await c.fault("PUT", "/snapshot/load", load)
    assert "Exactly one" in await c.fault(
        "PUT", "/snapshot/load", {**load, "mem_file_path": str(tmp_path / "m")})
    assert "Uffd" in await c.fault("PUT", "/snapshot/load", {
        **load, "mem_backend": {"backend_type": "Uffd", "backend_path": "/x"}})
    await c.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 128})
    assert "not allowed after configuring" in await c.fault("PUT", "/snapshot/load", load)
