"""The tagging operations (2017-03-31 REST API) on function ARNs, as botocore calls them."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.arn import parse_function_id
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields, aws_endpoint, empty_response, json_body, json_response
from kiln.functions.api import MAX_CONFIG_BYTES
from kiln.functions.tags import TAGGABLE_RE, validated, validated_keys
from kiln.functions.validation import field_error, null_error

if TYPE_CHECKING:
    from kiln.server import Kiln


def tagged_function(kiln: Kiln, resource: str) -> str:
    """The name of the existing function whose unqualified ARN is ``resource``."""
    if len(resource) > 10000 or not TAGGABLE_RE.fullmatch(resource):
        raise field_error(resource, "resource", "Member must satisfy regular expression "
                          f"pattern: {TAGGABLE_RE.pattern}", "ValidationException")
    if resource.split(":")[5] != "function":  # Kiln has no other taggable resources
        raise AwsError.not_found(f"The resource you requested does not exist: {resource}")
    fid = parse_function_id(resource, kiln.settings.account_id)
    if fid.qualifier is not None:
        raise AwsError.invalid_parameter("Tags on function aliases and versions are not "
                                         "supported. Please specify a function ARN.")
    if resource.split(":")[3] != kiln.settings.region:
        raise AwsError.not_found(f"Function not found: {resource}")
    kiln.functions.get(fid.name)  # ResourceNotFoundException
    return fid.name


def routes(kiln: Kiln) -> list[Route]:
    tags = kiln.functions.tags

    async def changed(function: str, placement: tuple[str, bool]) -> None:
        """Environments made on the other backend or with the other network serve no more
        (the next invoke gets a new one), as after a configuration update."""
        if kiln.assignment.placement(function) != placement:
            await kiln.assignment.retire(function, provisioned=True)

    @aws_endpoint("TagResource")
    async def tag_resource(request: Request) -> Response:
        function = tagged_function(kiln, request.path_params["resource"])
        body = await json_body(request, MAX_CONFIG_BYTES)
        raw = Fields(body).mapping("Tags")
        if raw is None:
            raise null_error("tags", "ValidationException")
        placement = kiln.assignment.placement(function)
        tags.add(function, validated(raw))
        await changed(function, placement)
        return empty_response(204)

    @aws_endpoint("UntagResource")
    async def untag_resource(request: Request) -> Response:
        function = tagged_function(kiln, request.path_params["resource"])
        keys = validated_keys(request.query_params.getlist("tagKeys"))
        placement = kiln.assignment.placement(function)
        tags.discard(function, keys)
        await changed(function, placement)
        return empty_response(204)

    @aws_endpoint("ListTags")
    async def list_tags(request: Request) -> Response:
        function = tagged_function(kiln, request.path_params["resource"])
        return json_response({"Tags": tags.get(function)})

    path = "/2017-03-31/tags/{resource}"
    return [
        Route(path, tag_resource, methods=["POST"]),
        Route(path, untag_resource, methods=["DELETE"]),
        Route(path, list_tags, methods=["GET"]),
    ]
