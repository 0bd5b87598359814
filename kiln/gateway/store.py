"""API Gateway v2 resources (APIs, integrations, routes, stages, deployments) in SQLite.

Each resource is stored as its wire form (apigatewayv2's camelCase JSON), so reads answer what
was written.  A deployment holds a snapshot of the API's routes and integrations; a stage serves
its deployment's snapshot, and an ``autoDeploy`` stage gets a new deployment on every change,
as on AWS.  Every request is validated completely before anything is written.

    store = GatewayStore(db, arns, endpoint="localhost:8900")
    api = store.create_api({"name": "a", "protocolType": "HTTP", "target": function_arn})
    store.deployed(api["apiId"])     # the data planes' read: types.Api, cached
"""

from __future__ import annotations

import json
import re
import secrets
import string
import time
from collections.abc import Callable
from typing import Any

from kiln.aws.arn import ArnBuilder, parse_function_id
from kiln.aws.errors import AwsError
from kiln.gateway.routing import DEFAULT_ROUTE, http_route_error
from kiln.gateway.types import HTTP, WEBSOCKET, Api, Cors, Integration, Route, Stage
from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS gateway_apis (
        api_id TEXT PRIMARY KEY,
        body TEXT NOT NULL
    )""",
    """CREATE TABLE IF NOT EXISTS gateway_items (
        api_id TEXT NOT NULL REFERENCES gateway_apis(api_id) ON DELETE CASCADE,
        kind TEXT NOT NULL,
        item_id TEXT NOT NULL,
        body TEXT NOT NULL,
        PRIMARY KEY (api_id, kind, item_id)
    )""",
]
INTEGRATION, ROUTE, STAGE, DEPLOYMENT = "integration", "route", "stage", "deployment"
DEFAULT_STAGE = "$default"
HTTP_SELECTION = "${request.method} ${request.path}"
_ID_ALPHABET = string.ascii_lowercase + string.digits
_STAGE_NAME = re.compile(r"^[A-Za-z0-9_-]{1,128}\Z")
_STAGE_VAR_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}\Z")
_STAGE_VAR_VALUE = re.compile(r"^[A-Za-z0-9-._~:/?#&=,]{0,2048}\Z")
_INVOCATION_URI = re.compile(
    r"^arn:aws[a-zA-Z-]*:apigateway:[a-z0-9-]+:lambda:path/2015-03-31/functions/(.+)"
    r"/invocations\Z")
_CORS_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "*"})
_LABELS = {INTEGRATION: "Integration", ROUTE: "Route", STAGE: "Stage",
           DEPLOYMENT: "Deployment"}


def bad_request(message: str) -> AwsError:
    return AwsError("BadRequestException", message, 400)


def not_found(message: str, resource: str) -> AwsError:
    return AwsError("NotFoundException", message, 404, ResourceType=resource)


def conflict(message: str) -> AwsError:
    return AwsError("ConflictException", message, 409)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _new_id(length: int) -> str:
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


class _Body:
    """Typed reads of a request body; a wrong type is BadRequestException."""

    def __init__(self, body: dict[str, Any]) -> None:
        self.body = body

    def _get(self, key: str, kind: type, label: str) -> Any:
        value = self.body.get(key)
        if value is None:
            return None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise bad_request(f"Invalid input for {key}: expected {label}")
        return value

    def string(self, key: str, low: int = 0, high: int = 2048) -> str | None:
        value: str | None = self._get(key, str, "a string")
        if value is not None and not low <= len(value) <= high:
            raise bad_request(f"Invalid input for {key}: length must be between {low} and "
                              f"{high}")
        return value

    def integer(self, key: str) -> int | None:
        value: int | None = self._get(key, int, "an integer")
        return value

    def boolean(self, key: str) -> bool | None:
        value: bool | None = self._get(key, bool, "a boolean")
        return value

    def mapping(self, key: str) -> dict[str, Any] | None:
        value: dict[str, Any] | None = self._get(key, dict, "an object")
        return value

    def strings(self, key: str) -> list[str] | None:
        value: list[Any] | None = self._get(key, list, "a list of strings")
        if value is not None and not all(isinstance(v, str) for v in value):
            raise bad_request(f"Invalid input for {key}: expected a list of strings")
        return value


def cors_from_wire(body: dict[str, Any] | None, keys: dict[str, str]) -> Cors | None:
    """A Cors from camelCase (API Gateway) or PascalCase (Lambda) keys, named in ``keys``."""
    if body is None:
        return None
    max_age = body.get(keys["MaxAge"])
    return Cors(
        allow_origins=tuple(body.get(keys["AllowOrigins"]) or ()),
        allow_methods=tuple(m.upper() for m in body.get(keys["AllowMethods"]) or ()),
        allow_headers=tuple(h.lower() for h in body.get(keys["AllowHeaders"]) or ()),
        expose_headers=tuple(h.lower() for h in body.get(keys["ExposeHeaders"]) or ()),
        allow_credentials=bool(body.get(keys["AllowCredentials"])),
        max_age=max_age if isinstance(max_age, int) and max_age >= 0 else None,
    )


CAMEL_CORS = {k: k[0].lower() + k[1:] for k in
              ("AllowOrigins", "AllowMethods", "AllowHeaders", "ExposeHeaders",
               "AllowCredentials", "MaxAge")}


def validate_cors(body: dict[str, Any], keys: dict[str, str], min_age: int,
                  error: Callable[[str], AwsError]) -> dict[str, Any]:
    """The CORS configuration's wire form, checked; ``error(message)`` makes the exception."""
    fields = _Body(body)
    try:
        origins = fields.strings(keys["AllowOrigins"])
        methods = fields.strings(keys["AllowMethods"])
        headers = fields.strings(keys["AllowHeaders"])
        expose = fields.strings(keys["ExposeHeaders"])
        credentials = fields.boolean(keys["AllowCredentials"])
        max_age = fields.integer(keys["MaxAge"])
    except AwsError as exc:
        raise error(exc.message) from None
    for method in methods or ():
        if method.upper() not in _CORS_METHODS:
            raise error(f"Invalid CORS method: {method}")
    if max_age is not None and not min_age <= max_age <= 86400:
        raise error(f"MaxAge must be between {min_age} and 86400")
    if credentials and "*" in (origins or ()):
        raise error(f"{keys['AllowCredentials']} cannot be true when {keys['AllowOrigins']} "
                    "includes '*'")
    return {k: v for k, v in ((keys["AllowOrigins"], origins), (keys["AllowMethods"], methods),
                              (keys["AllowHeaders"], headers), (keys["ExposeHeaders"], expose),
                              (keys["AllowCredentials"], credentials),
                              (keys["MaxAge"], max_age)) if v is not None}


class GatewayStore:
    def __init__(self, db: Database, arns: ArnBuilder, endpoint: str) -> None:
        """``endpoint`` is Kiln's ``host:port``, for the ``apiEndpoint`` each API reports."""
        self.db = db
        self.arns = arns
        self.endpoint = endpoint
        db.migrate(SCHEMA)
        self._deployed: dict[str, Api] = {}

    # -- data-plane reads ---------------------------------------------------------------------

    def deployed(self, api_id: str) -> Api | None:
        """The API with each stage's deployed routes; cached until the API changes."""
        api = self._deployed.get(api_id)
        if api is None:
            api = self._build(api_id)
            if api is not None:  # unknown ids are not remembered: requests choose them
                self._deployed[api_id] = api
        return api

    def has_stage(self, api_id: str, stage: str) -> bool:
        api = self.deployed(api_id)
        return api is not None and stage in api.stages

    # -- APIs ---------------------------------------------------------------------------------

    def create_api(self, body: dict[str, Any]) -> dict[str, Any]:
        fields = _Body(body)
        name = fields.string("name", 1, 128)
        protocol = fields.string("protocolType")
        if name is None or protocol is None:
            raise bad_request("Name and ProtocolType are required")
        if protocol not in (HTTP, WEBSOCKET):
            raise bad_request(f"Invalid ProtocolType {protocol}: must be HTTP or WEBSOCKET")
        target = fields.string("target", 1, 2048)
        route_key = fields.string("routeKey")
        if protocol == WEBSOCKET:
            for key in ("target", "routeKey", "corsConfiguration"):
                if body.get(key) is not None:
                    raise bad_request(f"{key[0].upper() + key[1:]} is not supported for "
                                      "WEBSOCKET APIs")
        elif route_key is not None and target is None:
            raise bad_request("RouteKey can only be specified with Target (quick create)")
        api_id = _new_id(10)
        wire = self._api_fields(fields, {
            "apiId": api_id, "name": name, "protocolType": protocol, "createdDate": _now(),
            "apiEndpoint": f"{'ws' if protocol == WEBSOCKET else 'http'}://{api_id}"
                           f".execute-api.{self.endpoint}",
            "apiKeySelectionExpression": "$request.header.x-api-key",
            "disableExecuteApiEndpoint": False, "tags": {},
        })
        quick = None
        if target is not None:
            route_key = route_key or DEFAULT_ROUTE
            if (error := http_route_error(route_key)) is not None:
                raise bad_request(error)
            quick = self._integration_wire(api_id, HTTP, _Body({
                "integrationType": "AWS_PROXY", "integrationUri": target,
                "payloadFormatVersion": "2.0"}), {}, new=True)
            quick["apiGatewayManaged"] = True
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO gateway_apis (api_id, body) VALUES (?, ?)",
                       (api_id, json.dumps(wire)))
            if quick is not None:
                self._put(api_id, INTEGRATION, quick["integrationId"], quick)
                route_id = _new_id(7)
                self._put(api_id, ROUTE, route_id, {
                    "routeId": route_id, "routeKey": route_key, "apiKeyRequired": False,
                    "authorizationType": "NONE", "apiGatewayManaged": True,
                    "target": f"integrations/{quick['integrationId']}"})
                self._put(api_id, STAGE, DEFAULT_STAGE, self._stage_defaults(DEFAULT_STAGE, {
                    "autoDeploy": True, "apiGatewayManaged": True}))
                self._redeploy(api_id)
        return wire

    def get_api(self, api_id: str) -> dict[str, Any]:
        row = self.db.query_one("SELECT body FROM gateway_apis WHERE api_id = ?", (api_id,))
        if row is None:
            raise not_found(f"Invalid API identifier specified {self.arns.account_id}:{api_id}",
                            "Api")
        body: dict[str, Any] = json.loads(row["body"])
        return body

    def get_apis(self) -> list[dict[str, Any]]:
        rows = self.db.query("SELECT body FROM gateway_apis ORDER BY rowid")
        return [json.loads(r["body"]) for r in rows]

    def update_api(self, api_id: str, body: dict[str, Any]) -> dict[str, Any]:
        wire = self.get_api(api_id)
        fields = _Body(body)
        name = fields.string("name", 1, 128)
        if wire["protocolType"] == WEBSOCKET and body.get("corsConfiguration") is not None:
            raise bad_request("CorsConfiguration is not supported for WEBSOCKET APIs")
        wire = self._api_fields(fields, wire)
        if name is not None:
            wire["name"] = name
        quick = self._quick_updates(api_id, fields)
        with self.db.transaction() as tx:
            tx.execute("UPDATE gateway_apis SET body = ? WHERE api_id = ?",
                       (json.dumps(wire), api_id))
            for kind, item_id, item in quick:
                self._put(api_id, kind, item_id, item)
            if quick:
                self._redeploy(api_id)
        self._deployed.pop(api_id, None)
        return wire

    def _quick_updates(self, api_id: str,
                       fields: _Body) -> list[tuple[str, str, dict[str, Any]]]:
        """UpdateApi's Target / RouteKey change the quick-created integration / route."""
        target = fields.string("target", 1, 2048)
        route_key = fields.string("routeKey", 1, 1024)
        if target is None and route_key is None:
            return []
        managed = [r for r in self.get_items(api_id, ROUTE) if r.get("apiGatewayManaged")]
        if not managed:
            raise bad_request("Target and RouteKey can only be updated on an API made by "
                              "quick create")
        route = managed[0]
        updates = []
        if route_key is not None:
            if (error := http_route_error(route_key)) is not None:
                raise bad_request(error)
            if any(r["routeKey"] == route_key and r["routeId"] != route["routeId"]
                   for r in self.get_items(api_id, ROUTE)):
                raise conflict(f"A route with the key {route_key} already exists")
            updates.append((ROUTE, route["routeId"], {**route, "routeKey": route_key}))
        if target is not None:
            integration_id = route["target"].removeprefix("integrations/")
            integration = self.get_item(api_id, INTEGRATION, integration_id)
            self.function_arn(target)
            updates.append((INTEGRATION, integration_id,
                            {**integration, "integrationUri": target}))
        return updates

    def delete_cors(self, api_id: str) -> None:
        wire = self.get_api(api_id)
        wire.pop("corsConfiguration", None)
        self.db.execute("UPDATE gateway_apis SET body = ? WHERE api_id = ?",
                        (json.dumps(wire), api_id))
        self._deployed.pop(api_id, None)

    def delete_api(self, api_id: str) -> None:
        self.get_api(api_id)
        self.db.execute("DELETE FROM gateway_apis WHERE api_id = ?", (api_id,))
        self._deployed.pop(api_id, None)

    def _api_fields(self, fields: _Body, wire: dict[str, Any]) -> dict[str, Any]:
        """Apply the settable fields shared by CreateApi and UpdateApi."""
        protocol = wire["protocolType"]
        selection = fields.string("routeSelectionExpression", 1, 1024)
        if protocol == WEBSOCKET:
            selection = selection or wire.get("routeSelectionExpression")
            if not selection:
                raise bad_request("RouteSelectionExpression is required for WEBSOCKET APIs")
        elif selection not in (None, HTTP_SELECTION):
            raise bad_request(f"Invalid RouteSelectionExpression for HTTP APIs: {selection}; "
                              f"must be {HTTP_SELECTION}")
        wire["routeSelectionExpression"] = selection or HTTP_SELECTION
        for key, low, high in (("description", 0, 1024), ("version", 1, 64)):
            value = fields.string(key, low, high)
            if value is not None:
                wire[key] = value
        disable = fields.boolean("disableExecuteApiEndpoint")
        if disable is not None:
            wire["disableExecuteApiEndpoint"] = disable
        tags = fields.mapping("tags")
        if tags is not None:
            wire["tags"] = {str(k): str(v) for k, v in tags.items()}
        cors = fields.mapping("corsConfiguration")
        if cors is not None:
            wire["corsConfiguration"] = validate_cors(cors, CAMEL_CORS, -1, bad_request)
        return wire

    # -- integrations -------------------------------------------------------------------------

    def create_integration(self, api_id: str, body: dict[str, Any]) -> dict[str, Any]:
        api = self.get_api(api_id)
        wire = self._integration_wire(api_id, api["protocolType"], _Body(body), {}, new=True)
        with self.db.transaction():
            self._put(api_id, INTEGRATION, wire["integrationId"], wire)
            self._redeploy(api_id)
        return wire

    def update_integration(self, api_id: str, integration_id: str,
                           body: dict[str, Any]) -> dict[str, Any]:
        api = self.get_api(api_id)
        current = self.get_item(api_id, INTEGRATION, integration_id)
        wire = self._integration_wire(api_id, api["protocolType"], _Body(body), current,
                                      new=False)
        with self.db.transaction():
            self._put(api_id, INTEGRATION, integration_id, wire)
            self._redeploy(api_id)
        return wire

    def _integration_wire(self, api_id: str, protocol: str, fields: _Body,
                          current: dict[str, Any], new: bool) -> dict[str, Any]:
        wire = dict(current)
        kind = fields.string("integrationType")
        if new and kind is None:
            raise bad_request("IntegrationType is required")
        if kind is not None and kind != "AWS_PROXY":
            raise bad_request(f"IntegrationType {kind} is not supported by Kiln: use "
                              "AWS_PROXY with a Lambda function")
        uri = fields.string("integrationUri", 1, 2048)
        if uri is None and new:
            raise bad_request("IntegrationUri is required for AWS_PROXY integrations")
        if uri is not None:
            self.function_arn(uri)
            wire["integrationUri"] = uri
        version = fields.string("payloadFormatVersion")
        allowed = ("1.0", "2.0") if protocol == HTTP else ("1.0",)
        if version is not None and version not in allowed:
            raise bad_request(f"Invalid PayloadFormatVersion {version}: must be one of "
                              f"{', '.join(allowed)}")
        timeout = fields.integer("timeoutInMillis")
        high = 30000 if protocol == HTTP else 29000
        if timeout is not None and not 50 <= timeout <= high:
            raise bad_request(f"TimeoutInMillis must be between 50 and {high}")
        if new:
            wire.update({"integrationId": _new_id(7), "integrationType": "AWS_PROXY",
                         "integrationMethod": "POST", "connectionType": "INTERNET",
                         "payloadFormatVersion": "1.0", "timeoutInMillis": high,
                         "apiGatewayManaged": False})
        if version is not None:
            wire["payloadFormatVersion"] = version
        if timeout is not None:
            wire["timeoutInMillis"] = timeout
        description = fields.string("description", 0, 1024)
        if description is not None:
            wire["description"] = description
        return wire

    def function_arn(self, uri: str) -> str:
        """The Lambda function an integration URI names (a function ARN, or API Gateway's
        ``arn:aws:apigateway:REGION:lambda:path/2015-03-31/functions/ARN/invocations``)."""
        match = _INVOCATION_URI.match(uri)
        arn = match[1] if match else uri
        try:
            if not arn.startswith("arn:"):
                raise AwsError.invalid_parameter(arn)
            fid = parse_function_id(arn, self.arns.account_id)
        except AwsError:
            raise bad_request(f"Invalid IntegrationUri {uri}: must be a Lambda function ARN"
                              ) from None
        return self.arns.function(fid.name, fid.qualifier)

    # -- routes -------------------------------------------------------------------------------

    def create_route(self, api_id: str, body: dict[str, Any]) -> dict[str, Any]:
        api = self.get_api(api_id)
        route_id = _new_id(7)
        wire = self._route_wire(api_id, api["protocolType"], _Body(body), {
            "routeId": route_id, "apiKeyRequired": False, "authorizationType": "NONE"})
        with self.db.transaction():
            self._put(api_id, ROUTE, route_id, wire)
            self._redeploy(api_id)
        return wire

    def update_route(self, api_id: str, route_id: str, body: dict[str, Any]) -> dict[str, Any]:
        api = self.get_api(api_id)
        current = self.get_item(api_id, ROUTE, route_id)
        wire = self._route_wire(api_id, api["protocolType"], _Body(body), dict(current))
        with self.db.transaction():
            self._put(api_id, ROUTE, route_id, wire)
            self._redeploy(api_id)
        return wire

    def _route_wire(self, api_id: str, protocol: str, fields: _Body,
                    wire: dict[str, Any]) -> dict[str, Any]:
        route_key = fields.string("routeKey", 1, 1024)
        if route_key is None and "routeKey" not in wire:
            raise bad_request("RouteKey is required")
        if route_key is not None:
            if protocol == HTTP:
                error = http_route_error(route_key)
            elif route_key.startswith("$") and route_key not in (
                    "$connect", "$disconnect", "$default"):
                error = f"Invalid route key {route_key}: only $connect, $disconnect and " \
                        "$default may start with $"
            else:
                error = None
            if error is not None:
                raise bad_request(error)
            taken = [r for r in self.get_items(api_id, ROUTE)
                     if r["routeKey"] == route_key and r["routeId"] != wire["routeId"]]
            if taken:
                raise conflict(f"Unable to create route {route_key}. A route with the same "
                               "key already exists")
            wire["routeKey"] = route_key
        target = fields.string("target", 1, 128)
        if target is not None:
            integration_id = target.removeprefix("integrations/")
            if not target.startswith("integrations/") or self._find(
                    api_id, INTEGRATION, integration_id) is None:
                raise not_found(f"Invalid Target {target}: no such integration",
                                "Integration")
            wire["target"] = target
        auth = fields.string("authorizationType")
        if auth is not None and auth != "NONE":
            raise bad_request(f"AuthorizationType {auth} is not supported by Kiln")
        for key in ("operationName", "routeResponseSelectionExpression"):
            value = fields.string(key, 1, 1024)
            if value is not None:
                wire[key] = value
        return wire

    # -- stages -------------------------------------------------------------------------------

    def create_stage(self, api_id: str, body: dict[str, Any]) -> dict[str, Any]:
        api = self.get_api(api_id)
        fields = _Body(body)
        name = fields.string("stageName", 1, 128)
        if name is None:
            raise bad_request("StageName is required")
        if not (_STAGE_NAME.match(name) or (name == DEFAULT_STAGE and
                                            api["protocolType"] == HTTP)):
            raise bad_request(f"Invalid stage name {name}: use letters, digits, - and _"
                              + (" ($default is for HTTP APIs only)"
                                 if name == DEFAULT_STAGE else ""))
        if self._find(api_id, STAGE, name) is not None:
            raise conflict(f"Stage {name} already exists")
        wire = self._stage_wire(api_id, fields, self._stage_defaults(name, {}))
        with self.db.transaction():
            self._put(api_id, STAGE, name, wire)
            if wire["autoDeploy"]:
                self._redeploy(api_id)
        return self.get_item(api_id, STAGE, name)

    def update_stage(self, api_id: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        self.get_api(api_id)
        current = self.get_item(api_id, STAGE, name)
        wire = self._stage_wire(api_id, _Body(body), dict(current))
        wire["lastUpdatedDate"] = _now()
        with self.db.transaction():
            self._put(api_id, STAGE, name, wire)
            if wire["autoDeploy"] and not current["autoDeploy"]:
                self._redeploy(api_id)
        return self.get_item(api_id, STAGE, name)

    @staticmethod
    def _stage_defaults(name: str, wire: dict[str, Any]) -> dict[str, Any]:
        now = _now()
        return {"stageName": name, "autoDeploy": False, "createdDate": now,
                "lastUpdatedDate": now, "stageVariables": {}, "routeSettings": {},
                "defaultRouteSettings": {"detailedMetricsEnabled": False}, "tags": {}, **wire}

    def _stage_wire(self, api_id: str, fields: _Body, wire: dict[str, Any]) -> dict[str, Any]:
        variables = fields.mapping("stageVariables")
        if variables is not None:
            for key, value in variables.items():
                if not _STAGE_VAR_NAME.match(key):
                    raise bad_request(f"Invalid stage variable name {key}: use letters, "
                                      "digits and _ (up to 64)")
                if not isinstance(value, str) or not _STAGE_VAR_VALUE.match(value):
                    raise bad_request(f"Invalid value for stage variable {key}: use letters, "
                                      "digits and -._~:/?#&=, (up to 2048)")
            wire["stageVariables"] = variables
        auto = fields.boolean("autoDeploy")
        if auto is not None:
            wire["autoDeploy"] = auto
        deployment = fields.string("deploymentId", 1, 64)
        if deployment is not None:
            if wire["autoDeploy"]:
                raise bad_request("DeploymentId cannot be set on a stage with AutoDeploy")
            self.get_item(api_id, DEPLOYMENT, deployment)
            wire["deploymentId"] = deployment
        description = fields.string("description", 0, 1024)
        if description is not None:
            wire["description"] = description
        return wire

    # -- deployments --------------------------------------------------------------------------

    def create_deployment(self, api_id: str, body: dict[str, Any]) -> dict[str, Any]:
        self.get_api(api_id)
        fields = _Body(body)
        stage_name = fields.string("stageName", 1, 128)
        description = fields.string("description", 0, 1024)
        stage = self.get_item(api_id, STAGE, stage_name) if stage_name is not None else None
        if stage is not None and stage["autoDeploy"]:
            raise bad_request(f"Stage {stage_name} has AutoDeploy enabled: deployments are "
                              "made automatically")
        with self.db.transaction():
            wire = self._deploy(api_id, description, auto=False)
            if stage is not None:
                stage.update(deploymentId=wire["deploymentId"], lastUpdatedDate=_now())
                self._put(api_id, STAGE, stage["stageName"], stage)
        return wire

    def update_deployment(self, api_id: str, deployment_id: str,
                          body: dict[str, Any]) -> dict[str, Any]:
        self.get_api(api_id)
        wire = self._find(api_id, DEPLOYMENT, deployment_id, hidden=True)
        if wire is None:
            raise self._missing(api_id, DEPLOYMENT, deployment_id)
        description = _Body(body).string("description", 0, 1024)
        if description is not None:
            wire["description"] = description
        self._put(api_id, DEPLOYMENT, deployment_id, wire)
        return _public(wire)

    def delete_deployment(self, api_id: str, deployment_id: str) -> None:
        self.get_item(api_id, DEPLOYMENT, deployment_id)
        if any(s.get("deploymentId") == deployment_id for s in self.get_items(api_id, STAGE)):
            raise bad_request("Active stages pointing to this deployment must be moved or "
                              "deleted")
        self.delete_item(api_id, DEPLOYMENT, deployment_id)

    def _deploy(self, api_id: str, description: str | None, auto: bool) -> dict[str, Any]:
        """Snapshot the routes and integrations (caller holds the transaction)."""
        deployment_id = _new_id(6)
        wire: dict[str, Any] = {
            "deploymentId": deployment_id, "deploymentStatus": "DEPLOYED",
            "createdDate": _now(), "autoDeployed": auto,
            "_snapshot": {"routes": self.get_items(api_id, ROUTE),
                          "integrations": self.get_items(api_id, INTEGRATION)}}
        if description is not None:
            wire["description"] = description
        self._put(api_id, DEPLOYMENT, deployment_id, wire)
        return _public(wire)

    def _redeploy(self, api_id: str) -> None:
        """After a change: a new deployment for every autoDeploy stage."""
        stages = [s for s in self.get_items(api_id, STAGE) if s["autoDeploy"]]
        if stages:
            deployment = self._deploy(api_id, "Automatic deployment", auto=True)
            for stage in stages:
                stage.update(deploymentId=deployment["deploymentId"], lastUpdatedDate=_now(),
                             lastDeploymentStatusMessage="Successfully deployed stage with "
                             f"deployment ID '{deployment['deploymentId']}'")
                self._put(api_id, STAGE, stage["stageName"], stage)
        self._deployed.pop(api_id, None)

    # -- children, generically ---------------------------------------------------------------

    def get_item(self, api_id: str, kind: str, item_id: str) -> dict[str, Any]:
        self.get_api(api_id)
        wire = self._find(api_id, kind, item_id)
        if wire is None:
            raise self._missing(api_id, kind, item_id)
        return wire

    def get_items(self, api_id: str, kind: str) -> list[dict[str, Any]]:
        self.get_api(api_id)
        rows = self.db.query("SELECT body FROM gateway_items WHERE api_id = ? AND kind = ? "
                             "ORDER BY rowid", (api_id, kind))
        return [_public(json.loads(r["body"])) for r in rows]

    def delete_item(self, api_id: str, kind: str, item_id: str) -> None:
        self.get_item(api_id, kind, item_id)
        if kind == INTEGRATION:
            users = [r["routeKey"] for r in self.get_items(api_id, ROUTE)
                     if r.get("target") == f"integrations/{item_id}"]
            if users:
                raise conflict(f"Integration {item_id} is the target of route(s) "
                               f"{', '.join(users)}: delete or retarget them first")
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM gateway_items WHERE api_id = ? AND kind = ? AND "
                       "item_id = ?", (api_id, kind, item_id))
            if kind in (ROUTE, INTEGRATION):
                self._redeploy(api_id)
        self._deployed.pop(api_id, None)

    def _missing(self, api_id: str, kind: str, item_id: str) -> AwsError:
        label = _LABELS[kind]
        return not_found(f"Invalid {label} identifier specified {self.arns.account_id}:"
                         f"{api_id}:{item_id}" if kind != STAGE else
                         f"Invalid stage identifier specified {item_id}", label)

    def _find(self, api_id: str, kind: str, item_id: str,
              hidden: bool = False) -> dict[str, Any] | None:
        row = self.db.query_one("SELECT body FROM gateway_items WHERE api_id = ? AND kind = ? "
                                "AND item_id = ?", (api_id, kind, item_id))
        if row is None:
            return None
        wire: dict[str, Any] = json.loads(row["body"])
        return wire if hidden else _public(wire)

    def _put(self, api_id: str, kind: str, item_id: str, wire: dict[str, Any]) -> None:
        self.db.execute(
            "INSERT INTO gateway_items (api_id, kind, item_id, body) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (api_id, kind, item_id) DO UPDATE SET body = excluded.body",
            (api_id, kind, item_id, json.dumps(wire)))
        self._deployed.pop(api_id, None)

    # -- the deployed view --------------------------------------------------------------------

    def _build(self, api_id: str) -> Api | None:
        row = self.db.query_one("SELECT body FROM gateway_apis WHERE api_id = ?", (api_id,))
        if row is None:
            return None
        wire = json.loads(row["body"])
        stages: dict[str, Stage] = {}
        for stage in self.get_items(api_id, STAGE):
            deployment = self._find(api_id, DEPLOYMENT, stage.get("deploymentId") or "",
                                    hidden=True)
            routes = self._routes(deployment["_snapshot"]) if deployment else ()
            stages[stage["stageName"]] = Stage(stage["stageName"],
                                               dict(stage.get("stageVariables") or {}),
                                               routes, deployment is not None)
        return Api(api_id, wire["name"], wire["protocolType"],
                   wire["routeSelectionExpression"],
                   cors_from_wire(wire.get("corsConfiguration"), CAMEL_CORS), stages,
                   bool(wire.get("disableExecuteApiEndpoint")))

    def _routes(self, snapshot: dict[str, Any]) -> tuple[Route, ...]:
        integrations = {
            i["integrationId"]: Integration(i["integrationId"],
                                            self.function_arn(i["integrationUri"]),
                                            i["payloadFormatVersion"], i["timeoutInMillis"])
            for i in snapshot["integrations"]}
        return tuple(
            Route(r["routeId"], r["routeKey"],
                  integrations.get(str(r.get("target", "")).removeprefix("integrations/")),
                  r.get("routeResponseSelectionExpression"))
            for r in snapshot["routes"])


def _public(wire: dict[str, Any]) -> dict[str, Any]:
    """The wire form without Kiln's private keys (``_snapshot``)."""
    return {k: v for k, v in wire.items() if not k.startswith("_")}
