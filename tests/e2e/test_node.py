"""End to end: nodejs20.x functions on Kiln's Node.js runtime (node_bootstrap.mjs), via boto3."""

from __future__ import annotations

import base64
import json
import shutil
from typing import Any

import pytest

from tests.conftest import ROLE, make_zip, unique_name

if shutil.which("node") is None:
    pytest.skip("node (Node.js) is not installed on this host: nodejs20.x cannot run",
                allow_module_level=True)

RUNTIME = "nodejs20.x"


def create(client: Any, files: dict[str, str], handler: str = "app.handler",
           **kwargs: Any) -> str:
    name = unique_name("node")
    client.create_function(FunctionName=name, Runtime=RUNTIME, Role=ROLE, Handler=handler,
                           Code={"ZipFile": make_zip(files)}, **kwargs)
    return name


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[Any, Any, str]:
    """(parsed result, response, decoded log tail)."""
    response = client.invoke(FunctionName=name, LogType="Tail",
                             Payload=json.dumps({} if payload is None else payload), **kwargs)
    body = json.loads(response["Payload"].read())
    return body, response, base64.b64decode(response["LogResult"]).decode()


def request_id(response: Any) -> str:
    return str(response["ResponseMetadata"]["HTTPHeaders"]["x-amzn-requestid"])


def test_async_esm_handler_success_and_warm_state(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.mjs": """
let calls = 0;
export const handler = async (event) => {
  calls += 1;
  console.log("hello", event.who, "\\nsecond line");
  console.warn("careful");
  return { greeting: `hi ${event.who}`, calls };
};
"""})
    body, response, log = invoke(lambda_client, name, {"who": "kiln"})
    assert "FunctionError" not in response
    assert body == {"greeting": "hi kiln", "calls": 1}
    rid = request_id(response)
    lines = log.split("\n")  # not splitlines(): that would split at \r too
    info = next(line for line in lines if "\tINFO\t" in line)
    timestamp, logged_id, level, message = info.split("\t", 3)
    assert timestamp.endswith("Z") and "T" in timestamp
    assert (logged_id, level) == (rid, "INFO")
    assert message == "hello kiln \rsecond line"  # one console.log is one log event
    assert f"\t{rid}\tWARN\tcareful" in log
    body, _, _ = invoke(lambda_client, name, {"who": "again"})
    assert body == {"greeting": "hi again", "calls": 2}  # the same, warm environment


def test_callback_handler_commonjs(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.js": """
exports.handler = (event, context, callback) => {
  setTimeout(() => console.log("timer ran before the response"), 20);
  callback(null, { doubled: event.n * 2 });
};
"""})
    body, _, log = invoke(lambda_client, name, {"n": 21})
    assert body == {"doubled": 42}
    # callbackWaitsForEmptyEventLoop (default true): the response waited for the timer.
    assert "timer ran before the response" in log


def test_callback_without_waiting_for_the_event_loop(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.cjs": """
exports.handler = function (event, context, callback) {
  context.callbackWaitsForEmptyEventLoop = false;
  setTimeout(() => {}, 600000);  // would hold the response for 10 minutes if waited for
  callback(null, "early");
};
"""}, Timeout=30)
    body, response, _ = invoke(lambda_client, name)
    assert "FunctionError" not in response
    assert body == "early"


def test_nested_module_path_and_nested_export(lambda_client: Any) -> None:
    name = create(lambda_client, {"src/handlers/api.js": """
module.exports = { routes: { get: async (event) => ({ path: event.path }) } };
"""}, handler="src/handlers/api.routes.get")
    body, response, _ = invoke(lambda_client, name, {"path": "/x"})
    assert "FunctionError" not in response
    assert body == {"path": "/x"}


def test_handler_error(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.mjs": """
export const handler = async () => {
  const error = new TypeError("bad input");
  throw error;
};
"""})
    body, response, log = invoke(lambda_client, name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "TypeError"
    assert body["errorMessage"] == "bad input"
    assert isinstance(body["trace"], list)
    assert body["trace"][0] == "TypeError: bad input"
    assert any("app.mjs" in line for line in body["trace"])
    assert not any("node_bootstrap" in line for line in body["trace"])
    assert f"\t{request_id(response)}\tERROR\tInvoke Error \t" in log


def test_callback_error_and_non_error_values(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.js": """
exports.handler = (event, context, callback) => {
  if (event.kind === "string") return callback("plain string");
  callback(new RangeError("out of range"));
};
"""})
    body, response, _ = invoke(lambda_client, name)
    assert response["FunctionError"] == "Unhandled"
    assert (body["errorType"], body["errorMessage"]) == ("RangeError", "out of range")
    body, response, _ = invoke(lambda_client, name, {"kind": "string"})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "string", "errorMessage": "plain string", "trace": []}


def test_uncaught_exception_fails_the_invocation(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.js": """
exports.handler = async () => {
  setTimeout(() => { throw new Error("thrown from a timer"); }, 1);
  return new Promise(() => {});
};
"""})
    body, response, log = invoke(lambda_client, name)
    assert response["FunctionError"] == "Unhandled"
    assert (body["errorType"], body["errorMessage"]) == ("Error", "thrown from a timer")
    assert "Uncaught Exception" in log


@pytest.mark.parametrize(("files", "handler", "error_type", "message"), [
    ({"other.mjs": "export const handler = 1;"}, "app.handler", "Runtime.ImportModuleError",
     "Error: Cannot find module 'app'"),
    ({"app.mjs": "export const other = async () => 1;"}, "app.handler",
     "Runtime.HandlerNotFound", "app.handler is undefined or not exported"),
    ({"app.mjs": "export const handler = 42;"}, "app.handler", "Runtime.HandlerNotFound",
     "app.handler is not a function"),
    ({"app.mjs": "export const handler = async () => { return 1"}, "app.handler",
     "Runtime.UserCodeSyntaxError", "SyntaxError: "),
    ({"app.mjs": "import missing from 'no-such-package';\nexport const handler = missing;"},
     "app.handler", "Runtime.ImportModuleError", "no-such-package"),
    ({"app.mjs": "export const handler = async () => 1;"}, "app", "Runtime.MalformedHandlerName",
     "Bad handler"),
])
def test_init_errors(lambda_client: Any, files: dict[str, str], handler: str, error_type: str,
                     message: str) -> None:
    name = create(lambda_client, files, handler=handler)
    body, response, _ = invoke(lambda_client, name)
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == error_type
    assert message in body["errorMessage"]
    assert body["trace"][0].startswith(f"{error_type}: ")


def test_error_thrown_while_loading_the_module(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.mjs": "throw new Error('cannot start');\n"})
    body, response, _ = invoke(lambda_client, name)
    assert response["FunctionError"] == "Unhandled"
    assert (body["errorType"], body["errorMessage"]) == ("Error", "cannot start")


def test_context_object(lambda_client: Any) -> None:
    name = create(lambda_client, {"index.mjs": """
export const handler = async (event, context) => ({
  functionName: context.functionName,
  functionVersion: context.functionVersion,
  invokedFunctionArn: context.invokedFunctionArn,
  memoryLimitInMB: context.memoryLimitInMB,
  awsRequestId: context.awsRequestId,
  logGroupName: context.logGroupName,
  logStreamName: context.logStreamName,
  remaining: context.getRemainingTimeInMillis(),
  clientContext: context.clientContext,
  identity: context.identity ?? null,
  waits: context.callbackWaitsForEmptyEventLoop,
  traceId: process.env._X_AMZN_TRACE_ID,
});
"""}, handler="index.handler", MemorySize=256, Timeout=7)
    client_context = {"client": {"installation_id": "i-1"}, "custom": {"k": "v"}, "env": {}}
    encoded = base64.b64encode(json.dumps(client_context).encode()).decode()
    body, response, _ = invoke(lambda_client, name, ClientContext=encoded)
    assert "FunctionError" not in response
    assert body["functionName"] == name
    assert body["functionVersion"] == "$LATEST"
    assert body["invokedFunctionArn"] == (
        lambda_client.get_function_configuration(FunctionName=name)["FunctionArn"])
    assert body["memoryLimitInMB"] == "256"
    assert body["awsRequestId"] == request_id(response)
    assert body["logGroupName"] == f"/aws/lambda/{name}"
    assert "[$LATEST]" in body["logStreamName"]
    assert 0 < body["remaining"] <= 7000
    assert body["clientContext"] == client_context
    assert body["identity"] is None
    assert body["waits"] is True
    assert body["traceId"].startswith("Root=1-")


def test_json_log_format(lambda_client: Any) -> None:
    name = create(lambda_client, {"app.mjs": """
export const handler = async () => { console.info("shown", 1); console.error("bad"); return 1; };
"""}, LoggingConfig={"LogFormat": "JSON"})
    _, response, log = invoke(lambda_client, name)
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert [(r["level"], r["message"]) for r in records] == [("INFO", "shown 1"),
                                                             ("ERROR", "bad")]
    assert records[0]["requestId"] == request_id(response)
    assert records[0]["timestamp"].endswith("Z")
