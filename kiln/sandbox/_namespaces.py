"""Namespace, mount and credential primitives through ctypes (Python 3.11 has no ``os.unshare``).

Everything here runs in the forked children of the launcher (``_launcher.py``), never in the
server process.  After ``pivot_root`` nothing may be imported lazily, so this module only uses
what it imports at the top.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import socket
import struct
from collections.abc import Iterable, Iterator

libc = ctypes.CDLL(None, use_errno=True)

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000

MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
MNT_DETACH = 0x2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_DROP = 24
PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

_SIOCGIFFLAGS = 0x8913
_SIOCSIFFLAGS = 0x8914
_IFF_UP = 0x1


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def unshare(flags: int) -> None:
    _check(libc.unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int = 0, data: str | None = None
) -> None:
    _check(
        libc.mount(
            source.encode() if source is not None else None,
            target.encode(),
            fstype.encode() if fstype is not None else None,
            ctypes.c_ulong(flags),
            data.encode() if data is not None else None,
        ),
        f"mount {source or fstype} on {target}",
    )


def umount2(target: str, flags: int) -> None:
    _check(libc.umount2(target.encode(), flags), f"umount {target}")


def pivot_root(new_root: str, put_old: str) -> None:
    _check(libc.syscall(155 if _X86_64 else 41, new_root.encode(), put_old.encode()), "pivot_root")


def prctl(option: int, arg2: int = 0) -> None:
    _check(libc.prctl(option, ctypes.c_ulong(arg2), 0, 0, 0), f"prctl({option})")


_X86_64 = os.uname().machine == "x86_64"


def bind_ro(source: str, target: str, *, recursive: bool = False, extra: int = 0) -> None:
    """Bind ``source`` on ``target`` read-only, nosuid, nodev."""
    mount(source, target, None, MS_BIND | (MS_REC if recursive else 0))
    mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV | extra)


def loopback_up() -> None:
    """Bring ``lo`` up in the current network namespace (a new one starts with it down)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        ifreq = struct.pack("16sH22x", b"lo", 0)
        flags = struct.unpack("16sH22x", fcntl.ioctl(s.fileno(), _SIOCGIFFLAGS, ifreq))[1]
        fcntl.ioctl(s.fileno(), _SIOCSIFFLAGS, struct.pack("16sH22x", b"lo", flags | _IFF_UP))


def drop_privileges(uid: int, gid: int) -> None:
    """Become ``uid:gid`` with no supplementary groups and an empty capability bounding set.

    setresuid from root to a non-zero uid clears the permitted, effective and ambient sets.
    """
    cap = 0
    while libc.prctl(PR_CAPBSET_DROP, ctypes.c_ulong(cap), 0, 0, 0) == 0:
        cap += 1
    if ctypes.get_errno() != errno.EINVAL or cap == 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")
    libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def reaped() -> Iterator[tuple[int, int]]:
    """(pid, wait status) of each child that has exited, collected without waiting."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, status


def reap_children() -> None:
    """Collect every exited child, without waiting."""
    for _ in reaped():
        pass


def map_own_ids(uid: int, gid: int) -> None:
    """In a user namespace just made by an unprivileged process: map its own uid and gid to
    themselves (all an unprivileged process may map), with ``setgroups`` denied as required."""
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1\n"),
                       ("gid_map", f"{gid} {gid} 1\n")):
        fd = os.open(f"/proc/self/{name}", os.O_WRONLY | os.O_CLOEXEC)  # no O_CREAT/O_TRUNC
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            raise OSError(exc.errno, f"writing /proc/self/{name}: {exc.strerror}") from None
        finally:
            os.close(fd)


class _CapHeader(ctypes.Structure):
    _fields_ = (("version", ctypes.c_uint32), ("pid", ctypes.c_int))


def drop_capabilities() -> None:
    """Clear the effective, permitted and inheritable capability sets (``capset``): what a
    process keeps in a user namespace it made, as no uid change clears them there."""
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (ctypes.c_uint32 * 6)()  # two struct __user_cap_data_struct, all zero
    _check(libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")


def mkdirs(path: str, mode: int = 0o755) -> None:
    """``os.makedirs`` that leaves every created directory at ``mode`` (no umask surprises)."""
    parts = path.strip("/").split("/")
    current = ""
    for part in parts:
        current += "/" + part
        try:
            os.mkdir(current)
        except FileExistsError:
            continue
        os.chmod(current, mode)


def touch(path: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, mode)
    os.close(fd)


def bind_ro_beneath(path: str, root: str) -> None:
    """Bind ``path`` (a directory, recursively, or a file) read-only at the same path beneath
    ``root``, making the mount point; nothing when ``path`` does not exist."""
    target = root + path
    if os.path.isdir(path):
        mkdirs(target)
        bind_ro(path, target, recursive=True)
    elif os.path.exists(path):
        mkdirs(os.path.dirname(target))
        if not os.path.exists(target):
            touch(target)
        bind_ro(path, target)


def write_file(path: str, text: str, mode: int = 0o644) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.chmod(path, mode)


def close_fds_except(keep: Iterable[int]) -> None:
    """Close every descriptor from 3 up except ``keep``."""
    keep_sorted = sorted(k for k in set(keep) if k >= 3)
    low = 3
    for fd in keep_sorted:
        if fd > low:
            _close_range(low, fd - 1)
        low = fd + 1
    _close_range(low, 0xFFFFFFFF)


def _close_range(first: int, last: int) -> None:
    if libc.syscall(436, ctypes.c_uint(first), ctypes.c_uint(last), 0) == 0:  # close_range
        return
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if first <= fd <= last:
            with contextlib.suppress(OSError):
                os.close(fd)


def show_as_exec(argv: list[str], env: dict[str, str]) -> None:
    """Write ``argv`` and ``env`` over this process's start-up argument and environment areas
    (as setproctitle does; truncated to their size), so that ``ps`` and ``/proc/<pid>/cmdline``
    and ``environ`` show the runtime as if it had been exec'd."""
    with open("/proc/self/stat", "rb") as stat:
        fields = stat.read().rsplit(b")", 1)[1].split()
    arg_start, arg_end, env_start, env_end = (int(fields[n - 3]) for n in (48, 49, 50, 51))
    for start, end, items in ((arg_start, arg_end, argv),
                              (env_start, env_end, [f"{k}={v}" for k, v in env.items()])):
        size = end - start
        block = b"".join(item.encode() + b"\0" for item in items)[:size]
        ctypes.memmove(start, block.ljust(size, b"\0"), size)
