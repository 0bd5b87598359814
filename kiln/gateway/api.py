"""API Gateway v2's control plane (2018-11-29, rest-json) as boto3's ``apigatewayv2`` calls it."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.restjson import aws_endpoint, empty_response, json_response, read_body
from kiln.gateway.store import (
    DEPLOYMENT,
    INTEGRATION,
    ROUTE,
    STAGE,
    GatewayStore,
    bad_request,
)

if TYPE_CHECKING:
    from kiln.server import Kiln

MAX_BODY = 1 << 20
PAGE_MAX = 500


async def request_json(request: Request) -> dict[str, Any]:
    raw = await read_body(request, MAX_BODY, "Request must be smaller than {limit} bytes")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise bad_request("Invalid JSON in request body") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object")
    return body


def paged(request: Request, items: list[dict[str, Any]]) -> Response:
    """``{"items": [...], "nextToken": ...}`` with maxResults (1-500) and an offset token."""
    raw_max = request.query_params.get("maxResults", str(PAGE_MAX))
    token = request.query_params.get("nextToken", "0")
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= PAGE_MAX:
        raise bad_request(f"Invalid maxResults {raw_max}: must be between 1 and {PAGE_MAX}")
    if not token.isdigit():
        raise bad_request(f"Invalid nextToken {token}")
    start, size = int(token), int(raw_max)
    body: dict[str, Any] = {"items": items[start:start + size]}
    if start + size < len(items):
        body["nextToken"] = str(start + size)
    return json_response(body)


def routes(kiln: Kiln) -> list[Route]:
    store: GatewayStore = kiln.gateway

    def api_id(request: Request) -> str:
        return str(request.path_params["apiId"])

    @aws_endpoint("CreateApi")
    async def create_api(request: Request) -> Response:
        return json_response(store.create_api(await request_json(request)), 201)

    @aws_endpoint("GetApis")
    async def get_apis(request: Request) -> Response:
        return paged(request, store.get_apis())

    @aws_endpoint("GetApi")
    async def get_api(request: Request) -> Response:
        return json_response(store.get_api(api_id(request)))

    @aws_endpoint("UpdateApi")
    async def update_api(request: Request) -> Response:
        return json_response(store.update_api(api_id(request), await request_json(request)))

    @aws_endpoint("DeleteApi")
    async def delete_api(request: Request) -> Response:
        store.delete_api(api_id(request))
        return empty_response(204)

    @aws_endpoint("DeleteCorsConfiguration")
    async def delete_cors(request: Request) -> Response:
        store.delete_cors(api_id(request))
        return empty_response(204)

    creators: dict[str, Callable[[str, dict[str, Any]], dict[str, Any]]] = {
        INTEGRATION: store.create_integration, ROUTE: store.create_route,
        STAGE: store.create_stage, DEPLOYMENT: store.create_deployment}
    updaters: dict[str, Callable[[str, str, dict[str, Any]], dict[str, Any]]] = {
        INTEGRATION: store.update_integration, ROUTE: store.update_route,
        STAGE: store.update_stage, DEPLOYMENT: store.update_deployment}
    deleters: dict[str, Callable[[str, str], None]] = {
        INTEGRATION: lambda a, i: store.delete_item(a, INTEGRATION, i),
        ROUTE: lambda a, i: store.delete_item(a, ROUTE, i),
        STAGE: lambda a, i: store.delete_item(a, STAGE, i),
        DEPLOYMENT: store.delete_deployment}

    def child_routes(kind: str, plural: str, key: str) -> list[Route]:
        """Create/Get(list)/Get/Update/Delete for one kind of an API's children."""
        label = kind.capitalize()

        @aws_endpoint(f"Create{label}")
        async def create(request: Request) -> Response:
            body = await request_json(request)
            return json_response(creators[kind](api_id(request), body), 201)

        @aws_endpoint(f"Get{label}s")
        async def get_all(request: Request) -> Response:
            return paged(request, store.get_items(api_id(request), kind))

        @aws_endpoint(f"Get{label}")
        async def get_one(request: Request) -> Response:
            return json_response(store.get_item(api_id(request), kind,
                                                request.path_params[key]))

        @aws_endpoint(f"Update{label}")
        async def update(request: Request) -> Response:
            body = await request_json(request)
            return json_response(updaters[kind](api_id(request), request.path_params[key],
                                                body))

        @aws_endpoint(f"Delete{label}")
        async def delete(request: Request) -> Response:
            deleters[kind](api_id(request), request.path_params[key])
            return empty_response(204)

        base = f"/v2/apis/{{apiId}}/{plural}"
        return [
            Route(base, create, methods=["POST"]),
            Route(base, get_all, methods=["GET"]),
            Route(f"{base}/{{{key}}}", get_one, methods=["GET"]),
            Route(f"{base}/{{{key}}}", update, methods=["PATCH"]),
            Route(f"{base}/{{{key}}}", delete, methods=["DELETE"]),
        ]

    return [
        Route("/v2/apis", create_api, methods=["POST"]),
        Route("/v2/apis", get_apis, methods=["GET"]),
        Route("/v2/apis/{apiId}", get_api, methods=["GET"]),
        Route("/v2/apis/{apiId}", update_api, methods=["PATCH"]),
        Route("/v2/apis/{apiId}", delete_api, methods=["DELETE"]),
        Route("/v2/apis/{apiId}/cors", delete_cors, methods=["DELETE"]),
        *child_routes(INTEGRATION, "integrations", "integrationId"),
        *child_routes(ROUTE, "routes", "routeId"),
        *child_routes(STAGE, "stages", "stageName"),
        *child_routes(DEPLOYMENT, "deployments", "deploymentId"),
    ]

