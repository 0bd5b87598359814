"""Execution environments behind one small protocol.

    backend = make_backend("process", root=data_dir / "sandboxes")
    sandbox = await backend.create(spec)        # resources + the Runtime API listener
    serve(sandbox.listener)                     # the host answers the Runtime API on it
    await sandbox.start()                       # the runtime process begins INIT
    ...; await sandbox.freeze(); await sandbox.thaw(); ...
    await sandbox.destroy()                     # idempotent; nothing is left behind

One Kiln holds its backends in a ``Backends``: the configured one, and any other a function asks
for by name (the ``kiln:sandbox`` tag), made when first asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

from kiln.sandbox.types import Sandbox, SandboxBackend, SandboxSpec

__all__ = ["BackendUnavailable", "Backends", "Sandbox", "SandboxBackend", "SandboxSpec",
           "make_backend"]

log = logging.getLogger("kiln.sandbox")


def make_backend(name: str, root: str, shared_dirs: Sequence[str] = ()) -> SandboxBackend:
    """The backend named in settings: ``process`` (isolated: namespaces, cgroups, seccomp;
    needs root on Linux) or ``unisolated`` (plain child processes, for hosts without those).
    ``shared_dirs`` are host directories every isolated environment sees read-write."""
    if name == "process":
        from kiln.sandbox.isolated import IsolatedBackend

        try:
            return IsolatedBackend(root, extra_rw_paths=shared_dirs)
        except OSError as exc:  # not root, no cgroup hierarchy, ...
            raise RuntimeError(
                f"the process sandbox backend cannot isolate functions on this host ({exc}): it "
                "needs root on Linux, with namespaces and cgroups; KILN_SANDBOX_BACKEND="
                "unisolated runs them as plain processes, without isolation") from exc
    if name == "unisolated":
        from kiln.sandbox.unisolated import UnisolatedBackend

        return UnisolatedBackend(root)
    if name == "microvm":
        from kiln.sandbox.microvm import MicrovmBackend

        return MicrovmBackend(root)
    raise ValueError(f"unknown sandbox backend {name!r} (known: process, unisolated, microvm)")


class BackendUnavailable(RuntimeError):
    """The backend a function asked for cannot be made on this host; the message says why."""


class Backends:
    """The sandbox backends of one Kiln, by name.  The default one (the ``sandbox_backend``
    setting) is made at once, and its failure stops the server as before; another is made only
    when a function first asks for it, so a host that never runs a microVM needs no guest
    image, and one whose backend cannot be made fails only that function's invokes.

        backends = Backends("process", root, shared_dirs)
        backends.get("microvm")          # made now, then kept; BackendUnavailable if it cannot be
        await backends.close()           # closes every backend made

    ``made``: backends already made, by name (tests pass fakes).  What a killed server's other
    backends left behind is swept at once, without making them.
    """

    def __init__(self, default: str, root: str, shared_dirs: Sequence[str] = (),
                 made: Mapping[str, SandboxBackend] | None = None) -> None:
        self.default = default
        self.root = root
        self.shared_dirs = shared_dirs
        self._made = dict(made or {})
        self._closed = False
        if default not in self._made:
            self._made[default] = make_backend(default, root, shared_dirs)
        self._sweep()

    def get(self, name: str) -> SandboxBackend:
        backend = self._made.get(name)
        if backend is not None:
            return backend
        if self._closed:
            raise BackendUnavailable("Kiln is shutting down")
        try:
            backend = self._made[name] = make_backend(name, self.root, self.shared_dirs)
        except Exception as exc:  # whatever stops it: no guest image, not root, ...
            raise BackendUnavailable(f"the {name} sandbox backend is not available on this "
                                     f"host: {exc}") from exc
        return backend

    def _sweep(self) -> None:
        """Leftovers of backends not made (yet) after a ``kill -9``: a process backend's left
        its launcher's pid file (a clean close removes it), so it is made now, which sweeps;
        microVM monitors are swept by their directory, which needs no guest image."""
        root = Path(self.root)
        if "process" not in self._made and (root / "launcher.pid").exists():
            try:
                self.get("process")
            except BackendUnavailable as exc:
                log.warning("leftovers of the process backend in %s stay: %s", root, exc)
        if "microvm" not in self._made and (root / "microvm" / "vms").is_dir():
            from kiln.vmm.launch import sweep

            sweep(str(root / "microvm" / "vms"))

    async def close(self) -> None:
        self._closed = True
        for backend in self._made.values():
            await backend.close()
