"""cgroup v1 and v2 for execution environments: limits, peak memory, OOM kills, freezer, kill.

Layout: each backend owns a parent cgroup and puts one child per environment in it; a startup
``sweep`` of the parent removes leftovers of a server that was killed with ``kill -9``.

* v1: ``<hierarchy root>/kiln/<backend id>/`` in each hierarchy.  The root, not the server's own
  cgroup, so that the parent stays the same across restarts from anywhere (the sweep must find
  it) and nothing is added inside cgroups that some other manager owns and may want to remove.
  Controllers used: ``memory``, ``cpu``, ``pids`` and ``freezer``.
* v2: ``<server's cgroup>/kiln/<backend id>/``, because a delegated v2 subtree (systemd
  ``Delegate=yes``) is the only place a service may create cgroups.  The parents enable
  ``+memory +cpu +pids`` in ``cgroup.subtree_control``; because of the "no internal processes"
  rule, a server whose own cgroup holds processes moves them into a ``kiln-host`` leaf first (as
  container runtimes do in a delegated cgroup).

Every primitive is a quick file operation and never blocks; the asynchronous waiting (for a
freeze to complete, for a killed cgroup to empty) is left to the caller.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: Lambda gives one vCPU at 1,769 MB.
MB_PER_VCPU = 1769
CPU_PERIOD_US = 100_000
V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")
V2_CONTROLLERS = ("memory", "cpu", "pids")
V2_HOST_LEAF = "kiln-host"


@dataclass(frozen=True)
class Limits:
    memory_mb: int
    #: CPU bandwidth cap in vCPUs (None: no quota, weight only).
    cpu_quota_vcpus: float | None
    pids_max: int

    @property
    def vcpus(self) -> float:
        return self.memory_mb / MB_PER_VCPU


def _read(path: Path) -> str:
    return path.read_text()


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def _kill_pids(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _rmdir(path: Path) -> bool:
    """Remove a cgroup directory; False while it is still busy."""
    try:
        path.rmdir()
    except FileNotFoundError:
        return True
    except OSError as exc:
        if exc.errno in (errno.EBUSY, errno.ENOTEMPTY):
            return False
        raise
    return True


def _keyed(text: str, key: str) -> int | None:
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == key:
            return int(parts[1])
    return None


class Cgroup:
    """One environment's cgroup (in one or several hierarchies)."""

    version: int
    #: Descriptors of files read after every invoke (the memory peak), kept open: one pread
    #: instead of open, fstat, ioctl, lseek, read, read and close, costly on nested guests.
    #: Keyed by the file's name; its path is built only to open it (a Path join per invoke
    #: costs more than the pread).
    _held: dict[str, int]

    def _read_held(self, name: str, path: Callable[[], Path]) -> str:
        fd = self._held.get(name)
        if fd is None:
            fd = self._held[name] = os.open(path(), os.O_RDONLY | os.O_CLOEXEC)
        return os.pread(fd, 4096, 0).decode()

    def _write_held(self, name: str, path: Callable[[], Path], value: bytes) -> None:
        """Write through a held descriptor (the freezer: written on every freeze and thaw)."""
        fd = self._held.get(name)
        if fd is None:
            fd = self._held[name] = os.open(path(), os.O_WRONLY | os.O_CLOEXEC)
        os.pwrite(fd, value, 0)

    def _close_held(self) -> None:
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()

    def procs_files(self) -> list[str]:
        """``cgroup.procs`` files a process writes ``0`` to in order to join."""
        raise NotImplementedError

    def set_cpu(self, vcpus: float | None) -> None:
        raise NotImplementedError

    def pids(self) -> list[int]:
        raise NotImplementedError

    def request_freeze(self, frozen: bool) -> None:
        raise NotImplementedError

    def is_frozen(self) -> bool:
        raise NotImplementedError

    def peak_bytes(self) -> int:
        raise NotImplementedError

    def reset_peak(self) -> None:
        """Start the peak over (v1 only; v2 resets are per open file)."""

    def oom_kills(self) -> int:
        raise NotImplementedError

    def kill_step(self) -> bool:
        """Kill whatever runs in the cgroup; True once it is empty."""
        raise NotImplementedError

    def remove(self) -> bool:
        """Remove the directories; False while the kernel still calls them busy."""
        raise NotImplementedError

    def exists(self) -> bool:
        raise NotImplementedError


class CgroupV1(Cgroup):
    version = 1

    def __init__(self, dirs: dict[str, Path]) -> None:
        self.dirs = dirs
        self._held = {}

    def create(self, limits: Limits) -> None:
        for path in self.dirs.values():
            path.mkdir(exist_ok=True)
        mem = self.dirs["memory"]
        limit = limits.memory_mb * 1024 * 1024
        memsw = mem / "memory.memsw.limit_in_bytes"
        if memsw.exists():  # memory+swap may never be below memory: lift it first
            with contextlib.suppress(OSError):
                _write(memsw, "-1")
        _write(mem / "memory.limit_in_bytes", str(limit))
        if memsw.exists():
            with contextlib.suppress(OSError):  # no swap accounting: nothing to cap
                _write(memsw, str(limit))
        with contextlib.suppress(OSError):
            _write(mem / "memory.swappiness", "0")
        _write(self.dirs["pids"] / "pids.max", str(limits.pids_max))
        shares = max(2, round(1024 * limits.vcpus))
        _write(self.dirs["cpu"] / "cpu.shares", str(shares))
        self.set_cpu(limits.cpu_quota_vcpus)

    def set_cpu(self, vcpus: float | None) -> None:
        cpu = self.dirs["cpu"]
        if not (cpu / "cpu.cfs_quota_us").exists():
            return
        quota = -1 if vcpus is None else max(1000, round(CPU_PERIOD_US * vcpus))
        _write(cpu / "cpu.cfs_period_us", str(CPU_PERIOD_US))
        _write(cpu / "cpu.cfs_quota_us", str(quota))

    def procs_files(self) -> list[str]:
        return [str(path / "cgroup.procs") for path in self.dirs.values()]

    def pids(self) -> list[int]:
        found: set[int] = set()
        for path in self.dirs.values():
            with contextlib.suppress(FileNotFoundError):
                found.update(int(x) for x in _read(path / "cgroup.procs").split())
        return sorted(found)

    def request_freeze(self, frozen: bool) -> None:
        self._write_held("freezer.state", lambda: self.dirs["freezer"] / "freezer.state",
                         b"FROZEN" if frozen else b"THAWED")

    def is_frozen(self) -> bool:
        return _read(self.dirs["freezer"] / "freezer.state").strip() == "FROZEN"

    def peak_bytes(self) -> int:
        name = "memory.max_usage_in_bytes"
        return int(self._read_held(name, lambda: self.dirs["memory"] / name))

    def reset_peak(self) -> None:
        with contextlib.suppress(OSError):
            _write(self.dirs["memory"] / "memory.max_usage_in_bytes", "0")

    def oom_kills(self) -> int:
        return _keyed(_read(self.dirs["memory"] / "memory.oom_control"), "oom_kill") or 0

    def kill_step(self) -> bool:
        pids = self.pids()
        if not pids:
            return True
        # Frozen tasks only die once thawed; freezing first stops a fork bomb from outrunning us.
        # Dying takes CPU time too, charged to the cgroup: lift its quota (else a thousand
        # killed processes at a small function's share take seconds to go).
        with contextlib.suppress(OSError):
            self.set_cpu(None)
            self.request_freeze(True)
        _kill_pids(pids)
        with contextlib.suppress(OSError):
            self.request_freeze(False)
        return not self.pids()

    def remove(self) -> bool:
        self._close_held()
        return all([_rmdir(path) for path in self.dirs.values()])

    def exists(self) -> bool:
        return any(path.exists() for path in self.dirs.values())


class CgroupV2(Cgroup):
    version = 2

    def __init__(self, path: Path) -> None:
        self.path = path
        self._held = {}

    def create(self, limits: Limits) -> None:
        self.path.mkdir(exist_ok=True)
        limit = limits.memory_mb * 1024 * 1024
        _write(self.path / "memory.max", str(limit))
        for name, value in (("memory.swap.max", "0"), ("memory.oom.group", "1")):
            if (self.path / name).exists():
                _write(self.path / name, value)
        _write(self.path / "pids.max", str(limits.pids_max))
        weight = min(10000, max(1, round(100 * limits.vcpus)))
        _write(self.path / "cpu.weight", str(weight))
        self.set_cpu(limits.cpu_quota_vcpus)

    def set_cpu(self, vcpus: float | None) -> None:
        if not (self.path / "cpu.max").exists():
            return
        quota = "max" if vcpus is None else str(max(1000, round(CPU_PERIOD_US * vcpus)))
        _write(self.path / "cpu.max", f"{quota} {CPU_PERIOD_US}")

    def procs_files(self) -> list[str]:
        return [str(self.path / "cgroup.procs")]

    def pids(self) -> list[int]:
        try:
            return sorted(int(x) for x in _read(self.path / "cgroup.procs").split())
        except FileNotFoundError:
            return []

    def request_freeze(self, frozen: bool) -> None:
        self._write_held("cgroup.freeze", lambda: self.path / "cgroup.freeze",
                         b"1" if frozen else b"0")

    def is_frozen(self) -> bool:
        return _keyed(_read(self.path / "cgroup.events"), "frozen") == 1

    def peak_bytes(self) -> int:
        for name in ("memory.peak", "memory.current"):
            with contextlib.suppress(FileNotFoundError):
                return int(self._read_held(name, functools.partial(self.path.joinpath, name)))
        return 0

    def oom_kills(self) -> int:
        return _keyed(_read(self.path / "memory.events"), "oom_kill") or 0

    def kill_step(self) -> bool:
        if not self.path.exists():
            return True
        with contextlib.suppress(OSError):  # dying takes CPU time too (see CgroupV1.kill_step)
            self.set_cpu(None)
        if (self.path / "cgroup.kill").exists():
            _write(self.path / "cgroup.kill", "1")  # also kills frozen tasks
        else:
            _kill_pids(self.pids())
            with contextlib.suppress(OSError):
                self.request_freeze(False)
        try:
            populated = _keyed(_read(self.path / "cgroup.events"), "populated")
        except FileNotFoundError:
            return True
        return populated == 0 if populated is not None else not self.pids()

    def remove(self) -> bool:
        self._close_held()
        return _rmdir(self.path)

    def exists(self) -> bool:
        return self.path.exists()


# -- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Mount:
    root: str
    point: Path
    fstype: str
    options: frozenset[str]


def _mounts(mountinfo: str) -> list[_Mount]:
    mounts = []
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields, rfields = left.split(), right.split()
        if len(fields) < 5 or len(rfields) < 3:
            continue
        point = fields[4].replace("\\040", " ")
        mounts.append(_Mount(fields[3], Path(point), rfields[0], frozenset(rfields[2].split(","))))
    return mounts


def _own_paths(proc_cgroup: str) -> dict[str, str]:
    """Controller name (``""`` for the v2 hierarchy) -> this process's cgroup path."""
    paths: dict[str, str] = {}
    for line in proc_cgroup.splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else [""]:
            paths[name] = path
    return paths


def _under(mount: _Mount, path: str) -> Path:
    if mount.root != "/" and path.startswith(mount.root):
        path = path[len(mount.root) :]
    return mount.point / path.lstrip("/")


class CgroupTree:
    """The backend's parent cgroup(s) and how to make environments' cgroups under it."""

    def __init__(self, version: int, parents: dict[str, Path]) -> None:
        self.version = version
        #: v1: controller -> parent dir; v2: ``{"": parent dir}``.
        self.parents = parents

    @classmethod
    def detect(
        cls,
        backend_id: str,
        mountinfo: str | None = None,
        proc_cgroup: str | None = None,
        prefer: int | None = None,
    ) -> CgroupTree:
        """Find where this machine's memory controller lives (v2 if it is there, else v1)."""
        if mountinfo is None:
            mountinfo = Path("/proc/self/mountinfo").read_text()
        if proc_cgroup is None:
            proc_cgroup = Path("/proc/self/cgroup").read_text()
        mounts, own = _mounts(mountinfo), _own_paths(proc_cgroup)
        if own.get("", "").endswith("/" + V2_HOST_LEAF):  # moved there by an earlier ensure()
            own[""] = own[""][: -len(V2_HOST_LEAF) - 1] or "/"
        v2 = next(
            (
                m
                for m in mounts
                if m.fstype == "cgroup2"
                and "memory" in _controllers(m.point / own.get("", "/").lstrip("/"), m.point)
            ),
            None,
        )
        v1: dict[str, Path] = {}
        for ctrl in V1_CONTROLLERS:
            mount = next((m for m in mounts if m.fstype == "cgroup" and ctrl in m.options), None)
            if mount is not None:
                v1[ctrl] = mount.point / "kiln" / backend_id
        if v2 is not None and prefer != 1:
            return cls(2, {"": _under(v2, own.get("", "/")) / "kiln" / backend_id})
        if len(v1) == len(V1_CONTROLLERS) and prefer != 2:
            return cls(1, v1)
        missing = sorted(set(V1_CONTROLLERS) - set(v1))
        reasons = []
        if prefer != 1:
            reasons.append("no cgroup2 hierarchy with the memory controller")
        if prefer != 2:
            reasons.append(f"cgroup v1 lacks {', '.join(missing) or 'nothing'}")
        raise OSError(errno.ENOTSUP, "no usable cgroup hierarchy: " + "; ".join(reasons))

    def ensure(self) -> None:
        """Create the parent directories (and on v2 enable the controllers for children)."""
        if self.version == 1:
            for ctrl, path in self.parents.items():
                path.mkdir(parents=True, exist_ok=True)
                if ctrl == "memory":
                    with contextlib.suppress(OSError):
                        _write(path / "memory.use_hierarchy", "1")
            return
        parent = self.parents[""]
        chain = [parent.parent.parent, parent.parent, parent]  # own cgroup, kiln, backend
        _enable_v2(chain[0], move_own=True)
        for path in chain[1:]:
            path.mkdir(exist_ok=True)
            _enable_v2(path, move_own=False)

    def cgroup(self, name: str) -> CgroupV1 | CgroupV2:
        if self.version == 1:
            return CgroupV1({ctrl: path / name for ctrl, path in self.parents.items()})
        return CgroupV2(self.parents[""] / name)

    def children(self) -> list[str]:
        names: set[str] = set()
        for path in self.parents.values():
            with contextlib.suppress(FileNotFoundError):
                names.update(p.name for p in path.iterdir() if p.is_dir())
        return sorted(names)

    def sweep(self) -> list[str]:
        """Kill and remove every environment cgroup left under the parent; returns their names."""
        removed = []
        for name in self.children():
            group = self.cgroup(name)
            for _ in range(2000):
                if group.kill_step() and group.remove():
                    break
                os.sched_yield()
            removed.append(name)
        return removed

    def remove_parents(self) -> None:
        for path in self.parents.values():
            _rmdir(path)
            with contextlib.suppress(OSError):  # shared by every backend: only when empty
                _rmdir(path.parent)


def _controllers(path: Path, mount_point: Path) -> set[str]:
    for candidate in (path, mount_point):
        with contextlib.suppress(OSError):
            return set(_read(candidate / "cgroup.controllers").split())
    return set()


def _enable_v2(path: Path, move_own: bool) -> None:
    wanted = [c for c in V2_CONTROLLERS if c in _controllers(path, path)]
    enabled = set(_read(path / "cgroup.subtree_control").split())
    todo = " ".join(f"+{c}" for c in wanted if c not in enabled)
    if not todo:
        return
    try:
        _write(path / "cgroup.subtree_control", todo)
    except OSError as exc:
        if exc.errno != errno.EBUSY or not move_own:
            raise
        # "No internal processes": move our cgroup's processes into a leaf, then retry.
        leaf = path / V2_HOST_LEAF
        leaf.mkdir(exist_ok=True)
        for pid in _read(path / "cgroup.procs").split():
            with contextlib.suppress(OSError):
                _write(leaf / "cgroup.procs", pid)
        _write(path / "cgroup.subtree_control", todo)
