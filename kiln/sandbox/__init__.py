"""Execution environments behind one small protocol.

    backend = make_backend("process", root=data_dir / "sandboxes")
    sandbox = await backend.create(spec)        # resources + the Runtime API listener
    serve(sandbox.listener)                     # the host answers the Runtime API on it
    await sandbox.start()                       # the runtime process begins INIT
    ...; await sandbox.freeze(); await sandbox.thaw(); ...
    await sandbox.destroy()                     # idempotent; nothing is left behind
"""

from kiln.sandbox.types import Sandbox, SandboxBackend, SandboxSpec

__all__ = ["Sandbox", "SandboxBackend", "SandboxSpec", "make_backend"]


def make_backend(name: str, root: str) -> SandboxBackend:
    """The backend named in settings (``process``)."""
    if name == "process":
        from kiln.sandbox.process import ProcessBackend

        return ProcessBackend(root)
    raise ValueError(f"unknown sandbox backend {name!r} (known: process)")
