"""Warm-environment assignment: reuse an idle environment of the same function version and
configuration, or create one; reap idle ones after the keep-alive; retire outdated ones.
Provisioned concurrency keeps pools of environments of published versions initialised ahead:
invokes take from them first, and the reaper leaves them alone.  A published version with
SnapStart runs INIT once, in a template, on a backend that can fork one (``SnapshotBackend``):
its new environments are forks of the template, ready without INIT, and one fork is always made
ahead (a spare), so that scale-out only hands it over.  The template serves no invoke and lives
until its function changes and its last fork is gone.

Placement: a function's environments run on the sandbox backend it chose (``sandbox(function)``,
its ``kiln:sandbox`` tag, else the setting's); SnapStart templates are made only on a backend
that can fork them, and a version on another starts each environment with INIT.

    env, failure = await assignment.acquire(record, request_id)
    ...
    await assignment.release(env)
    assignment.provision(record, 3)        # 3 environments of that version, kept warm
    ready, failure = assignment.provisioned_state("fn", "1")
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from kiln.aws.errors import AwsError
from kiln.config import Settings
from kiln.functions.code import CodeStore
from kiln.functions.types import FunctionRecord
from kiln.invoke.environment import Environment, Output, State
from kiln.runtime.runtimes import RuntimeCatalog
from kiln.runtime.types import InvocationResult
from kiln.sandbox import Backends, BackendUnavailable
from kiln.sandbox.types import SandboxBackend, SandboxSpec, SnapshotBackend, SnapshotUnsupported


def _key(record: FunctionRecord) -> tuple[str, str, str]:
    return (record.name, record.version, record.revision_id)


class _Pool:
    """The provisioned environments of one function version."""

    def __init__(self, record: FunctionRecord) -> None:
        self.record = record
        self.target = 0
        #: Initialised and alive (idle or busy); ``idle`` is the part free to take.
        self.envs: set[Environment] = set()
        self.idle: list[Environment] = []
        self.failure: str | None = None
        self.filling: asyncio.Task[None] | None = None


class _Template:
    """The SnapStart template of one function version, and the environments forked from it."""

    def __init__(self, env: Environment, backend: SandboxBackend) -> None:
        self.env = env
        self.backend = backend  # the one that made it, and forks it (a SnapshotBackend)
        self.forks: set[Environment] = set()
        self.retired = False
        #: The next fork, being made or ready (not yet initialised: no Runtime API served).
        self.spare: asyncio.Task[Environment] | None = None
        #: What INIT printed, for the log of the first invoke a fork serves.
        self.init_output: list[str] = []


def _snap_start(record: FunctionRecord) -> bool:
    return bool(record.config.get("SnapStart", {}).get("OptimizationStatus") == "On")


class Assignment:
    def __init__(self, backends: Backends, runtimes: RuntimeCatalog, code: CodeStore,
                 settings: Settings,
                 opt_dir: Callable[[FunctionRecord], Path | None] = lambda _record: None,
                 egress: Callable[[str], bool] = lambda _function: False,
                 sandbox: Callable[[str], str] | None = None) -> None:
        """``opt_dir(record)``: the host directory holding the version's merged layers;
        ``egress(function)``: whether its new environments get the host's network;
        ``sandbox(function)``: the name of the backend they run on (``backends.default``
        unless given).  When ``placement`` changes, ``retire(function, provisioned=True)``."""
        self.backends = backends
        self.runtimes = runtimes
        self.code = code
        self.settings = settings
        self.opt_dir = opt_dir
        self.egress = egress
        self.sandbox = sandbox or (lambda _function: backends.default)
        self._idle: dict[tuple[str, str, str], list[Environment]] = defaultdict(list)
        self._live: set[Environment] = set()
        self._reaper: asyncio.Task[None] | None = None
        self._pools: dict[tuple[str, str], _Pool] = {}
        self._pool_of: dict[Environment, _Pool] = {}
        self._retiring: set[asyncio.Task[None]] = set()  # referenced until they finish
        self._templates: dict[tuple[str, str, str], _Template] = {}
        self._template_of: dict[Environment, _Template] = {}
        self._making: dict[tuple[str, str, str], asyncio.Lock] = {}
        self._preparing: set[asyncio.Task[None]] = set()  # referenced until they finish
        #: Versions whose environments cannot be forked (the backend said why once).
        self._unforkable: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        self._reaper = asyncio.get_running_loop().create_task(self._reap_forever())

    @property
    def environments(self) -> list[Environment]:
        return list(self._live)

    def placement(self, function: str) -> tuple[str, bool]:
        """Where ``function``'s new environments go: (backend name, host network)."""
        return self.sandbox(function), self.egress(function)

    async def acquire(self, record: FunctionRecord,
                      request_id: str) -> tuple[Environment, InvocationResult | None]:
        """A ready environment (provisioned or warm if possible), or a failed one with its INIT
        failure.  When this host cannot make the backend the function chose (``microvm``
        without a guest image, ...), the AWS error: nothing ran, and a later invoke tries again
        (once the image is built, without a restart)."""
        pool = self._pools.get((record.name, record.version))
        while pool is not None and pool.idle and pool.record.revision_id == record.revision_id:
            env = pool.idle.pop()
            if env.alive:
                return env, None
            await self._destroy(env)
        idle = self._idle.get(_key(record))
        while idle:
            env = idle.pop()
            if env.alive:
                return env, None
            await self._destroy(env)  # died while idle: release what it still holds
        try:
            backend = self.backends.get(self.sandbox(record.name))
            if (_snap_start(record) and isinstance(backend, SnapshotBackend)
                    and _key(record) not in self._unforkable):
                try:
                    return await self._restore(record, request_id, backend)
                except SnapshotUnsupported:
                    self._unforkable.add(_key(record))
                    template = self._templates.get(_key(record))
                    if template is not None:
                        await self._retire_template(template)
            env = await self._create(record)
        except BackendUnavailable as exc:
            raise AwsError("ResourceNotReadyException", f"Kiln could not make an execution "
                           f"environment for {record.name}: {exc}", 502) from None
        failure = await env.initialize(self.settings.init_timeout_seconds, request_id)
        if failure is not None:
            self._live.discard(env)
        return env, failure

    def prepare_snapshot(self, record: FunctionRecord) -> None:
        """PublishVersion: make a SnapStart version's template and its first fork now, in the
        background (an INIT failure is then met again, and answered, by the first invoke)."""
        if not _snap_start(record) or _key(record) in self._unforkable:
            return
        try:
            backend = self.backends.get(self.sandbox(record.name))
        except BackendUnavailable:
            return  # the first invoke answers why
        if not isinstance(backend, SnapshotBackend):
            return
        task = asyncio.get_running_loop().create_task(self._prepare_snapshot(record, backend))
        self._preparing.add(task)
        task.add_done_callback(self._preparing.discard)

    async def _prepare_snapshot(self, record: FunctionRecord, backend: SandboxBackend) -> None:
        try:
            template = await self._template(record, str(uuid.uuid4()), backend)
        except SnapshotUnsupported:
            self._unforkable.add(_key(record))
            return
        except (OSError, RuntimeError):
            return  # the first invoke tries again, and answers the error
        if isinstance(template, _Template) and template.spare is None:
            self._start_spare(template, record)

    async def _template(self, record: FunctionRecord, request_id: str,
                        backend: SandboxBackend) -> _Template | tuple[Environment,
                                                                      InvocationResult]:
        """The version's template, made (INIT run on ``backend``) if need be; else the failed
        environment and its INIT failure, as answered to ``request_id``."""
        key = _key(record)
        async with self._making.setdefault(key, asyncio.Lock()):  # one INIT at a time
            template = self._templates.get(key)
            if template is not None and template.env.alive:
                return template
            if template is not None:
                await self._drop_template(template)
            env = await self._create(record, "snap-start", snapshot=True, backend=backend)
            self._live.discard(env)  # a template serves no invoke
            failure = await env.initialize(self.settings.init_timeout_seconds, request_id)
            if failure is not None:
                return env, failure
            template = self._templates[key] = _Template(env, backend)
            template.init_output = env.output.take()
            return template

    async def _restore(self, record: FunctionRecord, request_id: str,
                       backend: SandboxBackend) -> tuple[Environment, InvocationResult | None]:
        """A new environment forked from the version's template, made first if need be (its
        INIT failure is then the answer, as an on-demand environment's would be)."""
        template = await self._template(record, request_id, backend)
        if not isinstance(template, _Template):
            return template
        started = time.perf_counter()
        env = await self._take_fork(template, record)
        if template.init_output:  # the INIT's log: the first invoke's
            env.output.feed("\n".join([*template.init_output, ""]).encode())
            template.init_output = []
        template.forks.add(env)
        self._template_of[env] = template
        failure = await env.initialize(self.settings.init_timeout_seconds, request_id)
        if failure is not None:
            self._live.discard(env)
            await self._destroy(env)
            return env, failure
        env.init_duration_ms = None  # no INIT ran in it: its REPORT tells the restore instead
        env.restore_duration_ms = (time.perf_counter() - started) * 1000
        return env, None

    async def _take_fork(self, template: _Template, record: FunctionRecord) -> Environment:
        """The template's spare fork (else a new one), and the next spare started."""
        env = None
        spare, template.spare = template.spare, None
        if spare is not None:
            with contextlib.suppress(OSError, RuntimeError):  # made inline below, or raised
                env = await spare
        if env is None:
            env = await self._create(record, "snap-start", fork_of=template)
        self._start_spare(template, record)
        return env

    def _start_spare(self, template: _Template, record: FunctionRecord) -> None:
        if not template.retired:
            template.spare = asyncio.get_running_loop().create_task(
                self._create(record, "snap-start", fork_of=template))

    async def _retire_template(self, template: _Template) -> None:
        template.retired = True
        await self._discard_spare(template)
        if not template.forks:  # else the last fork's destroy takes it down
            await self._drop_template(template)

    async def _discard_spare(self, template: _Template) -> None:
        spare, template.spare = template.spare, None
        if spare is None:
            return
        spare.cancel()
        try:
            env = await spare
        except (asyncio.CancelledError, OSError, RuntimeError):
            return
        await self._destroy(env)

    async def _drop_template(self, template: _Template) -> None:
        key = _key(template.env.record)
        if self._templates.get(key) is template:
            del self._templates[key]
        await self._discard_spare(template)
        await template.env.destroy()

    async def release(self, env: Environment) -> None:
        """Return an environment after an invocation: keep it warm, or destroy it."""
        if not env.alive:
            await self._destroy(env)  # idempotent; also covers a runtime that exited after replying
            return
        if env.retired:
            await self._destroy(env)
            return
        pool = self._pool_of.get(env)
        if pool is not None and len(pool.envs) > pool.target:  # fewer are provisioned now
            self._forget(env)
            await self._destroy(env)
            return
        (pool.idle if pool is not None else self._idle[_key(env.record)]).append(env)
        env.schedule_freeze(self.settings.freeze_after_seconds)

    async def retire(self, function_name: str, provisioned: bool = False) -> None:
        """Code or configuration changed: no environment of the old one serves again.
        ``provisioned``: the sandbox itself changed, so provisioned environments are replaced
        too (published versions' do not change otherwise)."""
        for env in list(self._live):
            if env.record.name != function_name or env in self._pool_of:
                continue  # published versions do not change: ``provision`` manages pools
            env.retired = True
            if env.state is State.IDLE:
                await self._destroy(env)
        for key in [k for k in self._idle if k[0] == function_name]:
            del self._idle[key]
        for template in [t for t in self._templates.values()
                         if t.env.record.name == function_name]:
            await self._retire_template(template)
        for name, version in [k for k in self._pools if provisioned and k[0] == function_name]:
            pool = self._pools.pop((name, version))
            self._drain(pool)
            self.provision(pool.record, pool.target)

    def provision(self, record: FunctionRecord, count: int) -> None:
        """Keep ``count`` environments of ``record`` (a published version) initialised and
        warm, starting the missing ones in the background; 0 releases them all."""
        key = (record.name, record.version)
        pool = self._pools.get(key)
        if pool is not None and (pool.record.revision_id != record.revision_id or count == 0):
            self._drain(self._pools.pop(key))
            pool = None
        if count == 0:
            return
        if pool is None:
            pool = self._pools[key] = _Pool(record)
        pool.target = count
        pool.failure = None
        for env in pool.idle[:max(0, len(pool.envs) - count)]:  # fewer wanted: idle ones go
            self._forget(env)
            env.retired = True
            self._destroy_later(env)
        if pool.filling is None or pool.filling.done():
            pool.filling = asyncio.get_running_loop().create_task(self._fill(pool))

    def provisioned_state(self, name: str, version: str) -> tuple[int, str | None]:
        """(environments initialised, the INIT failure that stopped provisioning, if any)."""
        pool = self._pools.get((name, version))
        return (0, None) if pool is None else (len(pool.envs), pool.failure)

    async def _fill(self, pool: _Pool) -> None:
        while (pool.failure is None and self._pools.get((pool.record.name, pool.record.version))
               is pool and len(pool.envs) < pool.target):
            missing = pool.target - len(pool.envs)
            await asyncio.gather(*(self._provision_one(pool) for _ in range(missing)))

    async def _provision_one(self, pool: _Pool) -> None:
        try:
            env = await self._create(pool.record, "provisioned-concurrency")
        except (OSError, RuntimeError, ValueError) as exc:  # no sandbox: as bad as INIT failing
            pool.failure = f"FUNCTION_ERROR_INIT_FAILURE: {type(exc).__name__}: {exc}"
            return
        failure = await env.initialize(self.settings.init_timeout_seconds, str(uuid.uuid4()))
        if failure is not None:
            self._live.discard(env)
            error = failure.error_json()
            pool.failure = ("FUNCTION_ERROR_INIT_FAILURE: Lambda was unable to initialize your "
                            f"function. {error.get('errorType')}: {error.get('errorMessage')}")
            return
        if self._pools.get((pool.record.name, pool.record.version)) is not pool:
            await self._destroy(env)  # unprovisioned meanwhile
            return
        # INIT happened ahead of any invoke: no REPORT line will carry an Init Duration.
        env.init_duration_ms = None
        pool.envs.add(env)
        pool.idle.append(env)
        self._pool_of[env] = pool
        env.schedule_freeze(self.settings.freeze_after_seconds)

    def _drain(self, pool: _Pool) -> None:
        """Release a pool: idle environments go now, busy ones after their invocation."""
        if pool.filling is not None:
            pool.filling.cancel()
        for env in list(pool.envs):
            self._forget(env)
            env.retired = True
            if env.state is not State.BUSY:
                self._destroy_later(env)

    def _destroy_later(self, env: Environment) -> None:
        task = asyncio.get_running_loop().create_task(self._destroy(env))
        self._retiring.add(task)
        task.add_done_callback(self._retiring.discard)

    def _forget(self, env: Environment) -> None:
        pool = self._pool_of.pop(env, None)
        if pool is not None:
            pool.envs.discard(env)
            if env in pool.idle:
                pool.idle.remove(env)

    async def close(self) -> None:
        for pool in self._pools.values():
            if pool.filling is not None:
                pool.filling.cancel()
        self._pools.clear()
        for task in list(self._preparing):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.gather(*self._retiring)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for env in list(self._live):
            await self._destroy(env)
        for template in list(self._templates.values()):
            await self._drop_template(template)
        self._idle.clear()
        await self.backends.close()

    async def _destroy(self, env: Environment) -> None:
        self._live.discard(env)
        idle = self._idle.get(_key(env.record))
        if idle and env in idle:
            idle.remove(env)
        pool = self._pool_of.get(env)
        self._forget(env)
        await env.destroy()
        template = self._template_of.pop(env, None)
        if template is not None:
            template.forks.discard(env)
            if template.retired and not template.forks:
                await self._drop_template(template)
        if pool is not None and (pool.filling is None or pool.filling.done()):
            # A provisioned environment crashed or timed out: replace it.
            pool.filling = asyncio.get_running_loop().create_task(self._fill(pool))

    async def _reap_forever(self) -> None:
        keep_alive = self.settings.keep_alive_seconds
        while True:
            await asyncio.sleep(min(keep_alive, 30.0) / 2 or 1.0)
            horizon = time.monotonic() - keep_alive
            for env in list(self._live):
                if (env.state is State.IDLE and env.last_used < horizon
                        and env not in self._pool_of):  # provisioned ones stay warm
                    await self._destroy(env)

    async def _create(self, record: FunctionRecord, initialization: str = "on-demand",
                      snapshot: bool = False, fork_of: _Template | None = None,
                      backend: SandboxBackend | None = None) -> Environment:
        """A new environment on ``backend`` (by default the function's); ``snapshot``: a
        SnapStart template; ``fork_of``: forked from that template, on its backend."""
        placement = self.placement(record.name)
        env_id = uuid.uuid4().hex
        task_root = self.code.task_root(record.code_sha_hex)
        opt = self.opt_dir(record)
        layers = [opt] if opt is not None else []
        output = Output()
        egress = placement[1]
        spec = SandboxSpec(
            env_id=env_id,
            argv=self.runtimes.command(record.runtime, task_root, layers),
            env=self._environment(record, task_root, env_id, opt, initialization),
            task_root=task_root,
            layers=layers,
            memory_mb=record.memory_size,
            ephemeral_mb=record.ephemeral_storage,
            on_output=output.feed,
            egress=egress,
            snapshot=snapshot,
        )
        if fork_of is not None:
            assert isinstance(fork_of.backend, SnapshotBackend)
            sandbox = await fork_of.backend.fork(fork_of.env.sandbox, spec)
        else:
            backend = backend or self.backends.get(placement[0])
            sandbox = await backend.create(spec)
        env = Environment(env_id, record, sandbox, output)
        # The placement changed while this one was being made: it serves once, then goes.
        env.retired = self.placement(record.name) != placement
        self._live.add(env)
        return env

    def _environment(self, record: FunctionRecord, task_root: os.PathLike[str] | str,
                     env_id: str, opt: Path | None, initialization: str) -> dict[str, str]:
        """The runtime's environment: the user's variables, then Lambda's reserved ones.
        Paths name the host's directories (an isolating backend rewrites them)."""
        settings = self.settings
        paths = self.runtimes.search_paths(record.runtime, str(task_root),
                                           None if opt is None else str(opt))
        stream = time.strftime("%Y/%m/%d", time.gmtime()) + f"/[{record.version}]{env_id}"
        env = dict(record.environment)
        env.update({
            "_HANDLER": record.handler,
            "AWS_REGION": settings.region,
            "AWS_DEFAULT_REGION": settings.region,
            "AWS_LAMBDA_FUNCTION_NAME": record.name,
            "AWS_LAMBDA_FUNCTION_VERSION": record.version,
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": str(record.memory_size),
            "AWS_LAMBDA_INITIALIZATION_TYPE": initialization,
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{record.name}",
            "AWS_LAMBDA_LOG_STREAM_NAME": stream,
            "AWS_LAMBDA_LOG_FORMAT": record.config.get("LoggingConfig", {}).get("LogFormat",
                                                                                 "Text"),
            "AWS_ACCESS_KEY_ID": "kiln",
            "AWS_SECRET_ACCESS_KEY": "kiln",
            "AWS_SESSION_TOKEN": "kiln",
            "LAMBDA_TASK_ROOT": str(task_root),
            "LAMBDA_RUNTIME_DIR": str(self.runtimes.runtime_dir),
            "TZ": ":UTC",
            "LANG": env.get("LANG", "en_US.UTF-8"),
            "PATH": env.get("PATH", paths.pop("PATH")),
            "LD_LIBRARY_PATH": env.get("LD_LIBRARY_PATH", paths.pop("LD_LIBRARY_PATH")),
            "PYTHONUNBUFFERED": "1",
        })
        for key, layer_paths in paths.items():  # the function's own entries come first
            env[key] = f"{env[key]}:{layer_paths}" if env.get(key) else layer_paths
        logging_config = record.config.get("LoggingConfig", {})
        if logging_config.get("LogFormat") == "JSON":
            # AWS filters application logs only in JSON format, at INFO unless configured.
            env["AWS_LAMBDA_LOG_LEVEL"] = logging_config.get("ApplicationLogLevel", "INFO")
        execution_env = self.runtimes.execution_env(record.runtime)
        if execution_env:
            env["AWS_EXECUTION_ENV"] = execution_env
        return env
