"""The ASGI app: one application object (``Kiln``) owns every service; one endpoint serves
every API.

    kiln = Kiln(Settings.from_env())
    app = create_app(kiln)          # ASGI: Invoke fast path, then Starlette (whose lifespan
                                    # starts and stops the services)
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.config import Settings
from kiln.functions import api as functions_api
from kiln.functions import event_config_api, layers_api, provisioned_api, tags_api
from kiln.functions.code import CodeStore
from kiln.functions.event_config import EventInvokeConfigs
from kiln.functions.provisioned import Provisioning
from kiln.functions.service import FunctionService
from kiln.functions.tags import egress_policy, sandbox_policy
from kiln.gateway import api as gateway_api
from kiln.gateway import urls as gateway_urls
from kiln.gateway.alb import AlbTargets, parse_targets
from kiln.gateway.dispatch import GatewayDispatch
from kiln.gateway.proxy import HttpProxy
from kiln.gateway.store import GatewayStore
from kiln.gateway.urls import FunctionUrls
from kiln.gateway.websocket import WebSocketApis
from kiln.invoke import api as invoke_api
from kiln.invoke.assignment import Assignment
from kiln.invoke.counting import Counting
from kiln.invoke.local import InvokeFailed, LocalInvoker
from kiln.invoke.logs import LogStore
from kiln.invoke.queue import AsyncQueue
from kiln.invoke.service import Invoker
from kiln.runtime.runtimes import RuntimeCatalog
from kiln.sandbox import Backends, SandboxBackend
from kiln.states.api import StatesApi
from kiln.states.types import StatesFailure
from kiln.store import Database

log = logging.getLogger("kiln")


class Kiln:
    """Every service of one Kiln node, wired together; the only holder of mutable state."""

    def __init__(self, settings: Settings, backend: SandboxBackend | None = None,
                 others: Mapping[str, SandboxBackend] | None = None) -> None:
        """``backend``: the default sandbox backend, made from settings unless given;
        ``others``: other backends functions may choose (``kiln:sandbox``), by name, made
        when first chosen unless given (tests pass fakes)."""
        self.settings = settings
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.db = Database(data / "kiln.sqlite3")
        self.arns = ArnBuilder(settings.region, settings.account_id)
        self.code = CodeStore(data / "code")
        self.runtimes = RuntimeCatalog(settings)
        self.functions = FunctionService(self.db, self.code, self.runtimes, self.arns)
        self.logs = LogStore(data / "logs")
        egress = egress_policy(settings.sandbox_egress, self.functions.tags.get)  # may refuse
        made = dict(others or {})
        if backend is not None:
            made[settings.sandbox_backend] = backend
        self.backends = Backends(settings.sandbox_backend, str(data / "sandboxes"),
                                 settings.sandbox_shared_dirs, made)
        self.backend = self.backends.get(settings.sandbox_backend)
        self.assignment = Assignment(self.backends, self.runtimes, self.code, settings,
                                     self.functions.layers.opt_dir, egress,
                                     sandbox_policy(settings.sandbox_backend,
                                                    self.functions.tags.get))
        # Reserved concurrency is the control plane's; every invoke path (the Invoke route,
        # the async queue, Step Functions tasks) takes its lease here, so it applies to all.
        self.counting = Counting(settings.account_concurrency,
                                 reservations=self.functions.concurrency.reserved,
                                 provisioned=self.functions.provisioned.totals)
        self.invoker = Invoker(self.assignment, self.counting, self.logs, settings.dedupe_seconds)
        self.event_configs = EventInvokeConfigs(self.db, self.functions)
        self.queue = AsyncQueue(self.db, self.functions, self.event_configs, self.invoker,
                                settings)
        self.functions.listeners.append(self.assignment.retire)
        self.functions.published.append(self.assignment.prepare_snapshot)  # SnapStart
        self.provisioning = Provisioning(self.functions, self.assignment,
                                         settings.account_concurrency)
        self.functions.listeners.append(self.provisioning.reconcile)
        self.functions.listeners.append(self.event_configs.prune)
        self.local = LocalInvoker(self.functions, self.invoker)
        endpoint = f"localhost:{settings.port}"
        self.gateway = GatewayStore(self.db, self.arns, endpoint)
        self.function_urls = FunctionUrls(self.db, self.functions, self.arns, endpoint)
        self.http_proxy = HttpProxy(self.gateway, self.function_urls, self.local, settings)
        self.websockets = WebSocketApis(self.gateway, self.local, settings.websocket_idle_seconds,
                                        settings.websocket_max_seconds)
        self.states = StatesApi(self.db, _StatesLambda(self.local), settings.region,
                                settings.account_id)
        self.albs = AlbTargets(parse_targets(settings.alb_targets), self.local, self.arns)

    async def start(self) -> None:
        self.assignment.start()
        await self.provisioning.start()
        await self.queue.start()
        await self.states.start()
        await self.albs.start(self.settings.host)

    async def stop(self) -> None:
        await self.albs.stop()
        await self.states.stop()
        await self.queue.stop()
        await self.assignment.close()
        self.logs.close()
        self.db.close()


class _StatesLambda:
    """Lambda tasks of state machines: platform failures become ``Lambda.<Error>``."""

    def __init__(self, local: LocalInvoker) -> None:
        self.local = local

    async def invoke(self, function_arn: str, payload: bytes) -> tuple[bytes, str | None]:
        try:
            return await self.local.invoke(function_arn, payload)
        except InvokeFailed as exc:
            raise StatesFailure(f"Lambda.{exc.code}", exc.message) from None


async def _unknown_route(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 404
    return AwsError("UnknownOperationException", f"No operation at {request.method} "
                    f"{request.url.path}", status if status in (404, 405) else 404).to_response()


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error in %s %s", request.method, request.url.path, exc_info=exc)
    return AwsError.service(f"Internal error: {type(exc).__name__}").to_response()


def create_app(kiln: Kiln) -> GatewayDispatch:
    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await kiln.start()
        try:
            yield
        finally:
            await kiln.stop()

    async def health(_request: Request) -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    async def json_rpc(request: Request) -> Response:
        """AWS JSON 1.0 services, chosen by ``X-Amz-Target``."""
        target = request.headers.get("x-amz-target", "")
        if target.startswith("AWSStepFunctions."):
            return await kiln.states.handle(request)
        return AwsError("UnknownOperationException", f"Unknown operation {target!r}",
                        400).to_response()

    routes = [
        *invoke_api.routes(kiln),
        *functions_api.routes(kiln),
        *tags_api.routes(kiln),
        *layers_api.routes(kiln),
        *provisioned_api.routes(kiln),
        *event_config_api.routes(kiln),
        *gateway_urls.routes(kiln),
        *gateway_api.routes(kiln),
        Route("/kiln/v1/health", health, methods=["GET"]),
        Route("/", json_rpc, methods=["POST"]),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={HTTPException: _unknown_route, Exception: _internal_error},
    )
    app.state.kiln = kiln
    return GatewayDispatch(kiln, invoke_api.InvokeApp(kiln, app))
