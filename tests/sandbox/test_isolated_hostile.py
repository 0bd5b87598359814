"""A hostile function against the isolated backend: every attempt must be refused, and the host
must be unaffected.  Programs run as ``/usr/bin/python3 -S -c CODE`` inside an environment and
print one ``RESULT {json}`` line with the outcome (an errno name, or ``ok``) of each attempt."""

from __future__ import annotations

import asyncio
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from kiln.sandbox.isolated import IsolatedBackend
from tests.sandbox.conftest import run, run_program, spec_for

pytestmark = pytest.mark.usefixtures("isolation_features")

PRELUDE = r"""
import ctypes, errno, json, os, socket, sys
libc = ctypes.CDLL(None, use_errno=True)
R = {}
def sc(name, nr, *args):
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    R[name] = "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), str(ctypes.get_errno()))
def attempt(name, fn):
    try:
        v = fn()
        R[name] = "ok" if v is None else v
    except OSError as e:
        R[name] = errno.errorcode.get(e.errno, str(e.errno))
"""
EPILOGUE = '\nprint("RESULT " + json.dumps(R), flush=True)\n'


def results(output: str) -> dict[str, Any]:
    for line in output.splitlines():
        if line.startswith("RESULT "):
            parsed: dict[str, Any] = json.loads(line[len("RESULT ") :])
            return parsed
    raise AssertionError(f"no RESULT line in output:\n{output}")


def hostile(sandbox_root: Path, task_root: Path, body: str, **kwargs: Any) -> dict[str, Any]:
    async def go() -> tuple[int, str]:
        backend = IsolatedBackend(sandbox_root)
        try:
            return await run_program(backend, task_root, PRELUDE + body + EPILOGUE, **kwargs)
        finally:
            await backend.close()

    rc, output = run(go)
    assert rc == 0, output
    return results(output)


def test_identity_and_confinement(sandbox_root: Path, task_root: Path) -> None:
    r = hostile(
        sandbox_root,
        task_root,
        r"""
lines = open("/proc/self/status").read().splitlines()
status = dict(l.split(":\t", 1) for l in lines if ":\t" in l)
R["ids"] = [os.getuid(), os.geteuid(), os.getgid(), os.getgroups()]
R["pid"] = os.getpid()
R["caps"] = [status[k].strip() for k in ("CapPrm", "CapEff", "CapBnd", "CapAmb")]
R["nnp"] = status["NoNewPrivs"].strip()
R["seccomp"] = status["Seccomp"].strip()
R["cwd"] = os.getcwd()
R["root"] = sorted(os.listdir("/"))
R["ifaces"] = [n for _, n in socket.if_nameindex()]
R["routes"] = len(open("/proc/net/route").read().splitlines())
R["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
R["api"] = os.environ["AWS_LAMBDA_RUNTIME_API"]
R["hostname"] = socket.gethostname()
R["etc"] = sorted(os.listdir("/etc"))
""",
    )
    assert r["ids"] == [993, 993, 990, []]
    assert r["pid"] == 2  # the environment's own init is 1
    assert r["caps"] == ["0000000000000000"] * 4
    assert r["nnp"] == "1" and r["seccomp"] == "2"
    assert r["cwd"] == "/var/task"
    exposed = {Path(p).parts[1] for p in (sys.prefix, sys.base_prefix)}  # the server's Python
    assert set(r["root"]) - exposed <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib64",
        "lib32",
        "libx32",
        "opt",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "var",
    }
    assert r["ifaces"] == ["lo"] and r["routes"] == 1
    assert r["procs"] == [2]  # hidepid=2 hides the root-owned init
    assert r["api"] == "127.0.0.1:9001"
    assert "shadow" not in r["etc"] and "gshadow" not in r["etc"] and "sudoers" not in r["etc"]


def test_filesystem_is_read_only_and_private(
    sandbox_root: Path, task_root: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other-function"
    other.mkdir()
    (other / "secret.py").write_text("TOKEN = 'other function code'\n")
    r = hostile(
        sandbox_root,
        task_root,
        rf"""
attempt("read_shadow", lambda: open("/etc/shadow").read())
attempt("read_gshadow", lambda: open("/etc/gshadow").read())
attempt("read_other_code", lambda: open({str(other / "secret.py")!r}).read())
attempt("root_ssh", lambda: os.listdir("/root/.ssh"))
attempt("root_history", lambda: open("/root/.bash_history").read())
attempt("read_task", lambda: open("/var/task/hello.txt").read())
attempt("write_task", lambda: open("/var/task/evil.py", "w").write("x"))
attempt("modify_task", lambda: open("/var/task/hello.txt", "a").write("x"))
attempt("chmod_task", lambda: os.chmod("/var/task/hello.txt", 0o777))
attempt("write_root", lambda: open("/evil", "w").write("x"))
attempt("write_usr", lambda: open("/usr/evil", "w").write("x"))
attempt("write_etc", lambda: open("/etc/passwd", "a").write("x"))
attempt("write_opt", lambda: open("/opt/evil", "w").write("x"))
attempt("mknod", lambda: os.mknod("/tmp/sda", 0o600 | 0o060000, os.makedev(8, 0)))
attempt("write_tmp", lambda: open("/tmp/ok", "w").write("fine") and None)
attempt("proc1_root", lambda: os.listdir("/proc/1/root"))
attempt("proc1_shadow", lambda: open("/proc/1/root/etc/shadow").read())
attempt("proc1_exe", lambda: os.readlink("/proc/1/exe"))
attempt("self_root", lambda: os.readlink("/proc/self/root"))
attempt("sysrq", lambda: open("/proc/sysrq-trigger", "w").write("b"))
attempt("kmsg", lambda: open("/dev/kmsg").read(1))
attempt("dev", lambda: sorted(os.listdir("/dev")))
attempt("sys", lambda: os.listdir("/sys"))
""",
    )
    assert r["read_shadow"] == "ENOENT" and r["read_gshadow"] == "ENOENT"
    assert r["read_other_code"] == "ENOENT"
    assert r["root_ssh"] == "ENOENT" and r["root_history"] == "ENOENT"
    assert r["read_task"] == "function code\n"
    for key in ("write_task", "modify_task", "chmod_task", "write_root", "write_usr"):
        assert r[key] in ("EROFS", "EACCES", "EPERM"), (key, r[key])
    assert r["write_etc"] in ("EROFS", "EACCES")
    assert r["write_opt"] in ("EROFS", "EACCES")
    assert r["mknod"] == "EPERM"
    assert r["write_tmp"] == "ok"
    assert r["proc1_root"] in ("ENOENT", "EACCES") and r["proc1_shadow"] in ("ENOENT", "EACCES")
    assert r["proc1_exe"] in ("ENOENT", "EACCES")
    assert r["self_root"] == "/"
    assert r["sysrq"] in ("EACCES", "EROFS", "ENOENT")
    assert r["kmsg"] == "ENOENT"
    assert r["dev"] == [
        "fd",
        "full",
        "null",
        "random",
        "stderr",
        "stdin",
        "stdout",
        "tty",
        "urandom",
        "zero",
    ] or "tty" not in os.listdir("/dev")
    assert r["sys"] == "ENOENT"


@pytest.mark.skipif(platform.machine() != "x86_64", reason="syscall numbers below are x86_64")
def test_dangerous_syscalls_fail_with_eperm(sandbox_root: Path, task_root: Path) -> None:
    r = hostile(
        sandbox_root,
        task_root,
        r"""
CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS = 0x10000000, 0x40000000, 0x20000
for name, nr, args in [
    ("mount", 165, (0, 0, 0, 0, 0)), ("umount2", 166, (0, 0)), ("pivot_root", 155, (0, 0)),
    ("chroot", 161, (0,)), ("ptrace_traceme", 101, (0, 0, 0, 0)), ("bpf", 321, (0, 0, 0)),
    ("kexec_load", 246, (0, 0, 0, 0)), ("kexec_file_load", 320, (0, 0, 0, 0, 0)),
    ("init_module", 175, (0, 0, 0)), ("finit_module", 313, (0, 0, 0)),
    ("delete_module", 176, (0, 0)), ("keyctl", 250, (0, 0)), ("add_key", 248, (0, 0, 0, 0, 0)),
    ("request_key", 249, (0, 0, 0, 0)), ("perf_event_open", 298, (0, 0, 0, 0, 0)),
    ("unshare_user", 272, (CLONE_NEWUSER,)), ("unshare_net", 272, (CLONE_NEWNET,)),
    ("setns", 308, (0, 0)), ("swapon", 167, (0, 0)), ("swapoff", 168, (0,)),
    ("reboot", 169, (0, 0, 0, 0)), ("userfaultfd", 323, (0,)), ("io_uring_setup", 425, (1, 0)),
    ("open_by_handle_at", 304, (0, 0, 0)), ("process_vm_readv", 310, (0, 0, 0, 0, 0, 0)),
    ("clone_newuser", 56, (CLONE_NEWUSER | 17, 0, 0, 0, 0)),
    ("clone_newns", 56, (CLONE_NEWNS | 17, 0, 0, 0, 0)),
    ("fsopen", 430, (0, 0)), ("sethostname", 170, (0, 0)), ("settimeofday", 164, (0, 0)),
]:
    sc(name, nr, *args)
sc("clone3", 435, 0, 0)
# ptrace a sibling of the same uid: refused by the filter, not by credentials.
pid = os.fork()
if pid == 0:
    import time
    time.sleep(5)
    os._exit(0)
sc("ptrace_attach_sibling", 101, 16, pid, 0, 0)
os.kill(pid, 9)
os.waitpid(pid, 0)
attempt("fork_still_works", lambda: os.waitpid(os.fork() or os._exit(0), 0) and None)
""",
    )
    expected_eperm = [k for k in r if k not in ("clone3", "fork_still_works")]
    assert {k: r[k] for k in expected_eperm} == {k: "EPERM" for k in expected_eperm}
    assert r["clone3"] == "ENOSYS"  # libc falls back to clone, which the filter can inspect
    assert r["fork_still_works"] == "ok"


def test_host_network_and_processes_are_unreachable(sandbox_root: Path, task_root: Path) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    port = server.getsockname()[1]
    victim = subprocess.Popen(["sleep", "60"])
    try:
        r = hostile(
            sandbox_root,
            task_root,
            rf"""
attempt("connect_host_port", lambda: socket.create_connection(("127.0.0.1", {port}), 2) and None)
attempt("connect_v6", lambda: socket.create_connection(("::1", {port}), 2) and None)
attempt("kill_host_pid", lambda: os.kill({victim.pid}, 9))
attempt("kill_init", lambda: os.kill(1, 9))
attempt("kill_all", lambda: os.kill(-1, 9))
attempt("setuid_root", lambda: os.setuid(0))
""",
        )
        assert r["connect_host_port"] in ("ECONNREFUSED", "ENETUNREACH")
        assert r["connect_v6"] in ("ECONNREFUSED", "ENETUNREACH", "EADDRNOTAVAIL", "EAFNOSUPPORT")
        assert r["kill_host_pid"] == "ESRCH"
        assert r["kill_init"] in ("EPERM", "ESRCH")
        assert r["kill_all"] in ("ESRCH", "ok")
        assert r["setuid_root"] == "EPERM"
        assert victim.poll() is None, "a host process was killed from inside"
        server.settimeout(0.01)
        with pytest.raises(TimeoutError):
            server.accept()
    finally:
        victim.kill()
        victim.wait()
        server.close()


def test_environments_do_not_see_each_other(sandbox_root: Path, task_root: Path) -> None:
    async def go() -> tuple[str, str]:
        backend = IsolatedBackend(sandbox_root)
        out_a: list[bytes] = []
        try:
            a = await backend.create(
                spec_for(
                    task_root,
                    "import os, time\nopen('/tmp/secret-a', 'w').write('a')\n"
                    "print('written', os.getpid(), flush=True)\ntime.sleep(30)\n",
                    out=out_a,
                )
            )
            await a.start()
            for _ in range(500):
                if b"written" in b"".join(out_a):
                    break
                await asyncio.sleep(0.01)
            from tests.sandbox.conftest import run_program as rp

            rc, out_b = await rp(
                backend,
                task_root,
                "import os\nprint('TMP', sorted(os.listdir('/tmp')))\n"
                "print('PROCS', sorted(p for p in os.listdir('/proc') if p.isdigit()))\n",
            )
            assert rc == 0
            await a.destroy()
            return b"".join(out_a).decode(), out_b
        finally:
            await backend.close()

    out_a, out_b = run(go)
    assert "written" in out_a
    # Only A's file matters: when the server's Python lives under /tmp (a checkout there), its
    # read-only bind shows up as a directory in B's /tmp too.
    assert "TMP [" in out_b and "secret-a" not in out_b
    assert "PROCS ['2']" in out_b


def test_fork_bomb_dies_inside(sandbox_root: Path, task_root: Path) -> None:
    code = r"""
import os, time
n = 0
try:
    while n < 10000:
        if os.fork() == 0:
            time.sleep(30)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped", n, e.errno, flush=True)
"""

    async def go() -> tuple[int, str, int]:
        backend = IsolatedBackend(sandbox_root, pids_max=64)
        try:
            rc, out = await run_program(backend, task_root, code)
            t0 = time.monotonic()
            ok = subprocess.run(["true"]).returncode  # the host can still fork
            assert time.monotonic() - t0 < 5
            return rc, out, ok
        finally:
            await backend.close()

    _rc, out, ok = run(go)
    assert ok == 0
    assert "stopped" in out, out
    count = int(out.split("stopped")[1].split()[0])
    assert 0 < count < 64
    assert out.split()[-1] == "11"  # EAGAIN


def test_memory_limit_oom_kill_is_detected(sandbox_root: Path, task_root: Path) -> None:
    code = r"""
import time
chunks = []
for i in range(64):
    chunks.append(bytearray(8 * 1024 * 1024))  # zero-filled: really touched
    print("allocated", (i + 1) * 8, flush=True)
print("survived", flush=True)
"""

    async def go() -> tuple[int, str, bool, int, bool]:
        backend = IsolatedBackend(sandbox_root)
        out: list[bytes] = []
        try:
            sandbox = await backend.create(spec_for(task_root, code, out=out, memory_mb=64))
            await sandbox.start()
            rc = await asyncio.wait_for(sandbox.wait(), 30)
            oom, peak = sandbox.oom_killed(), sandbox.max_memory_used_mb()
            cgroup = sandbox.cgroup
            await sandbox.destroy()
            return rc, b"".join(out).decode(), oom, peak, cgroup.exists()
        finally:
            await backend.close()

    rc, out, oom, peak, cgroup_left = run(go)
    assert rc == -signal.SIGKILL, out
    assert "survived" not in out
    assert oom is True
    assert 48 <= peak <= 65, peak
    assert not cgroup_left


def test_normal_exit_is_not_an_oom(sandbox_root: Path, task_root: Path) -> None:
    async def go() -> tuple[int, bool, int]:
        backend = IsolatedBackend(sandbox_root)
        try:
            sandbox = await backend.create(
                spec_for(task_root, "b = bytearray(20 * 1024 * 1024)\nraise SystemExit(3)")
            )
            await sandbox.start()
            rc = await sandbox.wait()
            result = rc, sandbox.oom_killed(), sandbox.max_memory_used_mb()
            await sandbox.destroy()
            return result
        finally:
            await backend.close()

    rc, oom, peak = run(go)
    assert rc == 3 and oom is False
    assert peak >= 20
