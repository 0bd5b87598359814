"""A seccomp-BPF deny list, assembled by hand (no libseccomp).

The filter is an allow-by-default list: every system call a function never needs (mount, ptrace,
bpf, kexec, module loading, keyrings, perf, namespace changes, clock and host changes, io_uring,
the new mount API, ...) fails with ``EPERM``.  ``clone`` fails with ``EPERM`` when asked for a new
namespace, and ``clone3`` fails with ``ENOSYS`` (its flags live in memory a filter cannot read, so
libc falls back to ``clone``, as Docker's default profile does).  A foreign architecture (x32 or
32-bit syscalls entered through ``int 0x80``) kills the process.

``build_filter()`` returns the program as bytes (cheap to keep and to hand to a forked child);
``install(program)`` sets ``no_new_privs`` and loads it; it survives ``execve``.
"""

from __future__ import annotations

import ctypes
import errno
import platform
import struct

# BPF opcodes (linux/bpf_common.h) and seccomp return values (linux/seccomp.h).
_LD_W_ABS = 0x20
_JEQ_K = 0x15
_JGE_K = 0x35
_JSET_K = 0x45
_RET_K = 0x06
RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

# offsets in struct seccomp_data
_OFF_NR = 0
_OFF_ARCH = 4
_OFF_ARG0_LO = 16  # little-endian: the low 32 bits of args[0]

_CLONE_NAMESPACES = (
    0x00020000  # CLONE_NEWNS
    | 0x02000000  # CLONE_NEWCGROUP
    | 0x04000000  # CLONE_NEWUTS
    | 0x08000000  # CLONE_NEWIPC
    | 0x10000000  # CLONE_NEWUSER
    | 0x20000000  # CLONE_NEWPID
    | 0x40000000  # CLONE_NEWNET
)

# Numbers from 424 on are the same on every architecture.
_COMMON = {
    "pidfd_getfd": 438,
    "io_uring_setup": 425,
    "io_uring_enter": 426,
    "io_uring_register": 427,
    "open_tree": 428,
    "move_mount": 429,
    "fsopen": 430,
    "fsconfig": 431,
    "fsmount": 432,
    "fspick": 433,
    "mount_setattr": 442,
    "quotactl_fd": 443,
}

#: (audit arch, x32 bit or 0, clone nr, clone3 nr, {name: nr}) per machine.
_X86_64 = {
    "mount": 165,
    "umount2": 166,
    "swapon": 167,
    "swapoff": 168,
    "reboot": 169,
    "sethostname": 170,
    "setdomainname": 171,
    "iopl": 172,
    "ioperm": 173,
    "create_module": 174,
    "init_module": 175,
    "delete_module": 176,
    "get_kernel_syms": 177,
    "query_module": 178,
    "quotactl": 179,
    "nfsservctl": 180,
    "acct": 163,
    "settimeofday": 164,
    "pivot_root": 155,
    "chroot": 161,
    "ptrace": 101,
    "syslog": 103,
    "uselib": 134,
    "ustat": 136,
    "sysfs": 139,
    "vhangup": 153,
    "modify_ldt": 154,
    "adjtimex": 159,
    "clock_settime": 227,
    "lookup_dcookie": 212,
    "kexec_load": 246,
    "add_key": 248,
    "request_key": 249,
    "keyctl": 250,
    "unshare": 272,
    "perf_event_open": 298,
    "fanotify_init": 300,
    "name_to_handle_at": 303,
    "open_by_handle_at": 304,
    "clock_adjtime": 305,
    "setns": 308,
    "process_vm_readv": 310,
    "process_vm_writev": 311,
    "kcmp": 312,
    "finit_module": 313,
    "kexec_file_load": 320,
    "bpf": 321,
    "userfaultfd": 323,
    **_COMMON,
}
_AARCH64 = {
    "lookup_dcookie": 18,
    "umount2": 39,
    "mount": 40,
    "pivot_root": 41,
    "nfsservctl": 42,
    "chroot": 51,
    "vhangup": 58,
    "quotactl": 60,
    "acct": 89,
    "unshare": 97,
    "kexec_load": 104,
    "init_module": 105,
    "delete_module": 106,
    "clock_settime": 112,
    "syslog": 116,
    "ptrace": 117,
    "reboot": 142,
    "sethostname": 161,
    "setdomainname": 162,
    "settimeofday": 170,
    "adjtimex": 171,
    "add_key": 217,
    "request_key": 218,
    "keyctl": 219,
    "swapon": 224,
    "swapoff": 225,
    "perf_event_open": 241,
    "fanotify_init": 262,
    "name_to_handle_at": 264,
    "open_by_handle_at": 265,
    "clock_adjtime": 266,
    "setns": 268,
    "process_vm_readv": 270,
    "process_vm_writev": 271,
    "kcmp": 272,
    "finit_module": 273,
    "bpf": 280,
    "userfaultfd": 282,
    "kexec_file_load": 294,
    **_COMMON,
}
_ARCHES: dict[str, tuple[int, int, int, dict[str, int]]] = {
    # machine: (AUDIT_ARCH_*, x32 syscall bit, __NR_clone, table)
    "x86_64": (0xC000003E, 0x40000000, 56, _X86_64),
    "aarch64": (0xC00000B7, 0, 220, _AARCH64),
}
_CLONE3 = 435

#: Names refused with EPERM on every supported architecture (where the call exists).
DENIED = sorted(set(_X86_64) | set(_AARCH64))


def _insn(code: int, k: int, jt: int = 0, jf: int = 0) -> bytes:
    return struct.pack("=HBBI", code, jt, jf, k)


def supported() -> bool:
    return platform.machine() in _ARCHES


#: What a SnapStart template (``_snapshot``) needs beyond a function to make its forks'
#: namespaces (a user namespace, then mounts and a host name inside it).  Only the template,
#: which never serves an invoke, runs with these allowed; every fork stacks the full filter.
TEMPLATE_ALLOWED = frozenset({"unshare", "mount", "sethostname"})


def build_filter(machine: str | None = None, allow: frozenset[str] = frozenset()) -> bytes:
    """The filter program (``struct sock_filter[]``) for this machine; ``allow``: names to
    leave out of the deny list."""
    machine = machine or platform.machine()
    if machine not in _ARCHES:
        raise OSError(errno.ENOSYS, f"no seccomp syscall table for {machine}")
    audit_arch, x32_bit, clone_nr, all_denied = _ARCHES[machine]
    table = {name: nr for name, nr in all_denied.items() if name not in allow}
    eperm = RET_ERRNO | errno.EPERM
    prog = [
        _insn(_LD_W_ABS, _OFF_ARCH),
        _insn(_JEQ_K, audit_arch, jt=1, jf=0),
        _insn(_RET_K, RET_KILL_PROCESS),
        _insn(_LD_W_ABS, _OFF_NR),
    ]
    if x32_bit:
        prog += [_insn(_JGE_K, x32_bit, jt=0, jf=1), _insn(_RET_K, eperm)]
    for nr in sorted(set(table.values())):
        prog += [_insn(_JEQ_K, nr, jt=0, jf=1), _insn(_RET_K, eperm)]
    prog += [
        _insn(_JEQ_K, _CLONE3, jt=0, jf=1),
        _insn(_RET_K, RET_ERRNO | errno.ENOSYS),
        _insn(_JEQ_K, clone_nr, jt=1, jf=0),
        _insn(_RET_K, RET_ALLOW),
        _insn(_LD_W_ABS, _OFF_ARG0_LO),
        _insn(_JSET_K, _CLONE_NAMESPACES, jt=0, jf=1),
        _insn(_RET_K, eperm),
        _insn(_RET_K, RET_ALLOW),
    ]
    return b"".join(prog)


class _SockFprog(ctypes.Structure):
    _fields_ = (("len", ctypes.c_ushort), ("filter", ctypes.c_void_p))


def install(program: bytes) -> None:
    """Set ``no_new_privs`` and load ``program`` into the calling thread (inherited on fork)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_NO_NEW_PRIVS): " + errno.errorcode.get(err, "?"))
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(len(program) // 8, ctypes.cast(buf, ctypes.c_void_p))
    if libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.byref(fprog), 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "prctl(PR_SET_SECCOMP): " + errno.errorcode.get(err, "?"))
