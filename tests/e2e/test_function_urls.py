"""Lambda Function URLs end to end: the configuration API through boto3, requests through
httpx (by ``/_aws/lambda-url/`` prefix and by Host), AuthType NONE and AWS_IAM (SigV4-signed
with botocore's signer, unsigned refused), CORS, aliases, deletion with the function."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from tests.conftest import KilnServer, create_python_function, expect_error

SOURCE = """
import json, os

def handler(event, context):
    if event["rawPath"] == "/bare":
        return {"tag": os.environ.get("TAG", "latest")}
    if event["rawPath"] == "/raise":
        raise RuntimeError("boom")
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "cookies": ["s=1"], "body": json.dumps(event)}
"""


@pytest.fixture(scope="module")
def http(kiln_server: KilnServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kiln_server.url, timeout=60) as client:
        yield client


def url_id(function_url: str) -> str:
    match = re.fullmatch(r"http://([a-z0-9]{32})\.lambda-url\.localhost:\d+/", function_url)
    assert match, function_url
    return match[1]


def test_config_round_trip_and_errors(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, SOURCE)
    created = lambda_client.create_function_url_config(FunctionName=name, AuthType="NONE")
    assert created["ResponseMetadata"]["HTTPStatusCode"] == 201
    url_id(created["FunctionUrl"])
    assert created["FunctionArn"].endswith(f":function:{name}")
    assert (created["AuthType"], created["InvokeMode"]) == ("NONE", "BUFFERED")
    got = lambda_client.get_function_url_config(FunctionName=name)
    assert got["FunctionUrl"] == created["FunctionUrl"] and "LastModifiedTime" in got
    updated = lambda_client.update_function_url_config(
        FunctionName=name, AuthType="AWS_IAM", Cors={"AllowOrigins": ["*"], "MaxAge": 5})
    assert (updated["AuthType"], updated["Cors"]) == ("AWS_IAM",
                                                      {"AllowOrigins": ["*"], "MaxAge": 5})
    listed = lambda_client.list_function_url_configs(FunctionName=name)["FunctionUrlConfigs"]
    assert [c["FunctionUrl"] for c in listed] == [created["FunctionUrl"]]

    expect_error(lambda_client, "ResourceConflictException", 409,
                 lambda_client.create_function_url_config, FunctionName=name, AuthType="NONE")
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.create_function_url_config, FunctionName="no-such-fn-url",
                 AuthType="NONE")
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.create_function_url_config, FunctionName=name,
                 Qualifier="nosuchalias", AuthType="NONE")
    expect_error(lambda_client, "ValidationException", 400,
                 lambda_client.update_function_url_config, FunctionName=name,
                 AuthType="KERBEROS")
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_url_config, FunctionName=name,
                 Cors={"AllowMethods": ["FETCH"]})
    assert lambda_client.get_function_url_config(FunctionName=name)["Cors"] == {
        "AllowOrigins": ["*"], "MaxAge": 5}  # the rejected update changed nothing
    lambda_client.delete_function_url_config(FunctionName=name)
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_function_url_config, FunctionName=name)
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.delete_function_url_config, FunctionName=name)


def test_auth_none_event_and_response(lambda_client: Any, http: httpx.Client,
                                      kiln_server: KilnServer) -> None:
    name = create_python_function(lambda_client, SOURCE)
    uid = url_id(lambda_client.create_function_url_config(FunctionName=name,
                                                          AuthType="NONE")["FunctionUrl"])
    response = http.post(f"/_aws/lambda-url/{uid}/some/path?x=1&x=2", content=b"hi",
                         headers={"content-type": "text/plain", "Cookie": "a=b"})
    assert response.status_code == 200, response.text
    assert response.headers.get_list("set-cookie") == ["s=1"]
    event = response.json()
    assert list(event) == ["version", "routeKey", "rawPath", "rawQueryString", "cookies",
                           "headers", "queryStringParameters", "requestContext", "body",
                           "isBase64Encoded"]
    assert (event["routeKey"], event["rawPath"], event["rawQueryString"]) == \
        ("$default", "/some/path", "x=1&x=2")
    assert event["queryStringParameters"] == {"x": "1,2"}
    assert (event["cookies"], event["body"], event["isBase64Encoded"]) == (["a=b"], "hi", False)
    context = event["requestContext"]
    assert (context["apiId"], context["domainPrefix"]) == (uid, uid)
    assert context["domainName"] == f"{uid}.lambda-url.localhost"
    assert (context["routeKey"], context["stage"]) == ("$default", "$default")
    assert context["http"]["method"] == "POST" and context["http"]["path"] == "/some/path"
    assert "authorizer" not in context

    by_host = http.get("/bare", headers={"Host": f"{uid}.lambda-url.localhost:"
                                                 f"{kiln_server.port}"})
    assert (by_host.status_code, by_host.text) == (200, '{"tag": "latest"}')
    assert by_host.headers["content-type"] == "application/json"
    failed = http.get(f"/_aws/lambda-url/{uid}/raise")
    assert (failed.status_code, failed.json()) == (502, {"message": "Internal Server Error"})
    # Deleting the function takes its URL with it.
    lambda_client.delete_function(FunctionName=name)
    assert http.get(f"/_aws/lambda-url/{uid}/bare").status_code == 404


def test_auth_aws_iam(lambda_client: Any, http: httpx.Client, kiln_server: KilnServer) -> None:
    name = create_python_function(lambda_client, SOURCE)
    uid = url_id(lambda_client.create_function_url_config(FunctionName=name,
                                                          AuthType="AWS_IAM")["FunctionUrl"])
    unsigned = http.get(f"/_aws/lambda-url/{uid}/x")
    assert (unsigned.status_code, unsigned.json()) == (403, {"Message": "Forbidden"})
    forged = http.get(f"/_aws/lambda-url/{uid}/x",
                      headers={"Authorization": "Bearer token", "X-Amz-Date": "20240101T000000Z"})
    assert forged.status_code == 403

    target = f"{kiln_server.url}/_aws/lambda-url/{uid}/x"
    request = AWSRequest(method="GET", url=target)
    SigV4Auth(Credentials("AKIDKILNTEST", "secret"), "lambda", "us-east-1").add_auth(request)
    signed = http.get(target, headers=dict(request.headers.items()))
    assert signed.status_code == 200, signed.text
    iam = signed.json()["requestContext"]["authorizer"]["iam"]
    assert iam["accessKey"] == "AKIDKILNTEST" and iam["accountId"] == "000000000000"


def test_alias_url_and_cors(lambda_client: Any, http: httpx.Client) -> None:
    name = create_python_function(lambda_client, SOURCE, Environment={"Variables": {"TAG": "v1"}})
    version = lambda_client.publish_version(FunctionName=name)["Version"]
    lambda_client.create_alias(FunctionName=name, Name="live", FunctionVersion=version)
    lambda_client.update_function_configuration(FunctionName=name,
                                                Environment={"Variables": {"TAG": "v2"}})
    config = lambda_client.create_function_url_config(
        FunctionName=name, Qualifier="live", AuthType="NONE",
        Cors={"AllowOrigins": ["https://site.example"], "AllowMethods": ["GET"],
              "ExposeHeaders": ["x-tag"]})
    assert config["FunctionArn"].endswith(f":function:{name}:live")
    uid = url_id(config["FunctionUrl"])
    response = http.get(f"/_aws/lambda-url/{uid}/bare",
                        headers={"Origin": "https://site.example"})
    assert response.json() == {"tag": "v1"}  # the alias's version, not $LATEST
    assert response.headers["access-control-allow-origin"] == "https://site.example"
    assert response.headers["access-control-expose-headers"] == "x-tag"
    preflight = http.options(f"/_aws/lambda-url/{uid}/bare", headers={
        "Origin": "https://site.example", "Access-Control-Request-Method": "GET"})
    assert preflight.headers["access-control-allow-methods"] == "GET"
    assert lambda_client.get_function_url_config(FunctionName=name, Qualifier="live")[
        "FunctionUrl"] == config["FunctionUrl"]
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_function_url_config, FunctionName=name)
