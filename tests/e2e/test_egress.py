"""The network opt-in on the default (isolated) backend: a function reaches Kiln's own port only
while tagged ``kiln:egress=allow``; tagging and untagging take effect at the next invoke, for
on-demand and provisioned environments alike."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import KilnServer, create_python_function, wait_for

# Calls Kiln's health endpoint on the port named in the event; answers what it got (or the
# errno name) and which environment it ran in.
APP = """
import errno, json, urllib.request

def handler(event, context):
    url = f"http://127.0.0.1:{event['port']}/kiln/v1/health"
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            health = json.loads(response.read())
    except OSError as exc:
        reason = getattr(exc, "reason", exc)
        health = errno.errorcode.get(getattr(reason, "errno", None) or 0, repr(reason))
    return {"health": health, "stream": context.log_stream_name}
"""
DENIED = {"ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "EPERM"}
ALLOW = {"kiln:egress": "allow"}


def call(server: KilnServer, name: str, qualifier: str = "$LATEST") -> dict[str, Any]:
    response = server.client().invoke(FunctionName=name, Qualifier=qualifier,
                                      Payload=json.dumps({"port": server.port}))
    assert "FunctionError" not in response, response
    result: dict[str, Any] = json.loads(response["Payload"].read())
    return result


def test_tagging_turns_the_network_on_and_off(kiln_server: KilnServer,
                                              lambda_client: Any) -> None:
    name = create_python_function(lambda_client, APP)
    arn = lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    denied = call(kiln_server, name)
    assert denied["health"] in DENIED, denied
    lambda_client.tag_resource(Resource=arn, Tags=ALLOW)
    allowed = call(kiln_server, name)
    assert allowed["health"] == {"status": "ok"}, allowed
    assert allowed["stream"] != denied["stream"]  # a new environment, on the host's network
    lambda_client.tag_resource(Resource=arn, Tags={"team": "kiln"})  # egress unchanged: kept
    assert call(kiln_server, name) == allowed
    lambda_client.untag_resource(Resource=arn, TagKeys=["kiln:egress"])
    again = call(kiln_server, name)
    assert again["health"] in DENIED, again
    lambda_client.tag_resource(Resource=arn, Tags={"kiln:egress": "deny"})  # only allow opens
    assert call(kiln_server, name)["health"] in DENIED


def test_created_with_the_tag(kiln_server: KilnServer, lambda_client: Any) -> None:
    name = create_python_function(lambda_client, APP, Tags=ALLOW)
    assert call(kiln_server, name)["health"] == {"status": "ok"}


def test_provisioned_environments_follow_the_tag(kiln_server: KilnServer,
                                                 lambda_client: Any) -> None:
    name = create_python_function(lambda_client, APP, Publish=True)
    arn = lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionArn"]
    lambda_client.put_provisioned_concurrency_config(
        FunctionName=name, Qualifier="1", ProvisionedConcurrentExecutions=1)

    def ready() -> bool:
        config = lambda_client.get_provisioned_concurrency_config(FunctionName=name,
                                                                  Qualifier="1")
        return bool(config["Status"] == "READY")

    assert wait_for(ready)
    assert call(kiln_server, name, "1")["health"] in DENIED
    lambda_client.tag_resource(Resource=arn, Tags=ALLOW)
    assert wait_for(ready)
    assert call(kiln_server, name, "1")["health"] == {"status": "ok"}
