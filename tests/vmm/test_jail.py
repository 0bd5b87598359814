"""The jailed monitor (namespaces, cgroup, pivot_root, uid 65534) and the startup sweep."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from kiln.vmm.jail import cgroup_tree
from kiln.vmm.launch import sweep
from tests.conftest import REPO, process_gone, wait_for
from tests.vmm.conftest import Guest, Snapshot, Spec, ask, restore, start, wait_guest
from tests.vmm.test_vm import _children


def _status(pid: int, key: str) -> list[str]:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return line.split()[1:]
    raise AssertionError(key)


def _jailed_snapshot(root: Path, snapshot: Snapshot) -> Snapshot:
    """The snapshot's files inside the jail root (hard links: no copy), as jail paths."""
    for name, source in (("snap.json", snapshot.state), ("snap.mem", snapshot.mem)):
        os.link(source, root / name)
    return Snapshot("/snap.json", "/snap.mem", 0)


async def test_jailed_monitor_runs_a_vm(tmp_path: Path, spec: Spec, guest: Guest,
                                        snapshot: Snapshot) -> None:
    m = start(tmp_path, "jailed", spec, "--jail", "--jail-bind", os.path.dirname(guest.kernel))
    root = tmp_path / "jailed" / "root"
    group = cgroup_tree().cgroup("jailed")
    try:
        await restore(m, _jailed_snapshot(root, snapshot), "/run/v.sock")
        uds = str(root / "run" / "v.sock")  # jail paths live under the jail root
        await wait_guest(uds, timeout=30)
        assert await ask(uds, "echo from the jail") == "from the jail"

        (inner,) = _children(m.process.pid)
        qemu = _children(inner)
        assert len(qemu) == 1
        for pid in (inner, *qemu):
            assert _status(pid, "Uid") == ["65534"] * 4
            assert _status(pid, "CapEff") == ["0000000000000000"]
            assert _status(pid, "NoNewPrivs") == ["1"]
            jail_root, inside = os.stat(root), os.stat(f"/proc/{pid}/root")
            assert (inside.st_dev, inside.st_ino) == (jail_root.st_dev, jail_root.st_ino)
            for kind in ("pid", "mnt", "net", "ipc", "uts"):
                assert os.readlink(f"/proc/{pid}/ns/{kind}") != os.readlink(f"/proc/self/ns/{kind}")
            assert pid in group.pids()
        assert _status(inner, "NSpid")[-1] == "1"
        assert len(_status(qemu[0], "NSpid")) == 2  # in the jail's PID namespace too
        assert _status(qemu[0], "Seccomp") == ["2"]  # QEMU's -sandbox filter
        # The jail sees none of the host's files but what is bound in.
        hidden = [p for p in ("etc/shadow", "etc/hostname", "var", "home")
                  if os.path.exists("/" + p)]
        assert hidden and not any(os.path.exists(f"/proc/{inner}/root/{p}") for p in hidden)
        assert os.path.exists(f"/proc/{inner}/root{guest.kernel}")
    finally:
        m.stop()
    assert process_gone(inner) and all(process_gone(p) for p in qemu)
    assert not group.exists()
    assert not os.path.exists(m.api_sock)


def test_sweep_after_kill_9(tmp_path: Path, spec: Spec, guest: Guest,
                            snapshot: Snapshot) -> None:
    """The server died with kill -9: its monitors (detached sessions) live on until swept."""
    plain = start(tmp_path, "plain", spec)
    jailed = start(tmp_path, "caged", spec, "--jail", "--jail-bind", os.path.dirname(guest.kernel))
    asyncio.run(restore(plain, snapshot, str(tmp_path / "plain.vsock")))
    asyncio.run(restore(jailed, _jailed_snapshot(tmp_path / "caged" / "root", snapshot),
                        "/run/v.sock"))
    pids = {plain.process.pid, jailed.process.pid}
    for _generation in range(2):
        pids |= {c for p in pids for c in _children(p)}
    assert len(pids) == 5  # plain + QEMU, waiter + jailed monitor + QEMU

    assert sweep(str(tmp_path)) == ["caged", "plain"]
    assert wait_for(lambda: all(process_gone(pid) for pid in pids), 10)
    for m in (plain, jailed):
        m.process.wait()
        assert not os.path.exists(m.api_sock)
        assert not m.vm_dir.exists()
    assert not cgroup_tree().cgroup("caged").exists()
    assert (tmp_path / "plain.console").exists()  # not the sweep's: it only removes VM state
    assert sweep(str(tmp_path)) == []


def test_cli_sweep_and_run(tmp_path: Path) -> None:
    stale = tmp_path / "gone"
    stale.mkdir()
    (stale / "monitor.json").write_text(json.dumps(
        {"pid": 2 ** 22 + 1, "api_sock": str(tmp_path / "gone.sock"), "jailed": False}))
    done = subprocess.run([sys.executable, "-m", "kiln.cli", "vmm", "sweep", str(tmp_path)],
                          capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["gone"]
    assert not stale.exists()
    bad = subprocess.run([sys.executable, "-m", "kiln.cli", "vmm", "run", "--api-sock",
                          str(tmp_path / "x.sock"), "--id", "bad/id"],
                         capture_output=True, text=True, cwd=REPO)
    assert bad.returncode == 2 and "invalid --id" in bad.stderr
