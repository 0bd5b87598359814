"""What the data planes read: an API as deployed to its stages (built by ``GatewayStore``).

    api = kiln.gateway.deployed(api_id)        # Api | None, cached until the API changes
    stage = api.stages.get("prod")             # Stage | None
    route = stage.route("$connect")            # Route | None (exact route key)
    route.integration.function_arn, route.integration.timeout_ms
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

from kiln.gateway.routing import RouteTable

HTTP = "HTTP"
WEBSOCKET = "WEBSOCKET"


@dataclass(frozen=True)
class Cors:
    """A CORS configuration (API Gateway's ``corsConfiguration`` or a Function URL's ``Cors``)."""

    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age: int | None = None


@dataclass(frozen=True)
class Integration:
    integration_id: str
    function_arn: str  # the Lambda function (ARN, possibly qualified) an AWS_PROXY runs
    payload_format_version: str  # "1.0" | "2.0"
    timeout_ms: int


@dataclass(frozen=True)
class Route:
    route_id: str
    route_key: str  # "GET /items/{id}", "$default", "$connect", "sendmessage" ...
    integration: Integration | None  # None: the route has no (existing) target
    #: WebSocket APIs: set (e.g. "$default") when the integration's answer goes back to the
    #: client (a two-way route).
    route_response_selection_expression: str | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    variables: dict[str, str]
    routes: tuple[Route, ...]  # as deployed to this stage (empty before a first deployment)
    deployed: bool

    def route(self, route_key: str) -> Route | None:
        return self.by_key.get(route_key)

    @cached_property
    def by_key(self) -> dict[str, Route]:
        return {route.route_key: route for route in self.routes}

    @cached_property
    def table(self) -> RouteTable:
        """HTTP APIs: this stage's compiled route matcher."""
        return RouteTable(self.routes)



@dataclass(frozen=True)
class Api:
    api_id: str
    name: str
    protocol: str  # HTTP | WEBSOCKET
    route_selection_expression: str
    cors: Cors | None
    stages: dict[str, Stage] = field(default_factory=dict)
    #: DisableExecuteApiEndpoint: the API answers 403 on its execute-api addresses.
    endpoint_disabled: bool = False
