"""The layer operations (2018-10-31 REST API), as botocore calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.restjson import aws_endpoint, empty_response, json_body, json_response
from kiln.functions.api import (
    MAX_CONFIG_BYTES,
    MAX_CREATE_BYTES,
    code_location,
    max_items,
    page,
)

if TYPE_CHECKING:
    from kiln.server import Kiln


def routes(kiln: Kiln) -> list[Route]:
    layers = kiln.functions.layers

    def with_location(request: Request, info: dict[str, Any], sha_hex: str) -> dict[str, Any]:
        """The answer with ``Content.Location``."""
        return {**info, "Content": {"Location": code_location(request, sha_hex),
                                    **info["Content"]}}

    def target(request: Request) -> tuple[str, str]:
        return request.path_params["layer"], request.path_params["version"]

    @aws_endpoint("PublishLayerVersion")
    async def publish(request: Request) -> Response:
        body = await json_body(request, MAX_CREATE_BYTES)
        info, sha_hex = layers.publish(request.path_params["layer"], body)
        return json_response(with_location(request, info, sha_hex), 201)

    @aws_endpoint("GetLayerVersion")
    async def get_version(request: Request) -> Response:
        info, sha_hex = layers.get(*target(request))
        return json_response(with_location(request, info, sha_hex))

    @aws_endpoint("ListLayers")
    async def list_layers(request: Request) -> Response:
        """ListLayers, or GetLayerVersionByArn (``?find=LayerVersion&Arn=``) on the same path."""
        query = request.query_params
        if query.get("find") == "LayerVersion":
            request.scope["kiln.operation"] = "GetLayerVersionByArn"
            info, sha_hex = layers.get_by_arn(query.get("Arn"))
            return json_response(with_location(request, info, sha_hex))
        items, marker = layers.list_layers(
            query.get("CompatibleRuntime"), query.get("CompatibleArchitecture"),
            query.get("Marker"), max_items(request, 50))
        return page("Layers", items, marker)

    @aws_endpoint("ListLayerVersions")
    async def list_versions(request: Request) -> Response:
        query = request.query_params
        items, marker = layers.list_versions(
            request.path_params["layer"], query.get("CompatibleRuntime"),
            query.get("CompatibleArchitecture"), query.get("Marker"), max_items(request, 50))
        return page("LayerVersions", items, marker)

    @aws_endpoint("DeleteLayerVersion")
    async def delete_version(request: Request) -> Response:
        layers.delete(*target(request))
        return empty_response(204)

    @aws_endpoint("AddLayerVersionPermission")
    async def add_permission(request: Request) -> Response:
        body = await json_body(request, MAX_CONFIG_BYTES)
        answer = layers.add_permission(*target(request), body,
                                       request.query_params.get("RevisionId"))
        return json_response(answer, 201)

    @aws_endpoint("GetLayerVersionPolicy")
    async def get_policy(request: Request) -> Response:
        return json_response(layers.get_policy(*target(request)))

    @aws_endpoint("RemoveLayerVersionPermission")
    async def remove_permission(request: Request) -> Response:
        layers.remove_permission(*target(request), request.path_params["sid"],
                                 request.query_params.get("RevisionId"))
        return empty_response(204)

    prefix = "/2018-10-31/layers"
    version = f"{prefix}/{{layer}}/versions/{{version}}"
    return [
        Route(prefix, list_layers, methods=["GET"]),
        Route(f"{prefix}/", list_layers, methods=["GET"]),
        Route(f"{prefix}/{{layer}}/versions", publish, methods=["POST"]),
        Route(f"{prefix}/{{layer}}/versions", list_versions, methods=["GET"]),
        Route(version, get_version, methods=["GET"]),
        Route(version, delete_version, methods=["DELETE"]),
        Route(f"{version}/policy", add_permission, methods=["POST"]),
        Route(f"{version}/policy", get_policy, methods=["GET"]),
        Route(f"{version}/policy/{{sid}}", remove_permission, methods=["DELETE"]),
    ]
