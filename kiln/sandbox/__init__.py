"""Execution environments behind one small protocol.

    backend = make_backend("process", root=data_dir / "sandboxes")
    sandbox = await backend.create(spec)        # resources + the Runtime API listener
    serve(sandbox.listener)                     # the host answers the Runtime API on it
    await sandbox.start()                       # the runtime process begins INIT
    ...; await sandbox.freeze(); await sandbox.thaw(); ...
    await sandbox.destroy()                     # idempotent; nothing is left behind
"""

from collections.abc import Sequence

from kiln.sandbox.types import Sandbox, SandboxBackend, SandboxSpec

__all__ = ["Sandbox", "SandboxBackend", "SandboxSpec", "make_backend"]


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
