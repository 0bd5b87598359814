"""Unit tests of the isolated backend's helpers: the seccomp program, cgroup v1/v2 discovery and
files (v2 against a fake cgroupfs, and for real where the kernel offers it), path discovery."""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
from pathlib import Path

import pytest

from kiln.sandbox import _seccomp
from kiln.sandbox._cgroups import CgroupTree, CgroupV2, Limits
from kiln.sandbox.isolated import runtime_paths

MOUNTINFO_V2 = """\
24 1 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
"""
MOUNTINFO_V1 = """\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""


def test_seccomp_programs_assemble() -> None:
    for machine in ("x86_64", "aarch64"):
        program = _seccomp.build_filter(machine)
        assert len(program) % 8 == 0 and len(program) // 8 < 4096
    with pytest.raises(OSError):
        _seccomp.build_filter("sparc")


@pytest.mark.skipif(not _seccomp.supported(), reason="no syscall table for this machine")
def test_seccomp_install_in_a_forked_child() -> None:
    program = _seccomp.build_filter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            _seccomp.install(program)
            libc = ctypes.CDLL(None, use_errno=True)
            denied = libc.unshare(0x10000000) == -1 and ctypes.get_errno() == errno.EPERM
            allowed = os.getpid() > 0 and os.open("/dev/null", os.O_RDONLY) >= 0
            code = 0 if denied and allowed else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_cgroup_discovery_v1_and_v2() -> None:
    v1 = CgroupTree.detect(
        "b1", MOUNTINFO_V1, "4:memory:/svc\n1:cpu,cpuacct:/\n6:freezer:/\n8:pids:/\n0::/\n"
    )
    assert v1.version == 1
    assert v1.parents["memory"] == Path("/sys/fs/cgroup/memory/kiln/b1")
    assert v1.parents["cpu"] == Path("/sys/fs/cgroup/cpu,cpuacct/kiln/b1")
    # v2 is chosen when its hierarchy has the memory controller (checked on the real file, so
    # here only the fallback to v1 is visible: this machine's unified mount has no memory).
    with pytest.raises(OSError):
        CgroupTree.detect("b2", MOUNTINFO_V2, "0::/user.slice/kiln-host\n", prefer=1)


def test_cgroup_v2_files_on_a_fake_cgroupfs(tmp_path: Path) -> None:
    group = CgroupV2(tmp_path / "env")
    (tmp_path / "env").mkdir()
    for name, text in {
        "memory.max": "max",
        "memory.swap.max": "max",
        "memory.oom.group": "0",
        "pids.max": "max",
        "cpu.weight": "100",
        "cpu.max": "max 100000",
        "cgroup.freeze": "0",
        "cgroup.kill": "",
        "cgroup.procs": "",
        "memory.peak": str(77 * 2**20),
        "memory.events": "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n",
        "cgroup.events": "populated 0\nfrozen 1\n",
    }.items():
        (tmp_path / "env" / name).write_text(text)
    group.create(Limits(memory_mb=512, cpu_quota_vcpus=1.0, pids_max=1024))
    read = {p.name: p.read_text() for p in (tmp_path / "env").iterdir()}
    assert read["memory.max"] == str(512 * 2**20)
    assert read["memory.swap.max"] == "0" and read["memory.oom.group"] == "1"
    assert read["pids.max"] == "1024"
    assert read["cpu.weight"] == str(round(100 * 512 / 1769))
    assert read["cpu.max"] == "100000 100000"
    group.set_cpu(512 / 1769)
    assert (tmp_path / "env" / "cpu.max").read_text() == f"{round(100000 * 512 / 1769)} 100000"
    group.request_freeze(True)
    assert (tmp_path / "env" / "cgroup.freeze").read_text() == "1"
    assert group.is_frozen()
    assert group.peak_bytes() == 77 * 2**20 and group.oom_kills() == 1
    assert group.procs_files() == [str(tmp_path / "env" / "cgroup.procs")]
    assert group.kill_step() is True
    assert (tmp_path / "env" / "cgroup.kill").read_text() == "1"


def _real_v2() -> str | None:
    try:
        tree = CgroupTree.detect("probe", prefer=2)
    except OSError as exc:
        return str(exc)
    return None if tree.version == 2 else "no cgroup v2 memory controller"


def test_real_cgroup_v2_when_available(isolation_features: None) -> None:
    reason = _real_v2()
    if reason:
        print(f"SKIP reason: cgroup v2 not usable on this kernel: {reason}")
        pytest.skip(f"cgroup v2 not usable on this kernel: {reason}")
    tree = CgroupTree.detect(f"t{os.getpid()}", prefer=2)
    tree.ensure()
    group = tree.cgroup("env")
    try:
        assert isinstance(group, CgroupV2)
        group.create(Limits(memory_mb=64, cpu_quota_vcpus=0.5, pids_max=32))
        assert (group.path / "memory.max").read_text().strip() == str(64 * 2**20)
        group.request_freeze(True)
        group.request_freeze(False)
    finally:
        assert group.kill_step()
        assert group.remove()
        tree.remove_parents()


def test_runtime_paths(tmp_path: Path) -> None:
    script = tmp_path / "bootstrap.py"
    script.write_text("")
    paths = runtime_paths(["/usr/bin/python3", "-s", str(script), "/var/task/x"])
    assert paths == [str(script)]
    if Path(sys.prefix, "pyvenv.cfg").exists():
        found = runtime_paths([sys.executable])
        assert sys.prefix in found and sys.base_prefix in found
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to("/usr/bin/python3")
    (venv / "pyvenv.cfg").write_text("home = /opt/py/bin\n")
    # /opt is the layers' mount point inside, so a host /opt prefix is not exposed there.
    assert runtime_paths([str(venv / "bin" / "python")]) == [str(venv)]


@pytest.mark.skipif(platform.machine() != "x86_64", reason="x86_64 numbers")
def test_denied_list_covers_the_issue() -> None:
    for name in (
        "mount",
        "umount2",
        "ptrace",
        "bpf",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "keyctl",
        "add_key",
        "request_key",
        "perf_event_open",
        "unshare",
        "setns",
        "pivot_root",
        "chroot",
        "swapon",
        "swapoff",
        "reboot",
    ):
        assert name in _seccomp.DENIED
