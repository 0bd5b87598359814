"""The event invoke config operations (2019-09-25 REST API), as botocore calls them."""

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
    configs = kiln.event_configs

    @aws_endpoint("PutFunctionEventInvokeConfig")
    async def put_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        return json_response(configs.put(fid.name, fid.qualifier, body))

    @aws_endpoint("UpdateFunctionEventInvokeConfig")
    async def update_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        return json_response(configs.update(fid.name, fid.qualifier, body))

    @aws_endpoint("GetFunctionEventInvokeConfig")
    async def get_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        return json_response(configs.get(fid.name, fid.qualifier))

    @aws_endpoint("DeleteFunctionEventInvokeConfig")
    async def delete_config(request: Request) -> Response:
        fid = function_id(kiln, request)
        configs.delete(fid.name, fid.qualifier)
        return empty_response(204)

    @aws_endpoint("ListFunctionEventInvokeConfigs")
    async def list_configs(request: Request) -> Response:
        fid = function_id(kiln, request)
        items, marker = configs.list(fid.name, request.query_params.get("Marker"),
                                     max_items(request, 50))
        return page("FunctionEventInvokeConfigs", items, marker)

    path = "/2019-09-25/functions/{name}/event-invoke-config"
    return [
        Route(path, put_config, methods=["PUT"]),
        Route(path, update_config, methods=["POST"]),
        Route(path, get_config, methods=["GET"]),
        Route(path, delete_config, methods=["DELETE"]),
        Route(f"{path}/list", list_configs, methods=["GET"]),
    ]
