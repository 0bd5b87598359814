"""The Lambda control plane's REST API (2015-03-31) for functions, as botocore calls it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import Route

from kiln.aws.arn import QUALIFIER_RE, FunctionId, parse_function_id
from kiln.aws.errors import AwsError
from kiln.aws.restjson import aws_endpoint, empty_response, json_body, json_response
from kiln.functions.types import FunctionRecord
from kiln.functions.validation import field_error

if TYPE_CHECKING:
    from kiln.server import Kiln

# A 50 MB zip, base64-encoded inside JSON, is what AWS accepts for direct uploads.
MAX_CREATE_BYTES = 69_905_067
MAX_CONFIG_BYTES = 1 << 20
LIST_PAGE_MAX = 50
#: ListFunctions answers a subset of FunctionConfiguration: AWS leaves these to GetFunction.
LIST_OMITTED = frozenset({
    "State", "StateReason", "StateReasonCode", "LastUpdateStatus", "LastUpdateStatusReason",
    "LastUpdateStatusReasonCode", "RuntimeVersionConfig",
})


def function_id(kiln: Kiln, request: Request) -> FunctionId:
    """The function named in the path, with the ``Qualifier`` query parameter folded in."""
    return qualified_function_id(kiln, request.path_params["name"],
                                 request.query_params.get("Qualifier"))


def qualified_function_id(kiln: Kiln, name: str, qualifier: str | None) -> FunctionId:
    """``name`` (a name, partial or full ARN) with a ``Qualifier`` parameter folded in."""
    parsed = parse_function_id(name, kiln.settings.account_id)
    if qualifier is not None and not QUALIFIER_RE.match(qualifier):
        raise field_error(qualifier, "qualifier",
                          "Member must satisfy regular expression pattern: (|[a-zA-Z0-9$_-]+)")
    if qualifier is not None and parsed.qualifier is not None and qualifier != parsed.qualifier:
        raise AwsError.invalid_parameter(
            "The derived qualifier from the function name does not match the specified "
            "qualifier.")
    return FunctionId(parsed.name, qualifier or parsed.qualifier)


def max_items(request: Request, allowed: int = 10000) -> int:
    """The MaxItems query parameter (1 to ``allowed``, the operation's model limit), capped at
    the 50 items AWS pages hold."""
    raw = request.query_params.get("MaxItems", str(LIST_PAGE_MAX))
    if not raw.isdigit() or not 1 <= int(raw) <= allowed:
        raise field_error(raw, "maxItems", f"Member must have value between 1 and {allowed}")
    return min(int(raw), LIST_PAGE_MAX)


def page(key: str, items: list[Any], marker: str | None) -> Response:
    """One page of a List* answer: ``NextMarker`` only when there is more."""
    body: dict[str, Any] = {key: items}
    if marker:
        body["NextMarker"] = marker
    return json_response(body)


def code_location(request: Request, sha_hex: str) -> str:
    """The URL that downloads a stored zip (``Code.Location``, ``Content.Location``)."""
    return str(request.base_url) + f"kiln/v1/code/{sha_hex}.zip"


def listed(record: FunctionRecord) -> dict[str, Any]:
    """A FunctionConfiguration as list operations show it."""
    return {k: v for k, v in record.config.items() if k not in LIST_OMITTED}


def routes(kiln: Kiln) -> list[Route]:
    functions = kiln.functions

    def get_function_body(request: Request, record: FunctionRecord) -> dict[str, Any]:
        body: dict[str, Any] = {
            "Configuration": record.config,
            "Code": {"RepositoryType": "S3",
                     "Location": code_location(request, record.code_sha_hex)},
        }
        tags = functions.tags.get(record.name)
        if tags:  # AWS leaves the member out when there are none
            body["Tags"] = tags
        reserved = functions.concurrency.reserved.get(record.name)
        if reserved is not None:
            body["Concurrency"] = {"ReservedConcurrentExecutions": reserved}
        return body

    @aws_endpoint("CreateFunction")
    async def create_function(request: Request) -> Response:
        body = await json_body(request, MAX_CREATE_BYTES)
        record = functions.create(body)
        return json_response(record.config, 201)

    @aws_endpoint("ListFunctions")
    async def list_functions(request: Request) -> Response:
        version = request.query_params.get("FunctionVersion")
        if version is not None and version != "ALL":
            raise field_error(version, "functionVersion",
                              "Member must satisfy enum value set: [ALL]")
        records, marker = functions.list(request.query_params.get("Marker"), max_items(request),
                                         all_versions=version == "ALL")
        return page("Functions", [listed(r) for r in records], marker)

    @aws_endpoint("GetFunction")
    async def get_function(request: Request) -> Response:
        fid = function_id(kiln, request)
        record = functions.get(fid.name, fid.qualifier)
        return json_response(get_function_body(request, record))

    @aws_endpoint("GetFunctionConfiguration")
    async def get_configuration(request: Request) -> Response:
        fid = function_id(kiln, request)
        return json_response(functions.get(fid.name, fid.qualifier).config)

    @aws_endpoint("UpdateFunctionCode")
    async def update_code(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CREATE_BYTES)
        record = await functions.update_code(fid.name, body)
        return json_response(record.config)

    @aws_endpoint("UpdateFunctionConfiguration")
    async def update_configuration(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        record = await functions.update_configuration(fid.name, body)
        return json_response(record.config)

    @aws_endpoint("DeleteFunction")
    async def delete_function(request: Request) -> Response:
        fid = function_id(kiln, request)
        await functions.delete(fid.name, fid.qualifier)
        return empty_response(204)

    @aws_endpoint("PublishVersion")
    async def publish_version(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        return json_response((await functions.publish(fid.name, body)).config, 201)

    @aws_endpoint("ListVersionsByFunction")
    async def list_versions(request: Request) -> Response:
        fid = function_id(kiln, request)
        records, marker = functions.list_versions(
            fid.name, request.query_params.get("Marker"), max_items(request))
        return page("Versions", [listed(r) for r in records], marker)

    @aws_endpoint("CreateAlias")
    async def create_alias(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        return json_response(functions.create_alias(fid.name, body), 201)

    @aws_endpoint("ListAliases")
    async def list_aliases(request: Request) -> Response:
        fid = function_id(kiln, request)
        aliases, marker = functions.list_aliases(
            fid.name, request.query_params.get("FunctionVersion"),
            request.query_params.get("Marker"), max_items(request))
        return page("Aliases", aliases, marker)

    @aws_endpoint("GetAlias")
    async def get_alias(request: Request) -> Response:
        fid = function_id(kiln, request)
        return json_response(functions.get_alias(fid.name, request.path_params["alias"]))

    @aws_endpoint("UpdateAlias")
    async def update_alias(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        alias = functions.update_alias(fid.name, request.path_params["alias"], body)
        await kiln.provisioning.reconcile(fid.name)  # its provisioned concurrency follows it
        return json_response(alias)

    @aws_endpoint("DeleteAlias")
    async def delete_alias(request: Request) -> Response:
        fid = function_id(kiln, request)
        functions.delete_alias(fid.name, request.path_params["alias"])
        await kiln.provisioning.reconcile(fid.name)  # and so does its provisioned concurrency
        return empty_response(204)

    @aws_endpoint("PutFunctionConcurrency")
    async def put_concurrency(request: Request) -> Response:
        fid = function_id(kiln, request)
        body = await json_body(request, MAX_CONFIG_BYTES)
        reserved = functions.put_concurrency(fid.name, body, kiln.settings.account_concurrency)
        return json_response({"ReservedConcurrentExecutions": reserved})

    @aws_endpoint("GetFunctionConcurrency")
    async def get_concurrency(request: Request) -> Response:
        fid = function_id(kiln, request)
        reserved = functions.get_concurrency(fid.name)
        return json_response({} if reserved is None
                             else {"ReservedConcurrentExecutions": reserved})

    @aws_endpoint("DeleteFunctionConcurrency")
    async def delete_concurrency(request: Request) -> Response:
        fid = function_id(kiln, request)
        functions.delete_concurrency(fid.name)
        return empty_response(204)

    @aws_endpoint("GetAccountSettings")
    async def account_settings(request: Request) -> Response:
        count, total = functions.usage()
        limit = kiln.settings.account_concurrency
        return json_response({
            "AccountLimit": {
                "TotalCodeSize": 80_530_636_800,
                "CodeSizeUnzipped": 262_144_000,
                "CodeSizeZipped": 52_428_800,
                "ConcurrentExecutions": limit,
                "UnreservedConcurrentExecutions": functions.unreserved_concurrency(limit),
            },
            "AccountUsage": {"TotalCodeSize": total, "FunctionCount": count},
        })

    async def download_code(request: Request) -> Response:
        sha_hex = request.path_params["sha"]
        path = kiln.code.zip_path(sha_hex)
        if len(sha_hex) != 64 or not path.is_file():
            return AwsError.not_found("No such code").to_response()
        return FileResponse(path, media_type="application/zip")

    prefix = "/2015-03-31/functions"
    return [
        Route(f"{prefix}", create_function, methods=["POST"]),
        Route(f"{prefix}/", list_functions, methods=["GET"]),
        Route(f"{prefix}", list_functions, methods=["GET"]),
        Route(f"{prefix}/{{name}}", get_function, methods=["GET"]),
        Route(f"{prefix}/{{name}}", delete_function, methods=["DELETE"]),
        Route(f"{prefix}/{{name}}/configuration", get_configuration, methods=["GET"]),
        Route(f"{prefix}/{{name}}/configuration", update_configuration, methods=["PUT"]),
        Route(f"{prefix}/{{name}}/code", update_code, methods=["PUT"]),
        Route(f"{prefix}/{{name}}/versions", publish_version, methods=["POST"]),
        Route(f"{prefix}/{{name}}/versions", list_versions, methods=["GET"]),
        Route(f"{prefix}/{{name}}/aliases", create_alias, methods=["POST"]),
        Route(f"{prefix}/{{name}}/aliases", list_aliases, methods=["GET"]),
        Route(f"{prefix}/{{name}}/aliases/{{alias}}", get_alias, methods=["GET"]),
        Route(f"{prefix}/{{name}}/aliases/{{alias}}", update_alias, methods=["PUT"]),
        Route(f"{prefix}/{{name}}/aliases/{{alias}}", delete_alias, methods=["DELETE"]),
        Route("/2017-10-31/functions/{name}/concurrency", put_concurrency, methods=["PUT"]),
        Route("/2017-10-31/functions/{name}/concurrency", delete_concurrency,
              methods=["DELETE"]),
        Route("/2019-09-30/functions/{name}/concurrency", get_concurrency, methods=["GET"]),
        Route("/2016-08-19/account-settings", account_settings, methods=["GET"]),
        Route("/2016-08-19/account-settings/", account_settings, methods=["GET"]),
        Route("/kiln/v1/code/{sha}.zip", download_code, methods=["GET"]),
    ]
