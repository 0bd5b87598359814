"""The provisioned concurrency operations (2019-09-30 REST API), as botocore calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.restjson import aws_endpoint, empty_response, json_body, json_response
from kiln.functions.api import MAX_CONFIG_BYTES, function_id, max_items, page

if TYPE_CHECKING:
    from kiln.server import Kiln


def routes(kiln: Kiln) -> list[Route]:
    provisioning = kiln.provisioning

    @aws_endpoint("PutProvisionedConcurrencyConfig")
    async def put_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        return json_response(await provisioning.put(fid.name, fid.qualifier, body), 202)

    @aws_endpoint("GetProvisionedConcurrencyConfig")
    async def get_config(request: Request) -> Response:
        """Get, or ListProvisionedConcurrencyConfigs (``?List=ALL``) on the same path."""
        fid = function_id(kiln, request)
        if request.query_params.get("List") == "ALL":
            request.scope["kiln.operation"] = "ListProvisionedConcurrencyConfigs"
            items, marker = provisioning.listing(fid.name, request.query_params.get("Marker"),
                                                 max_items(request, 50))
            return page("ProvisionedConcurrencyConfigs", items, marker)
        return json_response(provisioning.get(fid.name, fid.qualifier))

    @aws_endpoint("DeleteProvisionedConcurrencyConfig")
    async def delete_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        await provisioning.delete(fid.name, fid.qualifier)
        return empty_response(204)

    path = "/2019-09-30/functions/{name}/provisioned-concurrency"
    return [
        Route(path, put_config, methods=["PUT"]),
        Route(path, get_config, methods=["GET"]),
        Route(path, delete_config, methods=["DELETE"]),
    ]
