"""HTTP APIs end to end: the apigatewayv2 control plane through boto3, requests through httpx
to a started ``kiln serve`` (by path prefix and by Host), payload 1.0 and 2.0 events checked
key by key against the reference shapes, AWS's route order, response mapping, errors, CORS."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import KilnServer, create_python_function, expect_error

SOURCE = """
import base64, json, time

def handler(event, context):
    path = event.get("rawPath") or event["path"]
    last = path.rstrip("/").rsplit("/", 1)[-1]
    if last == "bare-dict":
        return {"hello": "world"}
    if last == "bare-string":
        return "Hello, world!"
    if last == "bare-list":
        return [1, 2]
    if last == "cookies":
        return {"statusCode": 201, "cookies": ["a=1; Max-Age=60", "b=2"],
                "headers": {"x-one": "1", "content-type": "text/plain"}, "body": "ok"}
    if last == "binary":
        return {"statusCode": 200, "headers": {"content-type": "application/octet-stream"},
                "isBase64Encoded": True, "body": base64.b64encode(bytes(range(256))).decode()}
    if last == "multi":
        return {"statusCode": 202, "headers": {"x-a": "single", "x-b": "replaced"},
                "multiValueHeaders": {"x-b": ["1", "2"], "Set-Cookie": ["a=1", "b=2"]},
                "body": "multi"}
    if last == "malformed":
        return {"statusCode": "abc"}
    if last == "bad-body":
        return {"statusCode": 200, "body": {"not": "a string"}}
    if last == "raise":
        raise ValueError("boom")
    if last == "sleep":
        time.sleep(1.5)
        return {"statusCode": 200, "body": "late"}
    return {"statusCode": 200, "headers": {"content-type": "application/json"},
            "body": json.dumps(event)}
"""
REQUEST_ID = re.compile(r"^[A-Za-z0-9+/]{14}==$")
TIME = re.compile(r"^\d{2}/[A-Z][a-z]{2}/\d{4}:\d{2}:\d{2}:\d{2} \+0000$")


@pytest.fixture(scope="module")
def gw(kiln_server: KilnServer) -> Any:
    return kiln_server.client("apigatewayv2")


@pytest.fixture(scope="module")
def function_arn(lambda_client: Any) -> str:
    name = create_python_function(lambda_client, SOURCE, Timeout=10)
    return str(lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"])


@pytest.fixture(scope="module")
def http(kiln_server: KilnServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=kiln_server.url, timeout=60) as client:
        yield client


def make_api(gw: Any, function_arn: str, routes: dict[str, dict[str, Any]],
             stage: str = "$default", **stage_args: Any) -> str:
    """An HTTP API with one integration per distinct integration setting, the routes, and an
    auto-deployed stage."""
    api_id: str = gw.create_api(Name="test", ProtocolType="HTTP")["ApiId"]
    integrations: dict[str, str] = {}
    for key, settings in routes.items():
        marker = json.dumps(settings, sort_keys=True)
        if marker not in integrations:
            integrations[marker] = gw.create_integration(
                ApiId=api_id, IntegrationType="AWS_PROXY", IntegrationUri=function_arn,
                PayloadFormatVersion=settings.get("version", "2.0"),
                **({"TimeoutInMillis": settings["timeout"]} if "timeout" in settings else {})
            )["IntegrationId"]
        gw.create_route(ApiId=api_id, RouteKey=key,
                        Target=f"integrations/{integrations[marker]}")
    gw.create_stage(ApiId=api_id, StageName=stage, AutoDeploy=True, **stage_args)
    return api_id


def url(api_id: str, path: str, stage: str | None = None) -> str:
    return f"/_aws/execute-api/{api_id}" + (f"/{stage}" if stage else "") + path


# -- control plane ---------------------------------------------------------------------------

def test_control_plane_round_trip(gw: Any, function_arn: str) -> None:
    created = gw.create_api(Name="crud", ProtocolType="HTTP", Description="d",
                            CorsConfiguration={"AllowOrigins": ["https://a.example"]})
    api_id = created["ApiId"]
    assert re.fullmatch(r"[a-z0-9]{10}", api_id)
    assert created["RouteSelectionExpression"] == "${request.method} ${request.path}"
    assert created["ApiEndpoint"].startswith(f"http://{api_id}.execute-api.localhost:")
    assert gw.get_api(ApiId=api_id)["CorsConfiguration"] == {
        "AllowOrigins": ["https://a.example"]}
    assert api_id in [a["ApiId"] for a in gw.get_apis()["Items"]]
    assert gw.update_api(ApiId=api_id, Name="renamed")["Name"] == "renamed"
    assert gw.get_api(ApiId=api_id)["Description"] == "d"

    integration = gw.create_integration(ApiId=api_id, IntegrationType="AWS_PROXY",
                                        IntegrationUri=function_arn)
    iid = integration["IntegrationId"]
    assert (integration["PayloadFormatVersion"], integration["TimeoutInMillis"]) == \
        ("1.0", 30000)
    updated = gw.update_integration(ApiId=api_id, IntegrationId=iid, TimeoutInMillis=5000,
                                    PayloadFormatVersion="2.0")
    assert (updated["PayloadFormatVersion"], updated["TimeoutInMillis"]) == ("2.0", 5000)
    assert gw.get_integration(ApiId=api_id, IntegrationId=iid)["TimeoutInMillis"] == 5000
    assert [i["IntegrationId"] for i in gw.get_integrations(ApiId=api_id)["Items"]] == [iid]

    route = gw.create_route(ApiId=api_id, RouteKey="GET /items/{id}",
                            Target=f"integrations/{iid}")
    rid = route["RouteId"]
    assert gw.get_route(ApiId=api_id, RouteId=rid)["RouteKey"] == "GET /items/{id}"
    assert gw.update_route(ApiId=api_id, RouteId=rid,
                           RouteKey="ANY /{proxy+}")["RouteKey"] == "ANY /{proxy+}"
    assert [r["RouteKey"] for r in gw.get_routes(ApiId=api_id)["Items"]] == ["ANY /{proxy+}"]

    deployment = gw.create_deployment(ApiId=api_id, Description="first")
    did = deployment["DeploymentId"]
    assert deployment["DeploymentStatus"] == "DEPLOYED"
    stage = gw.create_stage(ApiId=api_id, StageName="prod", DeploymentId=did,
                            StageVariables={"env": "prod"})
    assert (stage["DeploymentId"], stage["StageVariables"]) == (did, {"env": "prod"})
    assert gw.update_stage(ApiId=api_id, StageName="prod",
                           StageVariables={"env": "p2"})["StageVariables"] == {"env": "p2"}
    assert [s["StageName"] for s in gw.get_stages(ApiId=api_id)["Items"]] == ["prod"]
    assert gw.get_stage(ApiId=api_id, StageName="prod")["StageVariables"] == {"env": "p2"}
    assert gw.update_deployment(ApiId=api_id, DeploymentId=did,
                                Description="renamed")["Description"] == "renamed"
    assert gw.get_deployment(ApiId=api_id, DeploymentId=did)["Description"] == "renamed"
    assert [d["DeploymentId"] for d in gw.get_deployments(ApiId=api_id)["Items"]] == [did]
    other = gw.create_api(Name="other", ProtocolType="HTTP")["ApiId"]
    first = gw.get_apis(MaxResults="1")
    second = gw.get_apis(MaxResults="1", NextToken=first["NextToken"])
    assert len(first["Items"]) == len(second["Items"]) == 1
    assert first["Items"][0]["ApiId"] != second["Items"][0]["ApiId"]
    gw.delete_api(ApiId=other)

    expect_error(gw, "BadRequestException", 400, gw.delete_deployment, ApiId=api_id,
                 DeploymentId=did)  # the prod stage still serves it
    expect_error(gw, "ConflictException", 409, gw.delete_integration, ApiId=api_id,
                 IntegrationId=iid)  # the route still targets it
    gw.delete_stage(ApiId=api_id, StageName="prod")
    gw.delete_deployment(ApiId=api_id, DeploymentId=did)
    gw.delete_route(ApiId=api_id, RouteId=rid)
    gw.delete_integration(ApiId=api_id, IntegrationId=iid)
    assert gw.get_routes(ApiId=api_id)["Items"] == []
    gw.delete_api(ApiId=api_id)
    expect_error(gw, "NotFoundException", 404, gw.get_api, ApiId=api_id)


def test_control_plane_errors(gw: Any, function_arn: str) -> None:
    missing = "zzzzzzzzzz"
    for call, kwargs in [
        (gw.get_api, {}), (gw.delete_api, {}), (gw.update_api, {"Name": "x"}),
        (gw.get_routes, {}), (gw.get_route, {"RouteId": "nope"}),
        (gw.create_route, {"RouteKey": "GET /"}),
        (gw.get_integration, {"IntegrationId": "nope"}),
        (gw.get_stage, {"StageName": "nope"}), (gw.get_deployment, {"DeploymentId": "n"}),
    ]:
        expect_error(gw, "NotFoundException", 404, call, ApiId=missing, **kwargs)
    expect_error(gw, "BadRequestException", 400, gw.create_api, Name="x", ProtocolType="REST")
    expect_error(gw, "BadRequestException", 400, gw.create_api, Name="x",
                 ProtocolType="WEBSOCKET")  # no RouteSelectionExpression
    expect_error(gw, "BadRequestException", 400, gw.create_api, Name="x",
                 ProtocolType="HTTP", Target="not-an-arn")
    expect_error(gw, "BadRequestException", 400, gw.create_api, Name="x",
                 ProtocolType="HTTP", CorsConfiguration={"AllowOrigins": ["*"],
                                                         "AllowCredentials": True})

    api_id = gw.create_api(Name="errors", ProtocolType="HTTP")["ApiId"]
    iid = gw.create_integration(ApiId=api_id, IntegrationType="AWS_PROXY",
                                IntegrationUri=function_arn)["IntegrationId"]
    for key in ("GET items", "FETCH /items", "GET /{proxy+}/x", "GET /a//b", "$connect"):
        expect_error(gw, "BadRequestException", 400, gw.create_route, ApiId=api_id,
                     RouteKey=key)
    gw.create_route(ApiId=api_id, RouteKey="GET /items/{id}")
    expect_error(gw, "ConflictException", 409, gw.create_route, ApiId=api_id,
                 RouteKey="GET /items/{id}")
    expect_error(gw, "NotFoundException", 404, gw.create_route, ApiId=api_id,
                 RouteKey="GET /x", Target="integrations/nope")
    for bad in ({"PayloadFormatVersion": "3.0"}, {"TimeoutInMillis": 30001},
                {"IntegrationType": "HTTP_PROXY"}):
        expect_error(gw, "BadRequestException", 400, gw.update_integration, ApiId=api_id,
                     IntegrationId=iid, **bad)
    gw.create_stage(ApiId=api_id, StageName="live", AutoDeploy=True)
    expect_error(gw, "ConflictException", 409, gw.create_stage, ApiId=api_id,
                 StageName="live")
    expect_error(gw, "BadRequestException", 400, gw.create_stage, ApiId=api_id,
                 StageName="bad name")
    expect_error(gw, "BadRequestException", 400, gw.create_stage, ApiId=api_id,
                 StageName="vars", StageVariables={"bad-name": "v"})
    expect_error(gw, "BadRequestException", 400, gw.create_deployment, ApiId=api_id,
                 StageName="live")  # AutoDeploy stages deploy themselves
    expect_error(gw, "NotFoundException", 404, gw.create_deployment, ApiId=api_id,
                 StageName="nope")
    # A rejected request changed nothing.
    assert [r["RouteKey"] for r in gw.get_routes(ApiId=api_id)["Items"]] == ["GET /items/{id}"]
    assert [s["StageName"] for s in gw.get_stages(ApiId=api_id)["Items"]] == ["live"]

    ws = gw.create_api(Name="ws", ProtocolType="WEBSOCKET",
                       RouteSelectionExpression="$request.body.action")
    assert ws["ApiEndpoint"].startswith("ws://")
    for key in ("$connect", "$disconnect", "$default", "sendmessage"):
        gw.create_route(ApiId=ws["ApiId"], RouteKey=key)
    expect_error(gw, "BadRequestException", 400, gw.create_route, ApiId=ws["ApiId"],
                 RouteKey="$custom")
    expect_error(gw, "BadRequestException", 400, gw.create_integration, ApiId=ws["ApiId"],
                 IntegrationType="AWS_PROXY", IntegrationUri=function_arn,
                 PayloadFormatVersion="2.0")
    expect_error(gw, "BadRequestException", 400, gw.create_stage, ApiId=ws["ApiId"],
                 StageName="$default")


# -- data plane ------------------------------------------------------------------------------

def test_quick_create_by_prefix_and_host(gw: Any, function_arn: str, http: httpx.Client,
                                         kiln_server: KilnServer) -> None:
    api = gw.create_api(Name="quick", ProtocolType="HTTP", Target=function_arn)
    api_id = api["ApiId"]
    assert [r["RouteKey"] for r in gw.get_routes(ApiId=api_id)["Items"]] == ["$default"]
    assert gw.get_stage(ApiId=api_id, StageName="$default")["AutoDeploy"] is True
    by_prefix = http.get(url(api_id, "/some/where"))
    by_host = http.get("/some/where",
                       headers={"Host": f"{api_id}.execute-api.localhost:{kiln_server.port}"})
    for response in (by_prefix, by_host):
        assert response.status_code == 200
        event = response.json()
        assert (event["routeKey"], event["rawPath"]) == ("$default", "/some/where")
        assert event["requestContext"]["stage"] == "$default"
    routes = gw.get_routes(ApiId=api_id)["Items"]
    assert routes[0]["ApiGatewayManaged"] is True
    gw.update_api(ApiId=api_id, RouteKey="GET /moved/{proxy+}")
    assert http.get(url(api_id, "/some/where")).status_code == 404
    moved = http.get(url(api_id, "/moved/here")).json()
    assert (moved["routeKey"], moved["pathParameters"]) == ("GET /moved/{proxy+}",
                                                             {"proxy": "here"})
    expect_error(gw, "BadRequestException", 400, gw.update_api, ApiId=api_id,
                 Target="not-an-arn")
    plain = gw.create_api(Name="plain", ProtocolType="HTTP")["ApiId"]
    expect_error(gw, "BadRequestException", 400, gw.update_api, ApiId=plain,
                 Target=function_arn)  # not made by quick create
    gw.update_api(ApiId=api_id, DisableExecuteApiEndpoint=True)
    disabled = http.get(url(api_id, "/some/where"))
    assert (disabled.status_code, disabled.json()) == (403, {"message": "Forbidden"})


def test_payload_2_0_event(gw: Any, function_arn: str, http: httpx.Client,
                           kiln_server: KilnServer) -> None:
    api_id = make_api(gw, function_arn, {"POST /items/{id}": {}}, stage="prod",
                      StageVariables={"env": "test"})
    body = b'{"k": "v"}'
    response = http.post(
        url(api_id, "/items/4%202?b=2&a=1&a=3&sp=x%20y", "prod"), content=body,
        headers=[("Content-Type", "application/json"), ("X-Multi", "one"),
                 ("X-Multi", "two"), ("Cookie", "c1=v1; c2=v2")])
    assert response.status_code == 200, response.text
    event = response.json()
    sent = response.request.headers
    expected_headers: dict[str, str] = {}
    forwarded = [("x-forwarded-for", "127.0.0.1"), ("x-forwarded-port", str(kiln_server.port)),
                 ("x-forwarded-proto", "http")]
    for name, value in [*sent.multi_items(), *forwarded]:
        if name.lower() != "cookie":
            key = name.lower()
            expected_headers[key] = f"{expected_headers[key]},{value}" \
                if key in expected_headers else value
    assert list(event) == ["version", "routeKey", "rawPath", "rawQueryString", "cookies",
                           "headers", "queryStringParameters", "requestContext",
                           "pathParameters", "stageVariables", "body", "isBase64Encoded"]
    assert event["version"] == "2.0"
    assert event["routeKey"] == "POST /items/{id}"
    assert event["rawPath"] == "/prod/items/4%202"
    assert event["rawQueryString"] == "b=2&a=1&a=3&sp=x%20y"
    assert event["cookies"] == ["c1=v1", "c2=v2"]
    assert event["headers"] == expected_headers
    assert event["headers"]["x-multi"] == "one,two"
    assert event["queryStringParameters"] == {"b": "2", "a": "1,3", "sp": "x y"}
    assert event["pathParameters"] == {"id": "4 2"}
    assert event["stageVariables"] == {"env": "test"}
    assert (event["body"], event["isBase64Encoded"]) == (body.decode(), False)
    context = event["requestContext"]
    assert list(context) == ["accountId", "apiId", "domainName", "domainPrefix", "http",
                             "requestId", "routeKey", "stage", "time", "timeEpoch"]
    assert context["accountId"] == "000000000000"
    assert (context["apiId"], context["domainPrefix"]) == (api_id, api_id)
    assert context["domainName"] == f"{api_id}.execute-api.localhost"
    assert context["http"] == {"method": "POST", "path": "/prod/items/4%202",
                               "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1",
                               "userAgent": sent["user-agent"]}
    assert REQUEST_ID.match(context["requestId"])
    assert response.headers["apigw-requestid"] == context["requestId"]
    assert (context["routeKey"], context["stage"]) == ("POST /items/{id}", "prod")
    assert TIME.match(context["time"]) and isinstance(context["timeEpoch"], int)

    # Absent groups are left out, not null.
    bare = http.post(url(api_id, "/items/7", "prod")).json()
    assert list(bare) == ["version", "routeKey", "rawPath", "rawQueryString", "headers",
                          "requestContext", "pathParameters", "stageVariables",
                          "isBase64Encoded"]


def test_payload_1_0_event(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = make_api(gw, function_arn, {"GET /{proxy+}": {"version": "1.0"}})
    response = http.get(url(api_id, "/hello/world?name=me&multi=you&multi=me"),
                        headers=[("X-Multi", "one"), ("X-Multi", "two")])
    assert response.status_code == 200, response.text
    event = response.json()
    sent = response.request.headers
    assert list(event) == ["version", "resource", "path", "httpMethod", "headers",
                           "multiValueHeaders", "queryStringParameters",
                           "multiValueQueryStringParameters", "requestContext",
                           "pathParameters", "stageVariables", "body", "isBase64Encoded"]
    assert (event["version"], event["resource"], event["path"], event["httpMethod"]) == \
        ("1.0", "/{proxy+}", "/hello/world", "GET")
    assert event["headers"]["x-multi"] == "two"
    assert event["multiValueHeaders"]["x-multi"] == ["one", "two"]
    assert event["headers"]["user-agent"] == sent["user-agent"]
    assert set(event["headers"]) == {name.lower() for name in sent} | {
        "x-forwarded-for", "x-forwarded-port", "x-forwarded-proto"}
    assert event["multiValueHeaders"]["x-forwarded-for"] == ["127.0.0.1"]
    assert event["queryStringParameters"] == {"name": "me", "multi": "me"}
    assert event["multiValueQueryStringParameters"] == {"name": ["me"], "multi": ["you", "me"]}
    assert event["pathParameters"] == {"proxy": "hello/world"}
    assert (event["stageVariables"], event["body"], event["isBase64Encoded"]) == \
        (None, None, False)
    context = event["requestContext"]
    assert list(context) == ["accountId", "apiId", "domainName", "domainPrefix",
                             "extendedRequestId", "httpMethod", "identity", "path",
                             "protocol", "requestId", "requestTime", "requestTimeEpoch",
                             "resourceId", "resourcePath", "stage"]
    assert (context["httpMethod"], context["path"], context["resourcePath"],
            context["stage"]) == ("GET", "/hello/world", "/{proxy+}", "$default")
    assert context["resourceId"] == gw.get_routes(ApiId=api_id)["Items"][0]["RouteId"]
    assert context["identity"] == {
        "accessKey": None, "accountId": None, "caller": None,
        "cognitoAuthenticationProvider": None, "cognitoAuthenticationType": None,
        "cognitoIdentityId": None, "cognitoIdentityPoolId": None, "principalOrgId": None,
        "user": None, "userArn": None, "sourceIp": "127.0.0.1",
        "userAgent": sent["user-agent"]}
    assert TIME.match(context["requestTime"])
    assert http.get(url(api_id, "/")).status_code == 404  # /{proxy+} needs a segment


def test_route_matching_order(gw: Any, function_arn: str, http: httpx.Client) -> None:
    keys = ["GET /pets/dog/1", "GET /pets/dog/{id}", "GET /pets/{proxy+}", "ANY /{proxy+}",
            "POST /pets/dog/{id}", "ANY /items/{id}", "GET /items/{id}", "$default"]
    api_id = make_api(gw, function_arn, {key: {} for key in keys})
    cases = [
        ("GET", "/pets/dog/1", "GET /pets/dog/1", None),
        ("GET", "/pets/dog/2", "GET /pets/dog/{id}", {"id": "2"}),
        ("POST", "/pets/dog/2", "POST /pets/dog/{id}", {"id": "2"}),
        ("GET", "/pets/cat/1", "GET /pets/{proxy+}", {"proxy": "cat/1"}),
        ("POST", "/test/5", "ANY /{proxy+}", {"proxy": "test/5"}),
        ("GET", "/items/9", "GET /items/{id}", {"id": "9"}),
        ("DELETE", "/items/9", "ANY /items/{id}", {"id": "9"}),
        ("GET", "/", "$default", None),
    ]
    for method, path, route_key, params in cases:
        event = http.request(method, url(api_id, path)).json()
        assert event["routeKey"] == route_key, (method, path, event["routeKey"])
        assert event.get("pathParameters") == params


def test_not_found(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = make_api(gw, function_arn, {"GET /only": {}}, stage="prod")
    for method, path in [("GET", url(api_id, "/other", "prod")),  # no such route
                         ("POST", url(api_id, "/only", "prod")),  # no route for the method
                         ("GET", url(api_id, "/only")),  # no $default stage
                         ("GET", url("nosuchapi0", "/only", "prod"))]:
        response = http.request(method, path)
        assert response.status_code == 404, (method, path)
        assert response.json() == {"message": "Not Found"}
    assert http.get(url(api_id, "/only", "prod")).status_code == 200
    too_large = http.post(url(api_id, "/only", "prod"), content=b"x" * (10 * 1024 * 1024 + 1))
    assert (too_large.status_code, too_large.json()) == (413,
                                                         {"message": "Request Entity Too Large"})


def test_deployments_snapshot_routes(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = gw.create_api(Name="deploy", ProtocolType="HTTP")["ApiId"]
    iid = gw.create_integration(ApiId=api_id, IntegrationType="AWS_PROXY",
                                IntegrationUri=function_arn,
                                PayloadFormatVersion="2.0")["IntegrationId"]
    gw.create_route(ApiId=api_id, RouteKey="GET /a", Target=f"integrations/{iid}")
    gw.create_stage(ApiId=api_id, StageName="manual")
    assert http.get(url(api_id, "/a", "manual")).status_code == 404  # nothing deployed yet
    gw.create_deployment(ApiId=api_id, StageName="manual")
    assert http.get(url(api_id, "/a", "manual")).status_code == 200
    gw.create_route(ApiId=api_id, RouteKey="GET /b", Target=f"integrations/{iid}")
    assert http.get(url(api_id, "/b", "manual")).status_code == 404  # not deployed
    gw.create_deployment(ApiId=api_id, StageName="manual")
    assert http.get(url(api_id, "/b", "manual")).json()["routeKey"] == "GET /b"


def test_response_mapping(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = make_api(gw, function_arn, {"ANY /v2/{proxy+}": {},
                                         "ANY /v1/{proxy+}": {"version": "1.0"}})
    # 2.0 without statusCode: 200, application/json, the JSON text verbatim.
    for name, text in (("bare-dict", '{"hello": "world"}'), ("bare-string", '"Hello, world!"'),
                       ("bare-list", "[1, 2]")):
        response = http.get(url(api_id, f"/v2/{name}"))
        assert (response.status_code, response.text) == (200, text)
        assert response.headers["content-type"] == "application/json"
    cookies = http.get(url(api_id, "/v2/cookies"))
    assert (cookies.status_code, cookies.text, cookies.headers["x-one"]) == (201, "ok", "1")
    assert cookies.headers.get_list("set-cookie") == ["a=1; Max-Age=60", "b=2"]
    binary = http.get(url(api_id, "/v2/binary"))
    assert binary.content == bytes(range(256))
    assert binary.headers["content-type"] == "application/octet-stream"
    # 1.0: multiValueHeaders replace headers of the same name.
    multi = http.get(url(api_id, "/v1/multi"))
    assert (multi.status_code, multi.text, multi.headers["x-a"]) == (202, "multi", "single")
    assert multi.headers.get_list("x-b") == ["1", "2"]
    assert multi.headers.get_list("set-cookie") == ["a=1", "b=2"]
    # 1.0 has no bare-return rule.
    assert http.get(url(api_id, "/v1/bare-dict")).status_code == 502
    # A binary request body arrives base64-encoded.
    raw = bytes(range(256)) * 4
    event = http.post(url(api_id, "/v2/echo"), content=raw,
                      headers={"content-type": "application/octet-stream"}).json()
    assert event["isBase64Encoded"] is True
    assert base64.b64decode(event["body"]) == raw
    event = http.post(url(api_id, "/v1/echo"), content=raw,
                      headers={"content-type": "image/png"}).json()
    assert (event["isBase64Encoded"], base64.b64decode(event["body"])) == (True, raw)


def test_function_failures(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = make_api(gw, function_arn, {"ANY /{proxy+}": {},
                                         "GET /slow/sleep": {"timeout": 300}})
    for name in ("malformed", "bad-body", "raise"):
        response = http.get(url(api_id, f"/x/{name}"))
        assert response.status_code == 502, name
        assert response.json() == {"message": "Internal Server Error"}
    slow = http.get(url(api_id, "/slow/sleep"))
    assert slow.status_code == 504
    assert slow.json() == {"message": "Endpoint request timed out"}
    # An integration whose function is gone cannot be invoked: 500.
    missing = function_arn.rsplit(":", 1)[0] + ":function:no-such-function-here"
    api2 = gw.create_api(Name="gone", ProtocolType="HTTP", Target=missing)["ApiId"]
    response = http.get(url(api2, "/"))
    assert (response.status_code, response.json()) == (500,
                                                       {"message": "Internal Server Error"})


def test_cors(gw: Any, function_arn: str, http: httpx.Client) -> None:
    api_id = gw.create_api(
        Name="cors", ProtocolType="HTTP", Target=function_arn,
        CorsConfiguration={"AllowOrigins": ["https://app.example"],
                           "AllowMethods": ["GET", "POST"], "AllowHeaders": ["X-Token"],
                           "ExposeHeaders": ["X-Out"], "MaxAge": 600,
                           "AllowCredentials": True})["ApiId"]
    preflight = http.options(url(api_id, "/anything"), headers={
        "Origin": "https://app.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "x-token"})
    assert preflight.status_code == 204
    assert preflight.headers["access-control-allow-origin"] == "https://app.example"
    assert preflight.headers["access-control-allow-methods"] == "GET,POST"
    assert preflight.headers["access-control-allow-headers"] == "x-token"
    assert preflight.headers["access-control-max-age"] == "600"
    assert preflight.headers["access-control-allow-credentials"] == "true"
    refused = http.options(url(api_id, "/anything"), headers={
        "Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in refused.headers
    actual = http.get(url(api_id, "/x"), headers={"Origin": "https://app.example"})
    assert actual.status_code == 200
    assert actual.headers["access-control-allow-origin"] == "https://app.example"
    assert actual.headers["access-control-expose-headers"] == "x-out"
    plain = http.get(url(api_id, "/x"))
    assert "access-control-allow-origin" not in plain.headers
    gw.delete_cors_configuration(ApiId=api_id)
    assert "CorsConfiguration" not in gw.get_api(ApiId=api_id)
    after = http.get(url(api_id, "/x"), headers={"Origin": "https://app.example"})
    assert "access-control-allow-origin" not in after.headers
