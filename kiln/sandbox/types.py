"""The vocabulary every sandbox backend speaks."""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class SandboxSpec:
    """What an execution environment is made of.

    ``argv`` runs with ``env`` (the runtime's environment, minus ``AWS_LAMBDA_RUNTIME_API`` which
    the backend sets to where its listener is reachable from inside) and ``cwd=task_root``.
    Output (stdout and stderr, interleaved) goes to ``on_output`` in arbitrary chunks.
    ``egress``: the environment may use the host's network (reach Kiln and the outside); by
    default an isolating backend gives it only a loopback of its own.
    ``snapshot``: make a SnapStart template, whose runtime runs INIT and then serves forks
    (``SnapshotBackend.fork``) instead of invokes; backends that cannot snapshot it raise.
    """

    env_id: str
    argv: list[str]
    env: dict[str, str]
    task_root: Path
    layers: list[Path] = field(default_factory=list)
    memory_mb: int = 128
    ephemeral_mb: int = 512
    on_output: Callable[[bytes], None] = lambda _chunk: None
    egress: bool = False
    snapshot: bool = False


class Sandbox(Protocol):
    """One execution environment."""

    env_id: str
    #: Listening socket for the Runtime API; the host serves it from its own event loop.
    listener: socket.socket

    async def start(self) -> None:
        """Start the runtime process (INIT begins)."""

    async def wait(self) -> int:
        """Wait for the runtime to exit; returns its wait status as ``returncode`` (-N: signal)."""

    def drain_output(self) -> None:
        """Deliver any output already written by the runtime to ``on_output`` now."""

    def max_memory_used_mb(self) -> int:
        """Peak memory of the environment so far, in MB."""

    async def freeze(self) -> None:
        """Stop the environment's processes while idle."""

    async def thaw(self) -> None:
        """Resume a frozen environment."""

    async def destroy(self) -> None:
        """Kill every process and release every resource; safe to call twice."""


@runtime_checkable
class ResourceLimited(Protocol):
    """A sandbox that enforces Lambda's memory and CPU limits (the isolated backend) also
    says whether its memory limit killed the runtime, and lowers the CPU after INIT."""

    def oom_killed(self) -> bool:
        """Whether the kernel's OOM killer killed a process of the environment."""

    def end_init(self) -> None:
        """INIT is over: from now on the CPU share proportional to memory applies."""


@runtime_checkable
class Restorable(Protocol):
    """A sandbox that may start from a snapshot its configuration's first environment took
    after INIT (microVMs): then no INIT ran in it, and its REPORT tells the restore."""

    @property
    def restored(self) -> bool:
        """Whether ``start`` restored it from a snapshot."""


class SnapshotUnsupported(RuntimeError):
    """This environment cannot be a SnapStart template (e.g. not a runtime the backend can
    fork after INIT): its version's environments start with INIT instead."""


@runtime_checkable
class SnapshotBackend(Protocol):
    """A backend that makes environments from a post-INIT template (SnapStart)."""

    async def fork(self, template: Sandbox, spec: SandboxSpec) -> Sandbox:
        """A new environment for ``spec`` forked from ``template`` (created with ``snapshot``
        and started; its INIT done): its runtime is ready for its first event, no INIT."""


class SandboxBackend(Protocol):
    async def create(self, spec: SandboxSpec) -> Sandbox:
        """Prepare an environment and its Runtime API listener; the runtime is not started."""

    async def close(self) -> None:
        """Destroy whatever this backend still holds."""
