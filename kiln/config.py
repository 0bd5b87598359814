"""Every Kiln setting in one place, each with its default.

Settings come from (lowest to highest precedence) the defaults below, ``KILN_*``
environment variables (``KILN_PORT=9000``, ``KILN_PYTHON_RUNTIMES=python3.12=/usr/bin/python3.12``)
and command-line flags.  ``kiln settings`` prints the effective values.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def _default_data_dir() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "kiln"


@dataclass
class Settings:
    """The documented settings schema (see ``docs`` in each field's metadata)."""

    host: str = field(default="127.0.0.1", metadata={"doc": "Address the endpoint listens on."})
    port: int = field(default=8900, metadata={"doc": "Port of the one endpoint serving every API."})
    data_dir: Path = field(
        default_factory=_default_data_dir,
        metadata={"doc": "Where state (SQLite), code, logs and environments live."},
    )
    region: str = field(default="us-east-1", metadata={"doc": "Region used in ARNs."})
    account_id: str = field(default="000000000000", metadata={"doc": "Account id used in ARNs."})
    sandbox_backend: str = field(
        default="process",
        metadata={"doc": "Execution environment backend: process (isolated; Linux, root) | "
                         "unisolated (plain child processes, no isolation) | microvm (each "
                         "environment a QEMU/Firecracker microVM; run 'kiln microvm "
                         "build-image' first).  The default: a function tagged "
                         "kiln:sandbox=process|microvm runs on that backend instead, made "
                         "when a function first needs it."},
    )
    sandbox_shared_dirs: list[str] = field(
        default_factory=list,
        metadata={"doc": "Host directories every environment sees read-write at the same path "
                         "(':'-separated): an explicit hole in the isolation, meant for tests "
                         "and local development."},
    )
    sandbox_egress: str = field(
        default="tagged",
        metadata={"doc": "Which functions' environments get the host's network (to reach Kiln "
                         "itself or the outside): tagged (those tagged kiln:egress=allow) | "
                         "all | none.  The others have only a loopback of their own (process "
                         "backend)."},
    )
    keep_alive_seconds: float = field(
        default=300.0,
        metadata={"doc": "An idle execution environment is destroyed after this many seconds."},
    )
    freeze_after_seconds: float = field(
        default=0.05,
        metadata={"doc": "An idle environment is frozen after this long without work, so "
                         "back-to-back invokes skip the freeze/thaw round trip."},
    )
    init_timeout_seconds: float = field(
        default=10.0, metadata={"doc": "Longest INIT phase before the environment is killed."}
    )
    account_concurrency: int = field(
        default=1000, metadata={"doc": "Concurrent executions allowed across all functions."}
    )
    async_workers: int = field(
        default=16, metadata={"doc": "Workers draining the Event (async) invocation queue."}
    )
    async_retry_base_seconds: float = field(
        default=60.0,
        metadata={"doc": "Wait before retrying an Event invoke whose function failed or timed "
                         "out; the second retry waits twice as long (AWS: about 1, then 2 "
                         "minutes)."},
    )
    async_throttle_base_seconds: float = field(
        default=1.0,
        metadata={"doc": "First wait before retrying a throttled Event invoke; it doubles per "
                         "throttle, up to 5 minutes, until the event's maximum age."},
    )
    dedupe_seconds: float = field(
        default=600.0,
        metadata={"doc": "How long a sync result is kept to answer a retried "
                         "amz-sdk-invocation-id."},
    )
    python_runtimes: dict[str, str] = field(
        default_factory=dict,
        metadata={
            "doc": "Interpreter per python3.x runtime, e.g. {'python3.12': '/usr/bin/python3.12'}; "
            "unset ones are discovered (this interpreter, then PATH, then pyenv versions)."
        },
    )
    node_binary: str = field(
        default="node", metadata={"doc": "Node.js executable serving nodejs20.x/nodejs22.x."}
    )
    vmm_firecracker: str = field(
        default="",
        metadata={"doc": "Path of a firecracker binary; when set, microVM monitors pass "
                         "Firecracker's API through to it instead of running QEMU."},
    )
    vmm_qemu: str = field(
        default="qemu-system-x86_64",
        metadata={"doc": "QEMU binary microVM monitors run (-M microvm; KVM on hardware KVM, "
                         "else TCG); scripts/ensure-qemu installs it."},
    )
    log_level: str = field(default="warning", metadata={"doc": "Server log level."})
    websocket_idle_seconds: float = field(
        default=600.0,
        metadata={"doc": "A WebSocket API connection with no message either way for this long "
                         "is closed (1001), as API Gateway's 10-minute idle timeout."},
    )
    websocket_max_seconds: float = field(
        default=7200.0,
        metadata={"doc": "Longest life of a WebSocket API connection before it is closed "
                         "(1001), as API Gateway's 2-hour maximum."},
    )
    alb_targets: str = field(
        default="",
        metadata={"doc": "ALB-style listeners, space-separated, each "
                         "PORT=FUNCTION[,multi][,health=/PATH]: its own port on this host, "
                         "requests become ALB events for FUNCTION (name, name:qualifier or ARN); "
                         "'multi' turns on lambda.multi_value_headers.enabled; 'health=' answers "
                         "that path with an ALB health check (200 healthy / 503 unhealthy). "
                         "Also `kiln serve --alb-target`."},
    )

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``KILN_<FIELD>`` variables, then non-None ``overrides``."""
        environ = dict(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            raw = environ.get(f"KILN_{f.name.upper()}")
            if raw is not None:
                values[f.name] = _parse(f.name, f.type, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        settings = cls(**values)
        settings.data_dir = Path(settings.data_dir).expanduser().resolve()
        return settings

    def describe(self) -> list[tuple[str, Any, str]]:
        """(name, value, doc) for each setting."""
        return [
            (f.name, getattr(self, f.name), str(f.metadata.get("doc", "")))
            for f in dataclasses.fields(self)
        ]


def _parse(name: str, annotation: Any, raw: str) -> Any:
    kind = str(annotation)
    if kind == "int":
        return int(raw)
    if kind == "float":
        return float(raw)
    if kind == "Path":
        return Path(raw)
    if kind.startswith("list"):
        return [item for item in raw.split(os.pathsep) if item]
    if kind.startswith("dict"):
        pairs = (item.split("=", 1) for item in raw.split(",") if "=" in item)
        return {k.strip(): v.strip() for k, v in pairs}
    return raw
