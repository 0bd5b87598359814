"""The launcher ("fork server") of the isolated backend and the code its children run.

One launcher per backend, started once as ``<python> -I -S -c ...`` with one end of a
``SOCK_SEQPACKET`` pair.  It is single-threaded and small, so ``os.fork`` is both safe (the server
process is multi-threaded and large: forking it is unsafe and slows with its RSS) and fast (about
a millisecond).  For every environment the server sends one message -- the JSON config plus two
descriptors: its end of a control ``SOCK_SEQPACKET`` pair and the write end of the output pipe --
and the launcher forks:

``setup`` (child of the launcher)
    joins the environment's cgroups, ``unshare(NEWNS|NEWPID|NEWIPC|NEWUTS|NEWNET)``, forks the
    environment's init, reports its pid (``pid N``) and exits.  The launcher is a child subreaper,
    so it adopts and reaps the init.
``init`` (pid 1 of the new PID namespace; a forked copy of the launcher, never exec'd)
    prepares the function-independent part of the root (a tmpfs with read-only binds of ``/usr``,
    a few ``/etc`` files, a minimal ``/dev``, a fresh ``/proc``), brings ``lo`` up, binds
    ``127.0.0.1:9001`` and sends that listening socket to the server (``ready`` + SCM_RIGHTS).
    The server may keep such blank environments pre-warmed.  On ``config <json>`` it adds the
    function's part (``/var/task``, ``/opt`` layers, ``/tmp`` tmpfs, the runtime's installation),
    ``pivot_root``s into it and answers ``configured``.  On ``start`` it forks the runtime,
    reports ``started`` with a pidfd of it (or ``execfail``), then reaps orphans until the
    runtime exits, reports ``exit <returncode>`` and exits -- which makes the kernel kill
    whatever is left in the namespace.  End-of-file on the control socket (the server destroyed
    the environment or died) makes it exit the same way.  It asks the OOM killer to spare it
    (``oom_score_adj -1000``, where the launcher has ``CAP_SYS_RESOURCE``).
``runtime`` (pid 2)
    stdio to ``/dev/null`` and the output pipe, ``cwd /var/task``, rlimits, an empty capability
    bounding set, uid/gid of the sandbox user, ``no_new_privs``, the seccomp filter, ``execve``.
    A SnapStart template's ``start`` carries a socket for fork requests: its runtime (a zygote
    fork only) gets the template filter and serves forks after INIT (``_snapshot``).
The server also sends ``{"track": [cgroup dirs]}`` for each SnapStart fork's cgroup (which it
made itself), so that they are removed with the rest should it die.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import resource
import select
import signal
import socket
import sys
import time
from typing import Any

from kiln.sandbox import _namespaces as ns
from kiln.sandbox import _seccomp, _snapshot

API_PORT = 9001
_SYSTEM_DIRS = ("usr", "bin", "lib", "lib32", "lib64", "libx32", "sbin")
#: Host files and directories of /etc that a runtime may need (none of them secret).
_ETC_BINDS = (
    "ld.so.cache",
    "ld.so.conf",
    "ld.so.conf.d",
    "nsswitch.conf",
    "host.conf",
    "gai.conf",
    "protocols",
    "services",
    "mime.types",
    "ssl",
    "ca-certificates",
    "alternatives",
    "python3",
    "python3.11",
    "python3.12",
    "python3.13",
)
_ETC_LINKS = ("localtime",)


def _describe(exc: BaseException) -> str:
    """The exception and where it was raised (file:line of the innermost frames)."""
    where = []
    tb = exc.__traceback__
    while tb is not None:
        where.append(f"{os.path.basename(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno}")
        tb = tb.tb_next
    return f"{type(exc).__name__}: {exc} (at {' < '.join(reversed(where[-3:]))})"


def _send(ctl: socket.socket, text: str, fds: list[int] | None = None) -> None:
    try:
        if fds:
            socket.send_fds(ctl, [text.encode()], fds)
        else:
            ctl.send(text.encode())
    except OSError:
        pass


# -- launcher ---------------------------------------------------------------------------------


#: Loaded once by the zygote, inherited by every fork: what Kiln's Python runtime imports, and
#: standard modules functions commonly import (fresh per process after the fork, like any
#: module state; ``random`` is re-seeded).
ZYGOTE_PRELOAD = (
    "json", "traceback", "time", "random", "importlib.machinery", "asyncio", "base64",
    "collections", "dataclasses", "datetime", "decimal", "email.message", "email.parser",
    "enum", "hashlib", "http.client", "re", "typing", "urllib.parse", "uuid",
)


def main(fd: int, python_path: list[str] | None = None) -> None:
    """Serve fork requests on ``fd`` until the server closes its end.

    ``python_path``: ``sys.path`` as the interpreter set it up, before Kiln's own directory was
    added -- given when this launcher also serves as the Python zygote (``-s -u``, the flags of
    Kiln's Python runtime), so that a runtime can start as a fork instead of an ``execve``."""
    if python_path is not None:
        for module in ZYGOTE_PRELOAD:
            __import__(module)
    server = socket.socket(fileno=fd)
    server.setblocking(True)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGCHLD, lambda _s, _f: ns.reap_children())
    ns.prctl(ns.PR_SET_CHILD_SUBREAPER, 1)
    program = _seccomp.build_filter() if _seccomp.supported() else b""
    gc.collect()
    gc.freeze()  # keep the collector from touching (and so copying) inherited objects
    environments: list[list[str]] = []  # each environment's cgroup directories
    parents: list[str] = []
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(server, 1 << 20, 4)
        except ConnectionResetError:
            msg, fds = b"", []
        if not msg:
            break
        cfg = json.loads(msg)
        if "track" in cfg:  # a SnapStart fork's cgroup: the server made it, the same clean-up
            environments = [d for d in environments if os.path.isdir(d[0])] + [cfg["track"]]
            continue
        cfg["python_path"] = python_path
        environments.append([os.path.dirname(p) for p in cfg["cgroup_procs"]])
        parents = cfg.get("cgroup_parents", parents)
        pid = os.fork()
        if pid == 0:
            try:
                _setup(cfg, fds, server, program)
            finally:
                os._exit(1)
        for child_fd in fds:
            os.close(child_fd)
        environments = [dirs for dirs in environments if os.path.isdir(dirs[0])]
    server.close()
    # The server is gone.  A running environment's init has seen that too and is taking its
    # namespace down, but a frozen one cannot: kill whatever is left and remove the cgroups.
    _remove_cgroups(environments, parents)


def _remove_cgroups(environments: list[list[str]], parents: list[str]) -> None:
    deadline = time.monotonic() + 10
    pending = environments
    while pending and time.monotonic() < deadline:
        still = []
        for dirs in pending:
            pids: set[int] = set()
            for d in dirs:
                try:
                    with open(f"{d}/cgroup.procs") as f:
                        pids.update(int(x) for x in f.read().split())
                except OSError:
                    pass
            for name, value in _KILL_STEPS:
                for d in dirs:
                    try:
                        with open(f"{d}/{name}", "w") as f:
                            f.write(value)
                    except OSError:
                        pass
                if name == "cgroup.kill":
                    for pid in pids:
                        with contextlib.suppress(OSError):
                            os.kill(pid, signal.SIGKILL)
            busy = False
            for d in dirs:
                try:
                    os.rmdir(d)
                except FileNotFoundError:
                    pass
                except OSError:
                    busy = True
            if busy:
                still.append(dirs)
        pending = still
        if pending:
            time.sleep(0.002)
    for parent in parents:
        for d in (parent, os.path.dirname(parent)):
            with contextlib.suppress(OSError):
                os.rmdir(d)


#: Lift the CPU quota (dying takes CPU time), freeze (so nothing forks), kill (v2
#: ``cgroup.kill``; v1 signals each pid), thaw (v1 frozen tasks only die once thawed).
_KILL_STEPS = (("cpu.cfs_quota_us", "-1"), ("cpu.max", "max"), ("freezer.state", "FROZEN"),
               ("cgroup.kill", "1"), ("freezer.state", "THAWED"))


# -- setup: cgroups and namespaces --------------------------------------------------------------


def _setup(cfg: dict[str, Any], fds: list[int], server: socket.socket, program: bytes) -> None:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    server.close()
    ctl = socket.socket(fileno=fds[0])
    out_w = fds[1]
    try:
        # Nothing of the environment may keep the server's stdio open.
        devnull = os.open("/dev/null", os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        for procs in cfg["cgroup_procs"]:
            with open(procs, "w") as f:
                f.write("0")
        flags = ns.CLONE_NEWNS | ns.CLONE_NEWPID | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS
        if cfg["netns"]:
            flags |= ns.CLONE_NEWNET
        ns.unshare(flags)
        pid = os.fork()
        if pid == 0:
            try:
                _init(cfg, ctl, out_w, program)
            except BaseException as exc:  # noqa: BLE001 - a forked child reports, then exits
                _send(ctl, f"error init: {_describe(exc)}")
            finally:
                os._exit(1)
        _send(ctl, f"pid {pid}")
        os._exit(0)
    except BaseException as exc:  # noqa: BLE001 - a forked child reports, then exits
        _send(ctl, f"error setup: {_describe(exc)}")
        os._exit(1)


# -- init: the root file system, the listener, then the runtime ---------------------------------


def _prepare_root(cfg: dict[str, Any]) -> None:
    """Everything of the root that does not depend on the function (done ahead of time)."""
    root: str = cfg["newroot"]
    ns.mount(None, "/", None, ns.MS_REC | ns.MS_PRIVATE)
    ns.mount("kiln-root", root, "tmpfs", ns.MS_NOSUID | ns.MS_NODEV, "size=1m,mode=755")

    for name in _SYSTEM_DIRS:
        host = "/" + name
        if os.path.islink(host):
            os.symlink(os.readlink(host), f"{root}/{name}")
        elif os.path.isdir(host):
            ns.mkdirs(f"{root}/{name}")
            ns.bind_ro(host, f"{root}/{name}", recursive=True)

    etc = f"{root}/etc"
    ns.mkdirs(etc)
    hostname: str = cfg["hostname"]
    uid, gid = cfg["uid"], cfg["gid"]
    ns.write_file(
        f"{etc}/passwd",
        "root:x:0:0:root:/root:/sbin/nologin\n"
        f"sbx_user1051:x:{uid}:{gid}::/tmp:/sbin/nologin\n"
        "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n",
    )
    ns.write_file(
        f"{etc}/group",
        f"root:x:0:\nsbx_user1051:x:{gid}:\nnogroup:x:65534:\n",
    )
    ns.write_file(
        f"{etc}/hosts", f"127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost\n"
    )
    ns.write_file(f"{etc}/hostname", hostname + "\n")
    etc_binds = list(_ETC_BINDS) + ([] if cfg["netns"] else ["resolv.conf"])
    for name in etc_binds:
        host = "/etc/" + name
        if os.path.islink(host) and not os.path.exists(host):
            continue
        if os.path.isdir(host):
            ns.mkdirs(f"{etc}/{name}")
            ns.bind_ro(host, f"{etc}/{name}", recursive=True)
        elif os.path.isfile(host):
            ns.touch(f"{etc}/{name}")
            ns.bind_ro(host, f"{etc}/{name}")
    for name in _ETC_LINKS:
        if os.path.islink("/etc/" + name):
            os.symlink(os.readlink("/etc/" + name), f"{etc}/{name}")

    for name in ("var/task", "opt", "tmp"):
        ns.mkdirs(f"{root}/{name}")

    dev = f"{root}/dev"
    ns.mkdirs(dev)
    ns.mount("kiln-dev", dev, "tmpfs", ns.MS_NOSUID | ns.MS_NOEXEC, "size=64k,mode=755")
    for name in ("null", "zero", "full", "random", "urandom", "tty"):
        if not os.path.exists("/dev/" + name):
            continue
        ns.touch(f"{dev}/{name}", 0o666)
        ns.mount("/dev/" + name, f"{dev}/{name}", None, ns.MS_BIND)
        ns.mount(
            None, f"{dev}/{name}", None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_NOSUID | ns.MS_NOEXEC
        )
    for name, target in (
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ):
        os.symlink(target, f"{dev}/{name}")
    ns.mount(None, dev, None, ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NOEXEC)

    ns.mkdirs(f"{root}/proc")
    ns.mount("proc", f"{root}/proc", "proc", ns.MS_NOSUID | ns.MS_NODEV | ns.MS_NOEXEC, "hidepid=2")


def _finish_root(cfg: dict[str, Any]) -> None:
    """The function's part of the root (code, layers, /tmp, runtime), then ``pivot_root``."""
    root: str = cfg["newroot"]
    ns.bind_ro(cfg["task_root"], f"{root}/var/task", recursive=True)
    layers: list[str] = cfg["layers"]
    if len(layers) == 1:
        ns.bind_ro(layers[0], f"{root}/opt", recursive=True)
    elif layers:
        # overlayfs: the leftmost lowerdir is the top, so later layers win, as in Lambda.
        lower = ":".join(reversed(layers))
        ns.mount("kiln-layers", f"{root}/opt", "overlay", ns.MS_RDONLY, f"lowerdir={lower}")

    ns.mount(
        "kiln-tmp",
        f"{root}/tmp",
        "tmpfs",
        ns.MS_NOSUID | ns.MS_NODEV,
        f"size={int(cfg['ephemeral_mb'])}m,mode=1777",
    )

    # The runtime's own installation (interpreter prefix, venv, bootstrap script), read-only
    # at the same paths; parents first.
    for path in sorted(cfg["ro_paths"], key=lambda p: (p.count("/"), p)):
        ns.bind_ro_beneath(path, root)

    # Host directories shared read-write (an explicit opt-in, e.g. for tests).
    for path in sorted(cfg.get("rw_paths", []), key=lambda p: (p.count("/"), p)):
        if os.path.isdir(path):
            ns.mkdirs(root + path)
            ns.mount(path, root + path, None, ns.MS_BIND | ns.MS_REC)
            ns.mount(
                None, root + path, None, ns.MS_REMOUNT | ns.MS_BIND | ns.MS_NOSUID | ns.MS_NODEV
            )

    os.chdir(root)
    ns.pivot_root(".", ".")
    ns.umount2(".", ns.MNT_DETACH)
    os.chdir("/")
    ns.mount(None, "/", None, ns.MS_REMOUNT | ns.MS_RDONLY | ns.MS_NOSUID | ns.MS_NODEV)


def _oom_score_adj(value: str) -> None:
    try:
        with open("/proc/self/oom_score_adj", "w") as f:
            f.write(value)
    except OSError:
        pass  # lowering needs CAP_SYS_RESOURCE; the small init is an unlikely victim anyway


def _init(cfg: dict[str, Any], ctl: socket.socket, out_w: int, program: bytes) -> None:
    _oom_score_adj("-1000")
    os.setsid()
    _prepare_root(cfg)
    hostname = cfg["hostname"].encode()
    if ns.libc.sethostname(hostname, len(hostname)) != 0:
        raise OSError("sethostname failed")
    listener_fds: list[int] = []
    listener = None
    if cfg["netns"]:
        ns.loopback_up()
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", API_PORT))
        listener.listen(128)
        listener_fds = [listener.fileno()]
    _send(ctl, "ready", listener_fds)
    if listener is not None:
        listener.close()

    configured = False
    while True:
        msg, fds, _flags, _addr = socket.recv_fds(ctl, 1 << 20, 1)
        if not msg:
            os._exit(0)
        if msg.startswith(b"config ") and not configured:
            cfg.update(json.loads(msg[len(b"config ") :]))
            _finish_root(cfg)
            configured = True
            _send(ctl, "configured")
        elif msg == b"start" and configured:
            # A SnapStart template's start carries the socket its fork requests come on.
            cfg["fork_requests"] = fds[0] if fds else None
            break
        for fd in fds:
            os.close(fd)

    err_r, err_w = os.pipe()  # close-on-exec: EOF means execve succeeded
    pid = os.fork()
    if pid == 0:
        try:
            _exec_runtime(cfg, out_w, err_w, program)
        except BaseException as exc:  # noqa: BLE001 - a forked child reports, then exits
            report = {
                "errno": getattr(exc, "errno", None) or 0,
                "strerror": getattr(exc, "strerror", None) or str(exc),
                "filename": getattr(exc, "filename", None),
            }
            os.write(err_w, json.dumps(report).encode()[:4000])
        finally:
            os._exit(127)
    os.close(out_w)
    os.close(err_w)
    if cfg["fork_requests"] is not None:
        os.close(cfg["fork_requests"])
    failure = b""
    while chunk := os.read(err_r, 4096):
        failure += chunk
    os.close(err_r)
    if failure:
        _send(ctl, "execfail " + failure.decode(errors="replace"))
    else:
        # A pidfd lets the server see the runtime die even while this init is frozen (killed
        # from outside while idle) and so cannot report it.
        pidfd = os.pidfd_open(pid)
        _send(ctl, "started", [pidfd])
        os.close(pidfd)
    _supervise(ctl, pid)


def _supervise(ctl: socket.socket, pid: int) -> None:
    """Reap children until ``pid`` (the runtime) exits, then report ``exit <returncode>``;
    exit at once on end-of-file of ``ctl``.  Never returns."""
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda _s, _f: None)
    while True:
        # First of all: the runtime may have exited before the handler was set.
        for child, status in ns.reaped():
            if child == pid:
                _send(ctl, f"exit {os.waitstatus_to_exitcode(status)}")
                os._exit(0)
        ready, _, _ = select.select([ctl.fileno(), wake_r], [], [])
        if ctl.fileno() in ready:
            try:
                msg = ctl.recv(4096)
            except OSError:
                msg = b""
            if not msg:
                os._exit(0)
        if wake_r in ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 4096):
                    pass


def _report_fork_failure(ctl: socket.socket, exc: BaseException) -> None:
    _send(ctl, f"error fork: {_describe(exc)}")


def _exec_runtime(cfg: dict[str, Any], out_w: int, err_w: int, program: bytes) -> None:
    for signum in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGINT):
        signal.signal(signum, signal.SIG_DFL)
    signal.set_wakeup_fd(-1)
    signal.pthread_sigmask(signal.SIG_SETMASK, [])
    os.setsid()
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    requests = cfg["fork_requests"]
    ns.close_fds_except([err_w] if requests is None else [err_w, requests])
    _oom_score_adj("0")
    os.chdir("/var/task")
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 1024))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.umask(0o022)
    zygote = cfg.get("zygote") and cfg.get("python_path") is not None
    ns.drop_privileges(cfg["uid"], cfg["gid"])
    if zygote:
        # Dumpable again, as an execve would make it (the uid change cleared it): its /proc
        # files belong to the sandbox user, so the function can read /proc/self/environ.
        ns.prctl(ns.PR_SET_DUMPABLE, 1)
    if requests is not None and not (zygote and program):
        raise OSError(errno.ENOTSUP, "a SnapStart template needs the Python zygote and seccomp")
    if program:
        # A template keeps what its forks need to make their namespaces (see _snapshot).
        _seccomp.install(program if requests is None else _seccomp.build_filter(
            allow=_seccomp.TEMPLATE_ALLOWED))
    argv: list[str] = cfg["argv"]
    env: dict[str, str] = cfg["env"]
    if zygote:
        os.close(err_w)  # "exec" succeeded: from here on this process is the runtime
        if requests is not None:
            _snapshot.serve_forks(requests, program, _supervise, _report_fork_failure)
        _run_python(argv[-1], env, cfg["python_path"])
    exe = argv[0]
    if "/" not in exe:
        for directory in env.get("PATH", "/usr/local/bin:/usr/bin:/bin").split(":"):
            candidate = os.path.join(directory or ".", exe)
            if os.access(candidate, os.X_OK):
                exe = candidate
                break
    os.execve(exe, argv, env)


#: Flags of Kiln's Python runtime, which the zygote was started with.
ZYGOTE_FLAGS = ("-s", "-u")
#: The zygote's only start-up variable: room for ``show_as_exec`` to write a runtime's
#: environment in (Lambda allows 4 KB of variables; Kiln adds about 1 KB).
ENVIRONMENT_ROOM = {"KILN_ENVIRONMENT_ROOM": "." * 8192}


def _run_python(script: str, env: dict[str, str], python_path: list[str]) -> None:
    """Become ``python -s -u <script>`` with ``env``: what a fresh interpreter would be, minus
    its start-up (the launcher is that interpreter, started with those flags).  Never returns."""
    import builtins
    import importlib.machinery
    import random
    import types

    for name in [m for m in sys.modules if m == "kiln" or m.startswith("kiln.")]:
        del sys.modules[name]  # the launcher's own code is not the function's to import
    signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets them at start
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ.clear()  # unsetenv: nothing in C refers to the start-up environment any more
    ns.show_as_exec([sys.executable, *ZYGOTE_FLAGS, script], env)
    os.environ.update(env)
    extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    sys.path[:] = [os.path.dirname(script), *extra, *python_path]
    sys.argv[:] = [script]
    random.seed()  # every environment its own sequence (os.urandom is the kernel's anyway)
    main_module = types.ModuleType("__main__")
    main_module.__file__ = script
    main_module.__dict__["__builtins__"] = builtins
    sys.modules["__main__"] = main_module
    status: object = 0
    try:
        # Reads the script's cached bytecode (the server compiles it once).
        code = importlib.machinery.SourceFileLoader("__main__", script).get_code("__main__")
        if code is None:
            raise ImportError(f"no code in {script}")
        exec(code, main_module.__dict__)
    except SystemExit as exc:
        status = exc.code
    except BaseException:  # noqa: BLE001 - what the interpreter does with an uncaught exception
        import traceback

        traceback.print_exc()
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    if status is None:
        status = 0
    elif not isinstance(status, int):
        sys.stderr.write(f"{status}\n")
        status = 1
    os._exit(status & 0xFF)


if __name__ == "__main__":
    main(int(sys.argv[1]))
