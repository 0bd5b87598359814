"""Jail the monitor as Firecracker's jailer does: cgroup, namespaces, a new root, no privileges.

``enter(spec)`` runs as root at the monitor's start.  It creates the cgroup ``kiln/vmm/<id>``,
unshares PID/IPC/UTS/network namespaces and forks (the child joins the cgroup and unshares its
mount namespace); the parent stays
outside as a waiter (it relays SIGTERM, and on the child's exit removes the cgroup and API
socket, then exits with the child's status); the child, pid 1 of the new PID namespace, dies with
the waiter (``PR_SET_PDEATHSIG``), builds its root in ``<vm dir>/root`` -- read-only binds of the
system directories, the Python installation and Kiln, a minimal ``/dev`` (``/dev/kvm`` made with
``mknod`` and given to the jail's uid, as the jailer does), a fresh ``/proc`` -- ``pivot_root``s
into it, sets ``no_new_privs`` and becomes ``uid:gid`` with no capabilities.  ``enter`` returns in
that child.  Paths in API bodies are then inside the jail root.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import stat
import sys
from dataclasses import dataclass, field

from kiln.sandbox import _namespaces as ns
from kiln.sandbox._cgroups import Cgroup, CgroupTree, Limits

CGROUP_PARENT = "vmm"
PIDS_MAX = 256
NOFILE = 2048
PR_SET_NO_NEW_PRIVS = 38
_SYSTEM = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
_ETC = ("ld.so.cache", "ld.so.conf", "ld.so.conf.d")
_DEVICES = ("null", "zero", "full", "random", "urandom")
KVM_DEVICE = (10, 232)


@dataclass
class JailSpec:
    vm_id: str
    vm_dir: str
    uid: int = 65534
    gid: int = 65534
    memory_mb: int = 2048
    cpus: float | None = None
    #: Host paths bound read-only at the same path inside the jail.
    binds: list[str] = field(default_factory=list)
    kvm: bool = False

    @property
    def root(self) -> str:
        return f"{self.vm_dir}/root"


def die_with_monitor() -> None:
    """``preexec_fn`` of the engine's process: killed when the monitor dies, however it dies."""
    ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)


def cgroup_tree() -> CgroupTree:
    return CgroupTree.detect(CGROUP_PARENT)


def enter(spec: JailSpec, api_sock: str) -> None:
    root = spec.root
    ns.mkdirs(f"{root}/run", 0o755)
    for path in (root, f"{root}/run"):
        os.chown(path, spec.uid, spec.gid)
    tree = cgroup_tree()
    tree.ensure()
    group = tree.cgroup(spec.vm_id)
    group.create(Limits(spec.memory_mb, spec.cpus, PIDS_MAX))
    ns.unshare(ns.CLONE_NEWPID | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS | ns.CLONE_NEWNET)
    pid = os.fork()
    if pid:
        _wait(pid, group, api_sock)
    ns.prctl(ns.PR_SET_PDEATHSIG, signal.SIGKILL)
    # The waiter stays out of the cgroup: it freezes and kills the cgroup's content at the end.
    for procs in group.procs_files():
        with open(procs, "w") as f:
            f.write("0")
    # Only the child: pivot_root moves every process of the mount namespace that shares the
    # old root, and the waiter must keep the host's view to clean up.
    ns.unshare(ns.CLONE_NEWNS)
    hostname = spec.vm_id.encode()[:64]
    ns.libc.sethostname(hostname, len(hostname))
    _build_root(spec)
    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")
    resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, NOFILE))
    ns.prctl(PR_SET_NO_NEW_PRIVS, 1)
    ns.drop_privileges(spec.uid, spec.gid)


def _wait(pid: int, group: Cgroup, api_sock: str) -> None:
    """The waiter: relay SIGTERM/SIGINT, reap the jailed monitor, clean up, exit like it."""
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda s, _f: os.kill(pid, s))
    _, status = os.waitpid(pid, 0)  # retried after the relaying handler runs (PEP 475)
    with contextlib.suppress(OSError):
        os.unlink(api_sock)
    for _ in range(1000):
        if group.kill_step() and group.remove():
            break
        os.sched_yield()
    os._exit(os.waitstatus_to_exitcode(status) & 0xFF)


def _build_root(spec: JailSpec) -> None:
    root = spec.root
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    ns.mount(root, root, None, ns.MS_BIND)
    for name in _SYSTEM:
        host = "/" + name
        target = f"{root}/{name}"
        if os.path.islink(host):
            if not os.path.lexists(target):
                os.symlink(os.readlink(host), target)
        elif os.path.isdir(host):
            ns.mkdirs(target)
            ns.bind_ro(host, target, recursive=True)
    for name in _ETC:
        _bind_path(f"/etc/{name}", root)
    # The private /tmp first: binds that live under /tmp (a checkout or data dir there) must land
    # on top of it, not be hidden by it.
    ns.mkdirs(f"{root}/tmp")
    ns.mount("kiln-vmm-tmp", f"{root}/tmp", "tmpfs", ns.MS_NOSUID | ns.MS_NODEV,
             "size=16m,mode=1777")
    python = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.dirname(__file__))}
    for path in sorted(python | set(spec.binds), key=lambda p: (p.count("/"), p)):
        _bind_path(path, root)

    dev = f"{root}/dev"
    ns.mkdirs(dev)
    ns.mount("kiln-vmm-dev", dev, "tmpfs", ns.MS_NOSUID | ns.MS_NOEXEC, "size=64k,mode=755")
    for name in _DEVICES:
        ns.touch(f"{dev}/{name}", 0o666)
        ns.mount(f"/dev/{name}", f"{dev}/{name}", None, ns.MS_BIND)
    if spec.kvm:
        os.mknod(f"{dev}/kvm", stat.S_IFCHR | 0o660, os.makedev(*KVM_DEVICE))
        os.chown(f"{dev}/kvm", spec.uid, spec.gid)
    ns.mkdirs(f"{root}/proc")
    ns.mount("proc", f"{root}/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC)


def _bind_path(path: str, root: str) -> None:
    """Bind ``path`` read-only at the same place under ``root`` (skipped when missing)."""
    ns.bind_ro_beneath(os.path.realpath(path), root)
