"""SnapStart inside a template: the fork server of a Python runtime that has run INIT.

A template is an isolated environment like any other, started with ``snapshot`` set: its
runtime (a zygote fork running Kiln's Python bootstrap) runs INIT, then asks its own Runtime API
for the first event -- and is never given one.  Parked in that ``recv``, it serves fork
requests: the server writes one to the template's request socket (JSON plus the fork's control
socket and output pipe), the kernel signals ``SIGIO``, and the handler (run by the interpreter
between two retries of the interrupted ``recv``) forks.  In the parent the handler returns and
the template goes on waiting.  The child:

``fork`` (child of the template, in the template's PID namespace)
    sends the server a pidfd of itself (``hello``), ``unshare(NEWUSER|NEWNS|NEWPID|NEWNET|
    NEWIPC|NEWUTS)``, maps its own uid/gid, waits until the server has moved it into the fork's
    cgroup (``go``), forks the runtime and stays as its supervisor (reports ``exit N``, and
    exits on end-of-file of the control socket, which kills the runtime's namespace).
``runtime`` (pid 1 of the new PID namespace)
    mounts a fresh ``/tmp`` (tmpfs) and ``/proc``, sets the host name, brings ``lo`` up, binds
    ``127.0.0.1:9001`` and sends it to the server (``ready``), sends a pidfd of itself
    (``started``), takes the fork's environment variables and output pipe, re-seeds ``random``,
    drops every capability and stacks the full seccomp filter; then raises
    ``ConnectionResetError`` out of the handler.  The bootstrap's Runtime API client retries a
    failed request once on a new connection: its ``/next`` reaches the fork's own listener, and
    the first invoke runs without INIT.

Clocks need nothing: nothing was restored from a file, so ``time`` is the kernel's.  Request ids
come from the server per invoke.  The string-hash secret is shared with the template (and every
zygote fork).  The cost is the template's filter: it allows ``unshare`` (hence user namespaces),
``mount`` and ``sethostname``, so the function's INIT code runs with that larger kernel attack
surface -- though only INIT, once per version, never an invoke.
"""

from __future__ import annotations

import fcntl
import json
import os
import random
import signal
import socket
from collections.abc import Callable
from typing import Any

from kiln.sandbox import _namespaces as ns
from kiln.sandbox import _seccomp

API_PORT = 9001
_NAMESPACES = (ns.CLONE_NEWUSER | ns.CLONE_NEWNS | ns.CLONE_NEWPID | ns.CLONE_NEWNET
               | ns.CLONE_NEWIPC | ns.CLONE_NEWUTS)


def serve_forks(request_fd: int, program: bytes, supervise: Callable[[socket.socket, int], None],
                report: Callable[[socket.socket, BaseException], None]) -> None:
    """Make this process a template: fork on every request arriving on ``request_fd``.

    ``program``: the full seccomp filter each fork stacks; ``supervise(ctl, pid)``: the fork's
    supervisor loop (never returns); ``report(ctl, exc)``: tell the server a fork failed."""
    requests = socket.socket(fileno=request_fd)
    requests.setblocking(False)
    fcntl.fcntl(request_fd, fcntl.F_SETOWN, os.getpid())
    fcntl.fcntl(request_fd, fcntl.F_SETFL, fcntl.fcntl(request_fd, fcntl.F_GETFL) | os.O_ASYNC)

    def on_request(_signum: int, _frame: object) -> None:
        # Not re-entered: a nested run (from a fork's at-fork hooks, say) would fork with this
        # frame's fork half done.  A request arriving meanwhile stays pending until the end.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGIO})
        try:
            _serve(requests, program, supervise, report)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGIO})

    signal.signal(signal.SIGIO, on_request)


def _serve(requests: socket.socket, program: bytes,
           supervise: Callable[[socket.socket, int], None],
           report: Callable[[socket.socket, BaseException], None]) -> None:
    """Fork for every request waiting; returns in the template, raises in a new fork."""
    while True:
        try:
            msg, fds, _flags, _addr = socket.recv_fds(requests, 1 << 20, 2)
        except BlockingIOError:
            return
        except OSError:
            msg, fds = b"", []
        if not msg:
            os._exit(0)  # the server is gone, or destroyed this template
        ns.reap_children()  # exited fork supervisors
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            continue
        if os.fork() == 0:
            ctl = socket.socket(fileno=fds[0])
            try:
                requests.close()
                _become_fork(json.loads(msg), ctl, fds[1], program, supervise)
            except BaseException as exc:  # noqa: BLE001 - a forked child reports, then exits
                report(ctl, exc)
                os._exit(1)
            raise ConnectionResetError("restored from the SnapStart template")
        for fd in fds:
            os.close(fd)


def _send(ctl: socket.socket, text: str, fds: list[int]) -> None:
    socket.send_fds(ctl, [text.encode()], fds)


def _send_pidfd(ctl: socket.socket, word: str) -> None:
    pidfd = os.pidfd_open(os.getpid())
    try:
        _send(ctl, word, [pidfd])
    finally:
        os.close(pidfd)


def _become_fork(cfg: dict[str, Any], ctl: socket.socket, out_w: int, program: bytes,
                 supervise: Callable[[socket.socket, int], None]) -> None:
    """Run in the template's child: returns in the fork's runtime, ready to reconnect."""
    signal.signal(signal.SIGIO, signal.SIG_DFL)
    ctl.setblocking(True)
    _send_pidfd(ctl, "hello")  # the server moves it into the fork's cgroup meanwhile
    uid, gid = os.getuid(), os.getgid()  # unmapped (65534) in the new namespace until mapped
    ns.unshare(_NAMESPACES)
    # Gaining capabilities (in the new user namespace) made the process non-dumpable, which
    # gives its /proc files to root: dumpable again, so it can write its own id maps.
    ns.prctl(ns.PR_SET_DUMPABLE, 1)
    ns.map_own_ids(uid, gid)
    if ctl.recv(64) != b"go":  # in the fork's cgroup now: its processes start there
        os._exit(1)
    pid = os.fork()
    if pid != 0:
        os.close(out_w)
        ns.drop_capabilities()
        _seccomp.install(program)
        supervise(ctl, pid)
        os._exit(0)
    flags = ns.MS_NOSUID | ns.MS_NODEV
    # Shared host directories under /tmp (an explicit opt-in) stay visible on the fresh /tmp.
    shared = [(path, os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC))
              for path in cfg["rw_paths"] if path.startswith("/tmp/")]
    ns.mount("kiln-tmp", "/tmp", "tmpfs", flags, f"size={int(cfg['ephemeral_mb'])}m,mode=1777")
    for path, fd in shared:
        ns.mkdirs(path)
        ns.mount(f"/proc/self/fd/{fd}", path, None, ns.MS_BIND | ns.MS_REC)
        os.close(fd)
    ns.mount("proc", "/proc", "proc", flags | ns.MS_NOEXEC, "hidepid=2")
    hostname = cfg["hostname"].encode()
    if ns.libc.sethostname(hostname, len(hostname)) != 0:
        raise OSError("sethostname failed")
    ns.loopback_up()
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", API_PORT))
        listener.listen(128)
        _send(ctl, "ready", [listener.fileno()])
    _send_pidfd(ctl, "started")
    devnull = os.open("/dev/null", os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(out_w, 1)
    os.dup2(out_w, 2)
    os.close(devnull)
    os.close(out_w)
    ctl.close()
    with open("/proc/self/cmdline", "rb") as cmdline:
        argv = [arg.decode() for arg in cmdline.read().split(b"\0")[:-1]]
    os.environ.clear()
    ns.show_as_exec(argv, cfg["env"])  # /proc/<pid>/environ: this fork's, not the template's
    os.environ.update(cfg["env"])
    random.seed()  # every fork its own sequence
    ns.drop_capabilities()
    _seccomp.install(program)
