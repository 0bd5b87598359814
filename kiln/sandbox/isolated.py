"""The isolated backend -- Kiln's default, ``process`` -- every execution environment in its own
namespaces, root and cgroup.

Per environment:

* **namespaces**: mount, PID, IPC, UTS and network (only ``lo``; see ``egress`` below);
* **root**: a small tmpfs, ``pivot_root``-ed into and remounted read-only, holding read-only
  binds of ``/usr`` (``/bin``, ``/lib*``, ``/sbin`` as the host has them), a handful of
  non-secret ``/etc`` files (a synthetic ``passwd``/``group``/``hosts``; never ``shadow``), the
  runtime's own installation (the interpreter's prefix and venv, found from ``argv[0]``, and
  absolute-path arguments such as the bootstrap script), ``/var/task`` (``task_root``) and
  ``/opt`` (the layers merged in order with overlayfs), a private ``/tmp`` tmpfs of
  ``ephemeral_mb``, a fresh ``/proc`` (``hidepid=2``) and a ``/dev`` with only
  null/zero/full/random/urandom/tty;
* **credentials**: uid 993 / gid 990 (Lambda's ``sbx_user1051``), no supplementary groups, an
  empty capability bounding set, ``no_new_privs`` and a seccomp filter (``_seccomp``) that
  refuses mount, ptrace, bpf, kexec, modules, keyrings, perf, unshare/setns/namespace clones, ...
  with ``EPERM``;
* **cgroup** (``_cgroups``, v1 or v2): memory limit = ``memory_mb`` without swap, CPU weight
  proportional to memory (1,769 MB = one vCPU) and a CFS quota at the same ratio once INIT is
  over (``end_init()``, also done by the first ``freeze()``; Lambda likewise boosts INIT),
  ``pids.max`` 1024, the freezer;
* **Runtime API**: the listening socket is created *inside* the environment's network namespace
  at ``127.0.0.1:9001`` and passed back over ``SCM_RIGHTS``; the host serves it
  (``sandbox.listener``) from its own event loop.

How processes are made: the server never forks itself.  It is multi-threaded (an unsafe place
to ``fork``) and large (``fork`` slows with RSS), and ``preexec_fn`` is both unsafe and unable to
enter a new PID namespace; exec'ing a launcher per environment would add a whole interpreter
start (11-17 ms here) to every cold start.  Instead one small single-threaded launcher per backend
(``_launcher.py``, started once) forks per environment: ``fork`` + cgroup join +
``unshare`` + ``fork`` (the new PID namespace's init, itself a forked copy of the launcher, which
stays as PID 1 to reap orphans, report the runtime's exit status and take the namespace down with
it) + the common part of the root + the listener.  That part costs 5-20 ms on cgroup v1 (joining
a v1 cgroup waits for an RCU grace period per hierarchy), so ``prewarm`` blank environments are
kept ready and ``create`` only adds the function's mounts (about 2 ms).  ``start`` is one more
``fork`` + privilege drop + seccomp + ``execve`` (about 2.5 ms before the interpreter runs).

The zygote ("snapshot" of an initialised interpreter): the launcher runs on the interpreter that
serves the server's own Python version (``ZYGOTE_PYTHON``) with the flags of Kiln's Python
runtime (``-s -u``) and preloads the modules that runtime and common functions import
(``_launcher.ZYGOTE_PRELOAD``).  A runtime that a fork can faithfully stand in for (that
interpreter and flags, no layers or ``/var/task/lib`` for the dynamic loader, no ``PYTHON*``
start-up variables but ``PYTHONPATH``) then skips ``execve``: the forked child, already in its
namespaces, cgroup and credentials, resets ``sys.path``/``argv``/``os.environ``, re-seeds
``random``, shows the runtime's command line and environment in ``/proc`` and runs the bootstrap
from its cached bytecode.  Other runtimes (Node.js, ``provided``, other interpreters) ``execve``
as before, inside the same isolation.  Forks share the zygote's string-hash secret.

Measured on the 2-vCPU dev VM (``bench/coldstart.py``, medians of 15): the first invoke of a new
environment (create, start, INIT, invoke) of a Python function takes 10-11 ms with the zygote,
x0.29-0.31 of the runtime's interpreter's ``-c pass`` (pyenv 3.11.7, 34 ms; x0.94-1.02 of
``/usr/bin/python3``'s 10.6 ms), against 45-68 ms (x1.3-2.0) with ``execve``.  An idle, frozen
environment costs 3.1 MiB beyond its runtime's own 4.9 MiB PSS: the init's PSS 2.5 MiB, what its
cgroup is charged besides the processes 0.6 MiB, the server's Python objects 0.02 MiB.

SnapStart (a post-INIT snapshot per function version, ``_snapshot``): ``create`` with
``spec.snapshot`` makes a template -- a zygote-forked Python runtime that runs INIT, then parks
in its first ``/next`` and forks on request; ``fork(template, spec)`` makes an environment from
it: a child of the template that enters a user namespace of its own and new mount, PID, network,
IPC and UTS namespaces, is moved by the server into a new cgroup (``spec``'s limits), mounts a
fresh ``/tmp`` and ``/proc``, sends its own ``127.0.0.1:9001`` listener, takes ``spec``'s
environment variables, re-seeds ``random``, drops its capabilities and stacks the full seccomp
filter; its runtime's ``/next`` then reaches its own listener.  Forks live in the template's PID
namespace: destroying the template ends them too.  Templates need the zygote path and no
``egress`` (else ``SnapshotUnsupported``).

Clean-up: ``destroy()`` kills the cgroup's processes (freezing it first so nothing can fork
meanwhile), waits for the init to go, and removes the cgroup; mounts live only in the
environment's mount namespace and vanish with it, and nothing is written per environment under
``root``.  If the server dies, each init sees end-of-file on its control socket and takes its
environment down, and the launcher (end-of-file too) kills what is left -- frozen environments --
and removes the cgroups; ``sweep()`` (run by the constructor) removes whatever survived even that
(a ``kill -9`` of the launcher as well).

The public extras beyond the protocol: ``oom_killed()``, ``end_init()``, ``init_pid``,
``cgroup``, ``runtime_api_address`` on the sandbox; ``prepare()``, ``sweep()``, ``live()`` and
``fork()`` on the backend.

Host paths of the function's code and layers in ``argv`` and ``env`` (``LAMBDA_TASK_ROOT``,
``LD_LIBRARY_PATH``, a ``provided`` runtime's ``<task_root>/bootstrap``) are rewritten to
``/var/task`` and ``/opt``; ``LAMBDA_RUNTIME_DIR`` and ``KILN_EXTRA_PYTHONPATH`` directories are
exposed read-only at their host paths.

``SandboxSpec.egress`` shares the host's network namespace (the Runtime API then listens on
an ephemeral loopback port named in ``AWS_LAMBDA_RUNTIME_API``).  ``extra_rw_paths`` are host
directories shared read-write at the same path (an explicit hole, meant for tests).  The
server's own Python installation (``sys.prefix``, ``sys.base_prefix``) is exposed read-only
unless ``expose_server_python=False``, because Kiln uses it as a runtime and bootstraps call it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import itertools
import json
import os
import py_compile
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from kiln.sandbox import _namespaces
from kiln.sandbox._cgroups import CgroupTree, CgroupV1, CgroupV2, Limits
from kiln.sandbox._launcher import ENVIRONMENT_ROOM, ZYGOTE_FLAGS
from kiln.sandbox._output import drain
from kiln.sandbox.types import Sandbox, SandboxSpec, SnapshotUnsupported

SANDBOX_UID = 993
SANDBOX_GID = 990
RUNTIME_API_ADDRESS = "127.0.0.1:9001"
_SYSTEM_PREFIXES = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_FORBIDDEN_PREFIXES = ("/proc", "/dev", "/sys", "/var/task", "/opt")
_KILN_PARENT = str(Path(__file__).resolve().parents[2])
_LAUNCHER_CODE = (
    "import sys; path = sys.path[1:]; sys.path.insert(0, sys.argv[2]); "
    "from kiln.sandbox._launcher import main; "
    "main(int(sys.argv[1]), path if sys.argv[3:] == ['zygote'] else None)"
)
#: The interpreter serving the runtime of the server's own Python version (as RuntimeCatalog
#: finds it): the launcher runs on it, and so doubles as that runtime's zygote.
ZYGOTE_PYTHON = os.path.realpath(getattr(sys, "_base_executable", sys.executable))
#: Environment variables a fresh interpreter or the dynamic loader would act on at start-up,
#: which a fork cannot honour (PYTHONPATH and PYTHONUNBUFFERED it can).
_STARTUP_VARIABLES = re.compile(r"PYTHON(?!PATH$|UNBUFFERED$)\w*|LD_PRELOAD|LD_AUDIT")


def _under(path: str, prefixes: Iterable[str]) -> bool:
    return any(path == p or path.startswith(p + "/") for p in prefixes)


def runtime_paths(argv: list[str], extra: Iterable[str | os.PathLike[str]] = ()) -> list[str]:
    """Host paths the runtime needs that ``/usr`` does not already provide.

    The interpreter's installation prefix (``<prefix>/bin/<exe>``) for every step of ``argv[0]``'s
    symlink chain, a venv's base installation (``pyvenv.cfg``'s ``home``), and absolute-path
    arguments that name existing files (a bootstrap script).
    """
    found: set[str] = set()

    def add(path: str) -> None:
        path = os.path.normpath(path)
        if path == "/" or _under(path, _SYSTEM_PREFIXES) or _under(path, _FORBIDDEN_PREFIXES):
            return
        found.add(path)

    def add_prefix_of(exe: str) -> None:
        parent = os.path.dirname(exe)
        if os.path.basename(parent) != "bin":
            add(exe)
            return
        prefix = os.path.dirname(parent)
        add(prefix)
        cfg = os.path.join(prefix, "pyvenv.cfg")
        with contextlib.suppress(OSError):
            for line in Path(cfg).read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "home" and value.strip():
                    home = value.strip()
                    add(os.path.dirname(home) if os.path.basename(home) == "bin" else home)

    exe = argv[0] if argv else ""
    if os.path.isabs(exe):
        for _ in range(40):
            add_prefix_of(exe)
            if not os.path.islink(exe):
                break
            exe = os.path.normpath(os.path.join(os.path.dirname(exe), os.readlink(exe)))
        real = os.path.realpath(argv[0])
        if os.path.exists(real):
            add_prefix_of(real)
    for arg in argv[1:]:
        if os.path.isabs(arg) and os.path.isfile(arg):
            add(arg)
    for path in extra:
        if os.path.exists(path):
            add(os.fspath(path))
    # Drop paths already inside another one.
    ordered = sorted(found, key=lambda p: (p.count("/"), p))
    kept: list[str] = []
    for path in ordered:
        if not _under(path, kept):
            kept.append(path)
    return kept


def inside_paths(spec: SandboxSpec, values: Iterable[str]) -> list[str]:
    """``values`` with the host's ``task_root`` written as ``/var/task`` and layer roots as
    ``/opt`` (whole path components only), as the runtime sees them."""
    mapping: dict[str, str] = {}
    for host, inside in [(spec.task_root, "/var/task"), *((p, "/opt") for p in spec.layers)]:
        for variant in {os.fspath(host), os.path.realpath(host)}:
            if variant not in ("", "/"):
                mapping[variant.rstrip("/")] = inside
    if not mapping:
        return list(values)
    pattern = re.compile(
        r"(?<![^\s:=])("
        + "|".join(re.escape(h) for h in sorted(mapping, key=len, reverse=True))
        + r")(?=$|[/:\s])"
    )
    return [pattern.sub(lambda m: mapping[m.group(1)], value) for value in values]


def _pidfd_pid(pidfd: int) -> int:
    """The host pid a pidfd refers to; -1 once the process has been reaped."""
    with open(f"/proc/self/fdinfo/{pidfd}") as info:
        for line in info:
            if line.startswith("Pid:"):
                return int(line.split()[1])
    return -1


def _zombie_status(pidfd: int) -> int | None:
    """The wait status of the exited, not yet reaped process behind ``pidfd``, else None."""
    try:
        pid = _pidfd_pid(pidfd)
        if pid <= 0:
            return None
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        if fields[0] != "Z" or _pidfd_pid(pidfd) != pid:  # reaped (and reused) meanwhile
            return None
        return int(fields[-1])
    except (OSError, ValueError, IndexError):
        return None


class SandboxError(RuntimeError):
    """An environment could not be set up."""


def _fail(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)
        fut.exception()  # retrieved: nobody may be waiting any more


class IsolatedSandbox:
    """One execution environment (see the module docstring)."""

    def __init__(
        self,
        cgroup: CgroupV1 | CgroupV2,
        ctl: socket.socket,
        out_r: int,
        forget: Callable[[str], object],
        forked: bool = False,
    ) -> None:
        #: Set by ``_assign``; until then the environment is a pre-warmed blank one.
        self.env_id = ""
        self.spec: SandboxSpec | None = None
        self.cgroup = cgroup
        self.listener: socket.socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.runtime_api_address = RUNTIME_API_ADDRESS
        #: Host pid of the environment's init (PID 1 inside), once known.
        self.init_pid: int | None = None
        self._loop = asyncio.get_running_loop()
        self._ctl: socket.socket | None = ctl
        self._out_fd: int | None = out_r
        self._cpu_vcpus: float | None = None
        self._forget = forget
        self._ready: asyncio.Future[None] = self._loop.create_future()
        self._configured: asyncio.Future[None] = self._loop.create_future()
        self._started: asyncio.Future[None] | None = None
        self._exited: asyncio.Future[int] = self._loop.create_future()
        self._destroyed = False
        self._init_done = False
        self._peak_bytes = 0
        self._oom_kills = 0
        self._frozen = False
        self._runtime_pidfd: int | None = None
        #: A SnapStart template: its start hands the runtime a socket for fork requests,
        #: kept here (``IsolatedBackend.fork`` writes to it).
        self.snapshot = False
        self.fork_requests: socket.socket | None = None
        #: Host directories shared read-write (``config["rw_paths"]``), for its forks.
        self.rw_paths: list[str] = []
        self._forked = forked
        if forked:  # a fork of a template reports its runtime started right after ready
            self._started = self._loop.create_future()
        ctl.setblocking(False)
        self._loop.add_reader(ctl.fileno(), self._on_ctl)
        os.set_blocking(out_r, False)
        self._loop.add_reader(out_r, self.drain_output)

    # -- control channel ------------------------------------------------------------------------

    def _on_ctl(self) -> None:
        while self._ctl is not None:
            try:
                msg, fds, _flags, _addr = socket.recv_fds(self._ctl, 65536, 4)
            except BlockingIOError:
                return
            except OSError:
                msg, fds = b"", []
            if not msg:
                self._ctl_closed()
                return
            self._handle(msg.decode(errors="replace"), fds)

    def _handle(self, text: str, fds: list[int]) -> None:
        word, _, rest = text.partition(" ")
        if word == "ready":
            if fds:
                self.listener.close()
                self.listener = socket.socket(fileno=fds[0])
                self.listener.setblocking(False)
            if not self._ready.done():
                self._ready.set_result(None)
            return
        if word == "started" and fds and self._runtime_pidfd is None and not self._destroyed:
            self._runtime_pidfd = fds.pop(0)
            self._loop.add_reader(self._runtime_pidfd, self._on_runtime_exit)
        if word == "hello" and fds:
            self._adopt(fds.pop(0))
        for fd in fds:
            os.close(fd)
        if word == "pid":
            self.init_pid = int(rest)
        elif word == "configured":
            if not self._configured.done():
                self._configured.set_result(None)
        elif word == "started":
            if self._started is not None and not self._started.done():
                self._started.set_result(None)
        elif word == "execfail":
            try:
                report = json.loads(rest)
                exc = OSError(report["errno"] or errno.ENOEXEC, report["strerror"])
                exc.filename = report["filename"]  # as the runtime sees it: /var/task/bootstrap
            except (ValueError, KeyError, TypeError):
                exc = OSError(errno.ENOEXEC, rest)
            if self._started is not None:
                _fail(self._started, exc)
        elif word == "exit":
            if not self._exited.done():
                self._exited.set_result(int(rest))
        elif word == "error":
            exc2 = SandboxError(f"environment {self.env_id or '(blank)'}: {rest}")
            for fut in (self._ready, self._configured, self._started):
                if fut is not None:
                    _fail(fut, exc2)

    def _adopt(self, pidfd: int) -> None:
        """A fork of a template asks to be moved into this environment's cgroup before it
        makes any other process (``hello`` with a pidfd of itself); ``go`` once done.  The
        move runs in a thread: joining a v1 cgroup waits for an RCU grace period."""
        try:
            self.init_pid = _pidfd_pid(pidfd)
        finally:
            os.close(pidfd)
        joining = self._loop.run_in_executor(None, self._join_cgroup, self.init_pid)
        joining.add_done_callback(self._joined)

    def _join_cgroup(self, pid: int) -> None:
        for procs in self.cgroup.procs_files():
            with open(procs, "w") as f:
                f.write(str(pid))

    def _joined(self, joining: asyncio.Future[None]) -> None:
        exc = joining.exception()
        if exc is not None:
            _fail(self._ready, SandboxError(f"environment {self.env_id}: joining its cgroup: "
                                            f"{exc}"))
        elif self._ctl is not None:
            self._ctl.send(b"go")

    def _on_runtime_exit(self) -> None:
        """The runtime exited.  The init reports how, unless it is frozen: then the zombie it
        has not reaped yet tells (``/proc/<pid>/stat``'s last field is the wait status)."""
        self._close_runtime_pidfd(read_status=True)
        if not self._exited.done():
            self._on_ctl()  # already reaped: the init's report may be waiting

    def _close_runtime_pidfd(self, read_status: bool = False) -> None:
        fd = self._runtime_pidfd
        if fd is None:
            return
        self._runtime_pidfd = None
        self._loop.remove_reader(fd)
        try:
            status = _zombie_status(fd) if read_status else None
        finally:
            os.close(fd)
        if status is not None and not self._exited.done():
            self._exited.set_result(os.waitstatus_to_exitcode(status))

    def _ctl_closed(self) -> None:
        self._close_runtime_pidfd()
        if self._ctl is not None:
            self._loop.remove_reader(self._ctl.fileno())
            self._ctl.close()
            self._ctl = None
        self._sample()
        self.drain_output()
        gone = SandboxError(f"environment {self.env_id or '(blank)'} is gone")
        for fut in (self._ready, self._configured, self._started):
            if fut is not None:
                _fail(fut, gone)
        if not self._exited.done():
            self._exited.set_result(-signal.SIGKILL)  # gone without reporting an exit

    async def _wait_ready(self, timeout: float) -> None:
        await asyncio.wait_for(asyncio.shield(self._ready), timeout)

    @property
    def alive(self) -> bool:
        return self._ctl is not None and not self._destroyed

    async def _assign(
        self, spec: SandboxSpec, config: dict[str, Any], cpu_vcpus: float | None, timeout: float
    ) -> None:
        """Make this (pre-warmed) environment ``spec``'s: its code, layers, /tmp, runtime."""
        if self._ctl is None:
            raise SandboxError("environment is gone")
        self.spec, self.env_id, self._cpu_vcpus = spec, spec.env_id, cpu_vcpus
        self._ctl.setblocking(True)
        try:
            self._ctl.send(b"config " + json.dumps(config).encode())
        finally:
            self._ctl.setblocking(False)
        await asyncio.wait_for(asyncio.shield(self._configured), timeout)

    # -- the protocol ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._ctl is None or self._destroyed:
            raise SandboxError(f"environment {self.env_id} is gone")
        if self._forked and self._started is not None:  # its runtime was running once ready
            await asyncio.wait_for(asyncio.shield(self._started), 10)
            self._forked = False  # a second start is an error, as for any environment
            return
        if self._started is not None:
            raise SandboxError(f"environment {self.env_id} already started")
        self._started = self._loop.create_future()
        if self.snapshot:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            try:
                socket.send_fds(self._ctl, [b"start"], [theirs.fileno()])
            except BaseException:
                ours.close()
                raise
            finally:
                theirs.close()
            self.fork_requests = ours
        else:
            self._ctl.send(b"start")
        await asyncio.wait_for(asyncio.shield(self._started), 10)

    async def wait(self) -> int:
        if self._started is None:
            raise RuntimeError("sandbox not started")
        return await asyncio.shield(self._exited)

    @property
    def returncode(self) -> int | None:
        return self._exited.result() if self._exited.done() else None

    def drain_output(self) -> None:
        fd = self._out_fd
        spec = self.spec
        if fd is not None and drain(fd, spec.on_output if spec else lambda _chunk: None):
            self._close_output()

    def _close_output(self) -> None:
        if self._out_fd is not None:
            self._loop.remove_reader(self._out_fd)
            os.close(self._out_fd)
            self._out_fd = None

    def _sample(self) -> None:
        self._sample_peak()
        with contextlib.suppress(OSError, ValueError):
            self._oom_kills = max(self._oom_kills, self.cgroup.oom_kills())

    def _sample_peak(self) -> None:
        try:  # noqa: SIM105 - after every invoke: a try is cheaper than contextlib.suppress
            self._peak_bytes = max(self._peak_bytes, self.cgroup.peak_bytes())
        except (OSError, ValueError):
            pass

    def max_memory_used_mb(self) -> int:
        # Read after every invoke: the peak only (OOM kills matter once the runtime exits).
        if not self._destroyed:
            self._sample_peak()
        return max(1, -(-self._peak_bytes // (1024 * 1024)))

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of this environment (memory limit)."""
        if not self._destroyed:
            self._sample()
        return self._oom_kills > 0

    def end_init(self) -> None:
        """Apply the CPU quota proportional to memory (INIT ran with at least one vCPU)."""
        if self._init_done or self._destroyed:
            return
        self._init_done = True
        with contextlib.suppress(OSError):
            self.cgroup.set_cpu(self._cpu_vcpus)

    async def freeze(self) -> None:
        if self._destroyed:
            return
        self.end_init()
        self.cgroup.request_freeze(True)
        self._frozen = True
        # Returns once frozen, unless a thaw (an invoke arrived) or a destroy came first.
        deadline = time.monotonic() + 5
        while self._frozen and not self._destroyed and not self.cgroup.is_frozen():
            if time.monotonic() > deadline:
                raise SandboxError(f"environment {self.env_id} did not freeze")
            await asyncio.sleep(0.001)

    async def thaw(self) -> None:
        """Resume at once: thawing takes effect immediately, so nothing is waited for (one
        ``pwrite`` on the invoke path)."""
        if self._destroyed:
            return
        self.cgroup.request_freeze(False)
        self._frozen = False

    async def destroy(self) -> None:
        if self._destroyed:
            return
        self._destroyed = True
        try:
            self._sample()
            deadline = time.monotonic() + 10
            while True:
                try:
                    empty = self.cgroup.kill_step()
                except FileNotFoundError:
                    empty = True
                if empty or time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.001)
            if self._ctl is not None:
                # The init is dead (or never started): its end-of-file is on the way.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._exited), 2)
            self._ctl_closed()  # delivers the output left in the pipe
            self._close_output()
            self.listener.close()
            if self.fork_requests is not None:
                self.fork_requests.close()
            while not self.cgroup.remove():
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.001)
        finally:
            self._forget(self.env_id)


class IsolatedBackend:
    """Execution environments isolated with namespaces, a private root, cgroups and seccomp.

    ``prewarm`` blank environments (namespaces, cgroup, the function-independent part of the
    root and the Runtime API listener) are kept ready, so that ``create`` only adds the
    function's files; 0 disables the pool.
    """

    def __init__(
        self,
        root: str | Path,
        *,
        uid: int = SANDBOX_UID,
        gid: int = SANDBOX_GID,
        pids_max: int = 1024,
        cpu_quota: bool = True,
        prewarm: int = 2,
        extra_ro_paths: Iterable[str | os.PathLike[str]] = (),
        extra_rw_paths: Iterable[str | os.PathLike[str]] = (),
        expose_server_python: bool = True,
        cgroup_version: int | None = None,
        ready_timeout: float = 10.0,
        zygote: bool = True,
    ) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.uid, self.gid, self.pids_max, self.cpu_quota = uid, gid, pids_max, cpu_quota
        self.prewarm = prewarm
        self.extra_ro_paths = [os.fspath(p) for p in extra_ro_paths]
        if expose_server_python:  # Kiln's own interpreter is a runtime too (and bootstraps use it)
            self.extra_ro_paths += [sys.prefix, sys.base_prefix]
        self.extra_rw_paths = [os.fspath(p) for p in extra_rw_paths]
        self.ready_timeout = ready_timeout
        self.zygote = zygote
        self._compiled: set[str] = set()
        self._lock_fd = os.open(self.root / "backend.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._lock_fd)
            raise SandboxError(f"another live backend owns {self.root}") from None
        self.backend_id = hashlib.sha256(str(self.root).encode()).hexdigest()[:12]
        self.cgroups = CgroupTree.detect(self.backend_id, prefer=cgroup_version)
        self.cgroups.ensure()
        self._newroot = self.root / "newroot"
        self._newroot.mkdir(exist_ok=True)
        self._live: dict[str, IsolatedSandbox] = {}
        self._pool: list[IsolatedSandbox] = []
        self._refill_task: asyncio.Task[None] | None = None
        self._launcher: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._counter = itertools.count(1)
        self._closed = False
        self.swept = self.sweep()

    # -- start-up sweep -------------------------------------------------------------------------

    def sweep(self) -> list[str]:
        """Remove what a previous owner of ``root`` left (``kill -9``): its launcher, its
        environments' processes and cgroups, mounts under ``root``.  Returns what it removed."""
        removed: list[str] = []
        pid_file = self.root / "launcher.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text())
            if self._launcher is None or pid != self._launcher.pid:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"kiln.sandbox._launcher" in cmdline:
                    os.kill(pid, signal.SIGKILL)
                    removed.append(f"launcher {pid}")
        removed += [f"cgroup {name}" for name in self.cgroups.sweep()]
        with contextlib.suppress(OSError):
            root = str(self.root)
            for line in reversed(Path("/proc/self/mountinfo").read_text().splitlines()):
                point = line.split()[4].replace("\\040", " ")
                if _under(point, [root]):
                    with contextlib.suppress(OSError):
                        _namespaces.umount2(point, _namespaces.MNT_DETACH)
                        removed.append(f"mount {point}")
        return removed

    # -- the launcher ---------------------------------------------------------------------------

    def _ensure_launcher(self) -> socket.socket:
        if self._sock is not None and self._launcher is not None:
            if self._launcher.poll() is None:
                return self._sock
            self._sock.close()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            if self.zygote:
                interpreter, env = [ZYGOTE_PYTHON, *ZYGOTE_FLAGS], ENVIRONMENT_ROOM
            else:
                interpreter, env = [sys.executable, "-I", "-S"], {}
            self._launcher = subprocess.Popen(
                [*interpreter, "-c", _LAUNCHER_CODE, str(theirs.fileno()), _KILN_PARENT,
                 *(["zygote"] if self.zygote else [])],
                pass_fds=[theirs.fileno()],
                stdin=subprocess.DEVNULL,
                close_fds=True,
                start_new_session=True,  # a signal to the server's process group spares it
                env=env,  # nothing of the server's environment (PYTHONPATH, ...) applies
            )
        finally:
            theirs.close()
        (self.root / "launcher.pid").write_text(str(self._launcher.pid))
        self._sock = ours
        return ours

    async def _spawn(self, netns: bool) -> IsolatedSandbox:
        """A blank environment: cgroup, namespaces, the common root, the listener."""
        cgroup = self.cgroups.cgroup(f"env{next(self._counter)}")
        cgroup.create(Limits(128, None, self.pids_max))
        cfg: dict[str, Any] = {
            "cgroup_procs": cgroup.procs_files(),
            "uid": self.uid,
            "gid": self.gid,
            "hostname": "localhost",
            "netns": netns,
            "newroot": os.fspath(self._newroot),
            "cgroup_parents": [os.fspath(p) for p in self.cgroups.parents.values()],
        }
        message = json.dumps(cfg).encode()

        def send(fds: list[int]) -> None:
            try:
                socket.send_fds(self._ensure_launcher(), [message], fds)
            except (BrokenPipeError, ConnectionResetError):
                self._sock = None
                socket.send_fds(self._ensure_launcher(), [message], fds)

        return await self._launch(send, cgroup)

    async def _launch(self, send: Callable[[list[int]], object], cgroup: CgroupV1 | CgroupV2,
                      spec: SandboxSpec | None = None,
                      quota: float | None = None) -> IsolatedSandbox:
        """Hand a new environment's control socket and output pipe to ``send`` (to the
        launcher, or with ``spec`` to a SnapStart template), then wait until it is ready."""
        ctl, ctl_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        out_r, out_w = os.pipe()
        try:
            send([ctl_child.fileno(), out_w])
        except BaseException:
            ctl.close()
            os.close(out_r)
            with contextlib.suppress(OSError):
                cgroup.remove()
            raise
        finally:
            ctl_child.close()
            os.close(out_w)
        sandbox = IsolatedSandbox(cgroup, ctl, out_r, forget=self._forget, forked=spec is not None)
        if spec is not None:
            sandbox.spec, sandbox.env_id, sandbox._cpu_vcpus = spec, spec.env_id, quota
            self._live[spec.env_id] = sandbox
        try:
            await sandbox._wait_ready(self.ready_timeout)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    def _forget(self, env_id: str) -> None:
        if env_id:
            self._live.pop(env_id, None)

    def _schedule_refill(self) -> None:
        if self.prewarm <= 0 or self._closed:
            return
        if self._refill_task is None or self._refill_task.done():
            self._refill_task = asyncio.get_running_loop().create_task(self._refill())

    async def _refill(self) -> None:
        while not self._closed and len(self._pool) < self.prewarm:
            try:
                sandbox = await self._spawn(netns=True)
            except (OSError, SandboxError, TimeoutError):
                return  # create() spawns inline and reports the error
            if self._closed:
                await sandbox.destroy()
                return
            self._pool.append(sandbox)

    async def prepare(self) -> None:
        """Fill the pool of pre-warmed environments now (optional; ``create`` does it too)."""
        self._schedule_refill()
        if self._refill_task is not None:
            await self._refill_task

    # -- the protocol ---------------------------------------------------------------------------

    async def create(self, spec: SandboxSpec) -> IsolatedSandbox:
        if self._closed:
            raise SandboxError("backend is closed")
        if spec.env_id in self._live:
            raise SandboxError(f"environment {spec.env_id} exists")
        egress = spec.egress
        layers = [os.fspath(Path(p).resolve()) for p in spec.layers]
        for layer in layers:
            if ":" in layer or "," in layer:
                raise ValueError(f"layer path {layer!r} may not contain ':' or ','")
        if spec.snapshot and (egress or self._zygote_script(
                spec.argv, spec.env, layers, spec.task_root) is None):
            raise SnapshotUnsupported(
                "SnapStart templates need Kiln's Python runtime on the zygote's interpreter, no "
                "layers or /var/task/lib, and no network but the environment's own loopback")
        sandbox: IsolatedSandbox | None = None
        while not egress and self._pool:
            candidate = self._pool.pop(0)
            if candidate.alive:
                sandbox = candidate
                break
            await candidate.destroy()
        if sandbox is None:
            sandbox = await self._spawn(netns=not egress)
        self._schedule_refill()
        self._live[spec.env_id] = sandbox
        sandbox.snapshot = spec.snapshot
        try:
            argv = inside_paths(spec, spec.argv)
            env = self._inside_env(spec)
            if egress:
                host_listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                host_listener.bind(("127.0.0.1", 0))
                host_listener.listen(128)
                host_listener.setblocking(False)
                sandbox.listener.close()
                sandbox.listener = host_listener
                sandbox.runtime_api_address = f"127.0.0.1:{host_listener.getsockname()[1]}"
            env["AWS_LAMBDA_RUNTIME_API"] = sandbox.runtime_api_address
            quota = self._limit(sandbox.cgroup, spec)
            extra = list(self.extra_ro_paths)
            extra += [p for p in env.get("KILN_EXTRA_PYTHONPATH", "").split(":") if p]
            if env.get("LAMBDA_RUNTIME_DIR"):
                extra.append(env["LAMBDA_RUNTIME_DIR"])
            sandbox.rw_paths = [
                real for real in map(os.path.realpath, self.extra_rw_paths)
                if os.path.isdir(real) and real != "/" and not _under(real, _FORBIDDEN_PREFIXES)
            ]
            config = {
                "argv": argv,
                "env": env,
                "task_root": os.fspath(Path(spec.task_root).resolve()),
                "layers": layers,
                "ephemeral_mb": spec.ephemeral_mb,
                "ro_paths": runtime_paths(argv, extra),
                "zygote": self._zygote_script(argv, env, layers, spec.task_root) is not None,
                "rw_paths": sandbox.rw_paths,
            }
            await sandbox._assign(spec, config, quota, self.ready_timeout)
        except BaseException:
            await sandbox.destroy()
            raise
        return sandbox

    def _inside_env(self, spec: SandboxSpec) -> dict[str, str]:
        return dict(zip(spec.env, inside_paths(spec, spec.env.values()), strict=True))

    def _limit(self, cgroup: CgroupV1 | CgroupV2, spec: SandboxSpec) -> float | None:
        """Apply ``spec``'s limits to ``cgroup``; the CPU quota in vCPUs for after INIT."""
        quota = spec.memory_mb / 1769 if self.cpu_quota else None
        # INIT runs with at least one vCPU, like Lambda's init boost; end_init() applies it.
        cgroup.create(Limits(spec.memory_mb, None if quota is None else max(quota, 1.0),
                             self.pids_max))
        cgroup.reset_peak()
        return quota

    async def fork(self, template: Sandbox, spec: SandboxSpec) -> IsolatedSandbox:
        """A new environment forked from ``template`` (see ``_snapshot``): its own cgroup
        (``spec``'s limits), namespaces, ``/tmp``, listener and environment variables."""
        if (self._closed or not isinstance(template, IsolatedSandbox) or not template.alive
                or template.fork_requests is None):
            raise SandboxError("no started SnapStart template to fork")
        requests = template.fork_requests
        if spec.env_id in self._live:
            raise SandboxError(f"environment {spec.env_id} exists")
        cgroup = self.cgroups.cgroup(f"env{next(self._counter)}")
        quota = self._limit(cgroup, spec)
        # The launcher removes it with the others should the server die.
        track = {"track": [os.path.dirname(p) for p in cgroup.procs_files()]}
        with contextlib.suppress(OSError):  # best effort: sweep() finds what it missed
            self._ensure_launcher().send(json.dumps(track).encode())
        env = self._inside_env(spec)
        env["AWS_LAMBDA_RUNTIME_API"] = RUNTIME_API_ADDRESS
        request = json.dumps({"env": env, "ephemeral_mb": spec.ephemeral_mb,
                              "hostname": "localhost", "rw_paths": template.rw_paths}).encode()
        try:
            return await self._launch(lambda fds: socket.send_fds(requests, [request], fds),
                                      cgroup, spec, quota)
        except SandboxError as exc:  # e.g. no user namespaces here: INIT in each environment
            raise SnapshotUnsupported(f"forking the SnapStart template failed: {exc}") from exc

    def _zygote_script(self, argv: list[str], env: dict[str, str], layers: list[str],
                       task_root: Path) -> str | None:
        """The script to run as a fork of the zygote rather than with ``execve``, when that is
        the same as what a fresh interpreter would do: Kiln's Python runtime on the zygote's
        interpreter, nothing for the dynamic loader to find at start-up (layers or
        ``/var/task/lib`` for ``LD_LIBRARY_PATH``), no start-up variables."""
        if not self.zygote or len(argv) != len(ZYGOTE_FLAGS) + 2:
            return None
        script = argv[-1]
        if (os.path.realpath(argv[0]) != ZYGOTE_PYTHON or tuple(argv[1:-1]) != ZYGOTE_FLAGS
                or not script.endswith(".py") or not os.path.isfile(script) or layers
                or (Path(task_root) / "lib").is_dir()
                or any(_STARTUP_VARIABLES.fullmatch(name) for name in env)):
            return None
        if script not in self._compiled:  # the runtime reads bytecode rather than compiling
            self._compiled.add(script)
            with contextlib.suppress(py_compile.PyCompileError, OSError):
                py_compile.compile(script, doraise=True)
        return script

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._refill_task is not None:
            self._refill_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._refill_task
        for sandbox in [*self._pool, *self._live.values()]:
            await sandbox.destroy()
        self._pool.clear()
        self._live.clear()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._launcher is not None:
            deadline = time.monotonic() + 2
            while self._launcher.poll() is None and time.monotonic() < deadline:
                await asyncio.sleep(0.002)
            if self._launcher.poll() is None:
                self._launcher.kill()
                self._launcher.wait()
            self._launcher = None
        with contextlib.suppress(OSError):
            (self.root / "launcher.pid").unlink()
        self.cgroups.remove_parents()
        os.close(self._lock_fd)

    def live(self) -> list[IsolatedSandbox]:
        return list(self._live.values())
