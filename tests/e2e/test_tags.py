"""Function tags through boto3 against a started Kiln: CreateFunction's ``Tags``, TagResource,
UntagResource, ListTags, GetFunction's ``Tags``, and every error AWS answers for them."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.conftest import KilnServer, create_python_function, expect_error, unique_name

APP = "def handler(event, context):\n    return 'ok'\n"


@pytest.fixture
def function(lambda_client: Any) -> tuple[str, str]:
    """A new function: (name, unqualified ARN)."""
    name = create_python_function(lambda_client, APP, Tags={"team": "kiln"})
    arn = lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    return name, str(arn)


def test_tags_belong_to_the_function(lambda_client: Any, function: tuple[str, str]) -> None:
    name, arn = function
    assert lambda_client.list_tags(Resource=arn)["Tags"] == {"team": "kiln"}
    lambda_client.tag_resource(Resource=arn, Tags={"stage": "dev", "team": "core",
                                                   "empty": "", "ü ñ.:/=+-@_": "x y"})
    expected = {"team": "core", "stage": "dev", "empty": "", "ü ñ.:/=+-@_": "x y"}
    assert lambda_client.list_tags(Resource=arn)["Tags"] == expected
    lambda_client.untag_resource(Resource=arn, TagKeys=["stage", "not-there"])
    del expected["stage"]
    assert lambda_client.list_tags(Resource=arn)["Tags"] == expected
    # Every version and alias shows the function's tags; they are no part of a version.
    version = lambda_client.publish_version(FunctionName=name)["Version"]
    lambda_client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    for qualifier in (None, version, "live"):
        extra = {} if qualifier is None else {"Qualifier": qualifier}
        assert lambda_client.get_function(FunctionName=name, **extra)["Tags"] == expected
    lambda_client.tag_resource(Resource=arn, Tags={"later": "1"})
    assert lambda_client.publish_version(FunctionName=name)["Version"] == version
    listed = lambda_client.list_functions()["Functions"]
    assert all("Tags" not in config for config in listed)
    # Without tags GetFunction leaves the member out, as AWS does.
    lambda_client.untag_resource(Resource=arn, TagKeys=[*expected, "later"])
    assert lambda_client.list_tags(Resource=arn)["Tags"] == {}
    assert "Tags" not in lambda_client.get_function(FunctionName=name)


def test_deleting_the_function_deletes_its_tags(lambda_client: Any,
                                                function: tuple[str, str]) -> None:
    name, arn = function
    lambda_client.delete_function(FunctionName=name)
    expect_error(lambda_client, "ResourceNotFoundException", 404, lambda_client.list_tags,
                 Resource=arn)
    create_python_function(lambda_client, APP, name=name)
    assert lambda_client.list_tags(Resource=arn)["Tags"] == {}


def test_limits(lambda_client: Any, function: tuple[str, str]) -> None:
    _, arn = function
    many = {f"k{i}": "v" for i in range(49)}
    lambda_client.tag_resource(Resource=arn, Tags=many)  # 50 with "team"
    error = expect_error(lambda_client, "InvalidParameterValueException", 400,
                         lambda_client.tag_resource, Resource=arn, Tags={"one-more": "v"})
    assert error.response["Error"]["Message"] == "Number of tags exceeds function tag limit."
    lambda_client.tag_resource(Resource=arn, Tags={"k0": "overwritten"})  # still 50
    assert len(lambda_client.list_tags(Resource=arn)["Tags"]) == 50
    lambda_client.untag_resource(Resource=arn, TagKeys=list(many))
    lambda_client.tag_resource(Resource=arn, Tags={"k" * 128: "v" * 256})
    bad: list[tuple[str, dict[str, str]]] = [
        ("ValidationException", {"k" * 129: "v"}),
        ("ValidationException", {"k": "v" * 257}),
        ("ValidationException", {"a#b": "v"}),
        ("ValidationException", {"k": "semi;colon"}),
        ("InvalidParameterValueException", {"aws:reserved": "v"}),
        ("InvalidParameterValueException", {"AWS:Reserved": "v"}),
        ("InvalidParameterValueException", {}),
    ]
    for code, tags in bad:
        expect_error(lambda_client, code, 400, lambda_client.tag_resource, Resource=arn,
                     Tags=tags)
    assert lambda_client.list_tags(Resource=arn)["Tags"] == {"team": "kiln", "k" * 128: "v" * 256}
    expect_error(lambda_client, "ValidationException", 400, lambda_client.untag_resource,
                 Resource=arn, TagKeys=[])
    expect_error(lambda_client, "ValidationException", 400, lambda_client.untag_resource,
                 Resource=arn, TagKeys=["k" * 129])


def test_create_function_checks_its_tags_before_creating(lambda_client: Any) -> None:
    for code, tags in [("InvalidParameterValueException", {f"k{i}": "v" for i in range(51)}),
                       ("InvalidParameterValueException", {"aws:x": "v"}),
                       ("ValidationException", {"k": "v" * 257})]:
        name = unique_name()
        expect_error(lambda_client, code, 400,
                     functools.partial(create_python_function, lambda_client, APP, name),
                     Tags=tags)
        expect_error(lambda_client, "ResourceNotFoundException", 404,
                     lambda_client.get_function, FunctionName=name)
    name = create_python_function(lambda_client, APP, Tags={f"k{i}": "v" for i in range(50)})
    assert len(lambda_client.get_function(FunctionName=name)["Tags"]) == 50


def test_resources_that_cannot_be_tagged(lambda_client: Any, function: tuple[str, str]) -> None:
    name, arn = function
    version = lambda_client.publish_version(FunctionName=name)["Version"]
    lambda_client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    missing = arn.replace(name, unique_name())
    cases: list[tuple[str, int, str]] = [
        ("InvalidParameterValueException", 400, f"{arn}:{version}"),
        ("InvalidParameterValueException", 400, f"{arn}:live"),
        ("InvalidParameterValueException", 400, f"{arn}:$LATEST"),
        ("ResourceNotFoundException", 404, missing),
        ("ResourceNotFoundException", 404, arn.replace("us-east-1", "eu-west-1")),
        ("ResourceNotFoundException", 404, arn.replace(f"function:{name}",
                                                       "code-signing-config:csc-0123456789abcdefg")),
        ("AccessDeniedException", 403, arn.replace("000000000000", "111111111111")),
        ("ValidationException", 400, name),
        ("ValidationException", 400, arn.replace("function:", "layer:")),
    ]
    calls: list[tuple[Any, dict[str, Any]]] = [
        (lambda_client.list_tags, {}),
        (lambda_client.tag_resource, {"Tags": {"a": "b"}}),
        (lambda_client.untag_resource, {"TagKeys": ["team"]}),
    ]
    for code, status, resource in cases:
        for call, extra in calls:
            expect_error(lambda_client, code, status, call, Resource=resource, **extra)
    assert lambda_client.list_tags(Resource=arn)["Tags"] == {"team": "kiln"}


def test_malformed_bodies(kiln_server: KilnServer, function: tuple[str, str]) -> None:
    """What botocore refuses to send (an empty key, no ``Tags``, a non-map) still gets AWS's
    answer."""
    _, arn = function
    url = f"{kiln_server.url}/2017-03-31/tags/{quote(arn, safe='')}"
    for body, code in [({"Tags": {"": "v"}}, "ValidationException"),
                       ({}, "ValidationException"),
                       ({"Tags": ["a"]}, "InvalidRequestContentException"),
                       ({"Tags": {"a": 1}}, "InvalidRequestContentException")]:
        response = httpx.post(url, json=body)
        assert response.status_code == 400, response.text
        assert response.headers["x-amzn-errortype"] == code, (body, response.text)
    assert httpx.delete(url).headers["x-amzn-errortype"] == "ValidationException"
    assert httpx.get(url).json() == {"Tags": {"team": "kiln"}}
