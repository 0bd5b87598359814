"""Units of the microvm backend and its guest image (no VM boots here: tests/e2e/test_microvm.py
boots them)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
from dataclasses import replace
from pathlib import Path

import pytest

from kiln.runtime.runtimes import BOOTSTRAP_DIR
from kiln.sandbox.microvm import (
    MAX_SNAPSHOTS,
    MicrovmBackend,
    guest_config,
    snapshot_key,
    vcpus_for,
)
from kiln.sandbox.types import SandboxSpec
from kiln.vmm.guest import image
from kiln.vmm.guest.image import GuestImage, ImageError

TASK_ROOT = Path("/data/code/0123abcd")


def python_spec(**changes: object) -> SandboxSpec:
    spec = SandboxSpec(
        env_id="e" * 32,
        argv=["/opt/py/bin/python3.11", "-s", "-u", str(BOOTSTRAP_DIR / "python_bootstrap.py")],
        env={"LAMBDA_TASK_ROOT": str(TASK_ROOT), "AWS_EXECUTION_ENV": "AWS_Lambda_python3.11",
             "LD_LIBRARY_PATH": f"/lib64:{TASK_ROOT}:{TASK_ROOT}/lib:/opt/lib",
             "LAMBDA_RUNTIME_DIR": str(BOOTSTRAP_DIR),
             "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/27/[$LATEST]" + "e" * 32, "MINE": "x"},
        task_root=TASK_ROOT)
    return replace(spec, **changes)  # type: ignore[arg-type]


def test_python_runtime_runs_on_the_guest_interpreter_with_guest_paths() -> None:
    config = guest_config(python_spec())
    assert config["argv"] == ["/usr/bin/python3.11", "-s", "-u",
                              "/var/runtime/python_bootstrap.py"]
    assert config["cwd"] == "/var/task"
    env = config["env"]
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert env["LD_LIBRARY_PATH"] == "/lib64:/var/task:/var/task/lib:/opt/lib"
    assert env["LAMBDA_RUNTIME_DIR"] == "/var/runtime"
    assert env["AWS_LAMBDA_RUNTIME_API"] == "127.0.0.1:9001"
    assert env["MINE"] == "x"
    assert "AWS_LAMBDA_LOG_STREAM_NAME" not in env  # restores would all carry the first one's


def test_other_python_versions_ask_for_their_own_guest_interpreter() -> None:
    spec = python_spec()
    spec = replace(spec, env={**spec.env, "AWS_EXECUTION_ENV": "AWS_Lambda_python3.12"})
    assert guest_config(spec)["argv"][0] == "/usr/bin/python3.12"


def test_provided_bootstrap_is_mapped_into_the_guest_task_root() -> None:
    spec = python_spec(argv=[str(TASK_ROOT / "bootstrap")])
    assert guest_config(spec)["argv"] == ["/var/task/bootstrap"]


def test_merged_layers_are_mapped_to_opt() -> None:
    layers = Path("/data/code/opt/5eed")
    spec = python_spec(argv=[str(layers / "bootstrap")], layers=[layers],
                       env={"PATH": f"/usr/bin:{layers}/bin", "PYTHONPATH": f"{layers}/python"})
    config = guest_config(spec)
    assert config["argv"] == ["/opt/bootstrap"]
    assert config["env"]["PATH"] == "/usr/bin:/opt/bin"
    assert config["env"]["PYTHONPATH"] == "/opt/python"


def test_node_runtime_runs_the_images_node_wherever_the_hosts_is() -> None:
    spec = python_spec(argv=["/opt/node-v20/bin/node", str(BOOTSTRAP_DIR / "node_bootstrap.mjs")],
                       env={"AWS_EXECUTION_ENV": "AWS_Lambda_nodejs20.x",
                            "NODE_PATH": f"{TASK_ROOT}/node_modules"})
    config = guest_config(spec)
    assert config["argv"] == [image.GUEST_NODE, "/var/runtime/node_bootstrap.mjs"]
    assert config["env"]["NODE_PATH"] == "/var/task/node_modules"


@pytest.mark.parametrize(("memory", "vcpus"), [(128, 1), (1769, 1), (1770, 2), (3008, 2),
                                               (10240, 6)])
def test_vcpus_follow_lambdas_memory_proportion(memory: int, vcpus: int) -> None:
    assert vcpus_for(memory) == vcpus


def test_snapshot_key_ignores_per_environment_values_only(tmp_path: Path) -> None:
    fake = GuestImage(tmp_path / "abc", {})
    spec = python_spec()
    other_env = python_spec(env_id="f" * 32, env={
        **spec.env, "AWS_LAMBDA_LOG_STREAM_NAME": "2026/11/27/[$LATEST]" + "f" * 32})

    def key(s: SandboxSpec) -> str:
        return snapshot_key(fake, s, guest_config(s))

    assert key(spec) == key(other_env)
    assert key(spec) != key(python_spec(memory_mb=256))
    assert key(spec) != key(python_spec(env={**spec.env, "MINE": "y"}))
    assert key(spec) != key(python_spec(task_root=Path("/data/code/ffff")))


def read_cpio(data: bytes) -> dict[str, tuple[int, bytes, int]]:
    """name -> (mode, data, rdev) of a newc archive."""
    entries, offset = {}, 0
    while True:
        assert data[offset:offset + 6] == b"070701"
        fields = [int(data[offset + 6 + 8 * i:offset + 14 + 8 * i], 16) for i in range(13)]
        name_size, size = fields[11], fields[6]
        start = offset + 110
        name = data[start:start + name_size - 1].decode()
        body = start + name_size + (-(start + name_size) % 4)
        if name == "TRAILER!!!":
            return entries
        entries[name] = (fields[1], data[body:body + size], os.makedev(fields[9], fields[10]))
        offset = body + size + (-(body + size) % 4)


def test_initramfs_holds_busybox_the_modules_and_init(tmp_path: Path) -> None:
    busybox = tmp_path / "busybox"
    busybox.write_bytes(b"\x7fELF-busybox")
    for module in image.MODULES:
        (tmp_path / "modules" / module).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "modules" / module).write_bytes(module.encode())
    entries = read_cpio(image._initramfs(busybox, tmp_path / "modules"))
    mode, init, _ = entries["init"]
    assert stat.S_ISREG(mode) and mode & 0o111 and init.decode() == image.INIT
    assert entries["bin/busybox"][1] == b"\x7fELF-busybox"
    assert stat.S_ISLNK(entries["bin/sh"][0]) and entries["bin/sh"][1] == b"busybox"
    mode, _, rdev = entries["dev/console"]
    assert stat.S_ISCHR(mode) and rdev == os.makedev(5, 1)
    for module in image.MODULES:
        assert entries[f"lib/modules/{Path(module).name}"][1] == module.encode()


def test_a_missing_image_names_the_command_that_builds_it(tmp_path: Path) -> None:
    with pytest.raises(ImageError, match="kiln microvm build-image"):
        MicrovmBackend(tmp_path / "sandboxes")


def test_an_image_of_another_kiln_version_is_refused(tmp_path: Path) -> None:
    built = tmp_path / "images" / "0123"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({"files": {"agent.py": "old"}}))
    (tmp_path / "images" / "current").symlink_to("0123")
    with pytest.raises(ImageError, match="another version of Kiln"):
        GuestImage.current(tmp_path / "images")


def test_snapshots_are_evicted_least_recently_used_first(tmp_path: Path) -> None:
    built = tmp_path / "images" / "0123"
    built.mkdir(parents=True)
    (built / "manifest.json").write_text(json.dumps({"files": image._file_digests()}))
    (tmp_path / "images" / "current").symlink_to("0123")
    backend = MicrovmBackend(tmp_path / "sandboxes", images=tmp_path / "images")
    paths = {}
    for index in range(MAX_SNAPSHOTS):
        paths[index] = backend.snapshots_dir / f"k{index}"
        paths[index].mkdir()
        backend.add_snapshot(f"k{index}", paths[index])
    assert backend.use_snapshot("k0") == paths[0]  # now the most recently used
    extra = backend.snapshots_dir / "extra"
    extra.mkdir()
    backend.add_snapshot("extra", extra)
    assert backend.use_snapshot("k1") is None and not paths[1].exists()  # evicted, removed
    assert backend.use_snapshot("k0") == paths[0] and backend.use_snapshot("extra") == extra


def test_node_input_is_the_resolved_binary_its_digest_and_version(tmp_path: Path) -> None:
    assert image.node_input(None) is None  # no node on the host: none in the image
    binary = tmp_path / "node-v99"
    binary.write_text("#!/bin/sh\necho v99.1.2\n")
    binary.chmod(0o755)
    (tmp_path / "node").symlink_to(binary)
    assert image.node_input(str(tmp_path / "node")) == {
        "path": str(binary), "version": "v99.1.2",
        "sha256": hashlib.sha256(binary.read_bytes()).hexdigest()}


def test_an_image_whose_node_the_host_has_since_changed_is_refused(tmp_path: Path) -> None:
    binary = tmp_path / "node"
    binary.write_text("#!/bin/sh\necho v20.1.0\n")
    binary.chmod(0o755)
    built = tmp_path / "images" / "0123"
    built.mkdir(parents=True)
    recorded = image.node_input(str(binary))
    assert recorded is not None
    (built / "manifest.json").write_text(json.dumps({
        "files": image._file_digests(), "node_source": str(binary),
        "node": {"sha256": recorded["sha256"], "version": recorded["version"]}}))
    (tmp_path / "images" / "current").symlink_to("0123")
    assert GuestImage.current(tmp_path / "images").manifest["node_source"] == str(binary)
    binary.write_text("#!/bin/sh\necho v20.2.0\n")  # the host's node upgraded in place
    with pytest.raises(ImageError, match=r"node changed since .* Node.js v20.1.0: run "
                                         "'kiln microvm build-image'"):
        GuestImage.current(tmp_path / "images")


HOST_NODE = shutil.which("node")
HOST_LIBS = Path("/lib/x86_64-linux-gnu")


@pytest.mark.skipif(HOST_NODE is None or not (HOST_LIBS / "libstdc++.so.6").exists(),
                    reason="needs a host node linked against Debian's multiarch libraries")
def test_a_node_whose_libraries_the_root_lacks_fails_the_build(tmp_path: Path) -> None:
    """The check runs the root's own loader: a library only the host has is named."""
    assert HOST_NODE is not None
    root = tmp_path / "root"
    libs = root / "lib/x86_64-linux-gnu"
    libs.mkdir(parents=True)
    (root / "lib64").mkdir()
    (root / "lib64/ld-linux-x86-64.so.2").symlink_to("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2")
    for name in ("ld-linux-x86-64.so.2", "libc.so.6", "libm.so.6", "libdl.so.2",
                 "libpthread.so.0", "libgcc_s.so.1"):
        shutil.copy(HOST_LIBS / name, libs / name)
    (root / "usr/bin").mkdir(parents=True)
    shutil.copy(HOST_NODE, root / "usr/bin/node")
    with pytest.raises(ImageError, match=r"/usr/bin/node cannot run in the guest: needs "
                                         r"libstdc\+\+\.so\.6, .*KILN_NODE_BINARY"):
        image.check_libraries(root, image.GUEST_NODE)
    shutil.copy(HOST_LIBS / "libstdc++.so.6", libs / "libstdc++.so.6")
    image.check_libraries(root, image.GUEST_NODE)


@pytest.mark.parametrize(("monitor", "kernel"), [
    ({"app_name": "Firecracker", "vmm_version": "1.16.0",
      "kiln": {"engine": "firecracker", "accelerator": "kvm"}}, "vmlinux"),
    ({"app_name": "Firecracker", "vmm_version": "1.8.0",
      "kiln": {"engine": "firecracker", "accelerator": "kvm"}}, "vmlinux"),
    ({"app_name": "Firecracker", "vmm_version": "0.0.0",
      "kiln": {"engine": "qemu", "accelerator": "tcg"}}, "vmlinuz"),
    ({"app_name": "Firecracker"}, "vmlinuz"),
])
def test_firecracker_boots_the_elf_vmlinux_qemu_the_bzimage(monitor: dict[str, object],
                                                            kernel: str) -> None:
    image = GuestImage(Path("/images/0123"), {})
    assert image.kernel_for(monitor) == Path("/images/0123") / kernel


def test_a_firecracker_without_acpi_is_refused_with_the_version_needed() -> None:
    """Before 1.8 Firecracker names the guest's devices only on the kernel command line, which
    Debian's kernel ignores: the guest would find no disk."""
    image = GuestImage(Path("/images/0123"), {})
    with pytest.raises(ImageError, match=r"Firecracker 1\.7\.0 .* needs Firecracker 1\.8 or newer"):
        image.kernel_for({"vmm_version": "1.7.0", "kiln": {"engine": "firecracker"}})
