"""Runtimes over the Runtime API, end to end: Kiln's Python runtime and its init errors,
timeouts and crashes, and ``provided.al2023`` functions driven by real third-party clients
(PyPI awslambdaric, and a curl shell-script bootstrap in the style of AWS's tutorial)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import sys
from typing import Any

import pytest

from tests.conftest import (
    ROLE,
    create_python_function,
    environment_gone,
    environment_pids,
    make_zip,
    unique_name,
    wait_for,
)

ARN_PREFIX = "arn:aws:lambda:us-east-1:000000000000:function:"
CURL = shutil.which("curl")


def invoke(client: Any, name: str, payload: Any = None, **kwargs: Any) -> tuple[dict[str, Any],
                                                                                 Any]:
    if payload is not None:
        kwargs["Payload"] = json.dumps(payload).encode()
    response = client.invoke(FunctionName=name, **kwargs)
    raw = response["Payload"].read()
    try:
        return response, json.loads(raw) if raw else None
    except ValueError:
        return response, raw


def request_id(response: dict[str, Any]) -> str:
    return str(response["ResponseMetadata"]["RequestId"])


def create_provided(client: Any, files: dict[str, str | bytes], handler: str = "app.handler",
                    executable: tuple[str, ...] = ("bootstrap",), **kwargs: Any) -> str:
    name = unique_name("prov")
    client.create_function(
        FunctionName=name, Runtime=kwargs.pop("Runtime", "provided.al2023"), Role=ROLE,
        Handler=handler, Code={"ZipFile": make_zip(files, executable=executable)}, **kwargs)
    return name


# -- Kiln's Python runtime: init errors ---------------------------------------------------------

@pytest.mark.parametrize(("handler", "source", "error_type", "message"), [
    ("missing.handler", "x = 1\n", "Runtime.ImportModuleError",
     "Unable to import module 'missing': No module named 'missing'"),
    ("app.nope", "def handler(event, context):\n    return 1\n", "Runtime.HandlerNotFound",
     "Handler 'nope' missing on module 'app'"),
    ("app.handler", "def handler(event, context:\n    return 1\n",
     "Runtime.UserCodeSyntaxError", "Syntax error in module 'app': "),
    ("app", "def handler(event, context):\n    return 1\n", "Runtime.MalformedHandlerName",
     "Bad handler 'app': not enough values to unpack (expected 2, got 1)"),
    ("app.handler", "import no_such_dependency\n", "Runtime.ImportModuleError",
     "Unable to import module 'app': No module named 'no_such_dependency'"),
])
def test_python_init_errors(lambda_client: Any, handler: str, source: str, error_type: str,
                            message: str) -> None:
    name = create_python_function(lambda_client, source, handler=handler)
    response, body = invoke(lambda_client, name, {}, LogType="Tail")
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == error_type
    assert body["errorMessage"].startswith(message), body["errorMessage"]
    assert isinstance(body.get("stackTrace", []), list)
    log = base64.b64decode(response["LogResult"]).decode()
    # A failed INIT's output (the runtime's own error line) is part of the tail.
    assert f"[ERROR] {error_type}: {message}" in log
    assert log.splitlines()[-1].startswith(f"REPORT RequestId: {request_id(response)}\t")
    # Every later invoke tries INIT again (and fails the same way); the server keeps serving.
    again, body = invoke(lambda_client, name, {})
    assert again["FunctionError"] == "Unhandled" and body["errorType"] == error_type


def test_exception_during_import_names_the_exception(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, "raise KeyError('cfg')\n")
    response, body = invoke(lambda_client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "KeyError"
    assert body["errorMessage"] == "'cfg'"


def test_syntax_error_stack_names_the_line(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, "x = 1\n\ndef handler(:\n    pass\n")
    _, body = invoke(lambda_client, name, {})
    assert body["errorType"] == "Runtime.UserCodeSyntaxError"
    assert "line 3" in body["errorMessage"]


@pytest.mark.parametrize("handler", ["pkg.sub.mod.fn", "pkg/sub/mod.fn"])
def test_nested_handler_splits_at_the_last_dot(lambda_client: Any, handler: str) -> None:
    name = unique_name()
    files = {"pkg/__init__.py": "", "pkg/sub/__init__.py": "",
             "pkg/sub/mod.py": "def fn(event, context):\n    return __name__\n"}
    lambda_client.create_function(FunctionName=name, Runtime="python3.11", Role=ROLE,
                                  Handler=handler, Code={"ZipFile": make_zip(files)})
    response, body = invoke(lambda_client, name, {})
    assert "FunctionError" not in response, body
    assert body == "pkg.sub.mod"


def test_logging_module_output_format(lambda_client: Any) -> None:
    source = """
import logging

logger = logging.getLogger()

def handler(event, context):
    logger.info("not shown at the default level")
    logger.warning("careful: %s", event["what"])
    logger.setLevel(logging.INFO)
    logger.info("two\\nlines")
    logger.setLevel(logging.WARNING)
"""
    name = create_python_function(lambda_client, source)
    response, _ = invoke(lambda_client, name, {"what": "x"}, LogType="Tail")
    log = base64.b64decode(response["LogResult"]).decode()
    rid = request_id(response)
    assert re.search(r"^\[WARNING\]\t\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\t"
                     + re.escape(rid) + r"\tcareful: x$", log, re.MULTILINE), log
    assert "[INFO]\t" in log and f"\t{rid}\ttwo\rlines" in log  # one event per record
    assert "not shown" not in log


# -- timeouts and crashes -------------------------------------------------------------------------

MISBEHAVING = """
import os, signal, subprocess, time

def handler(event, context):
    action = event.get("action")
    if action == "spawn":
        subprocess.Popen(["sleep", "300"])
    if action == "sleep":
        print("about to sleep")
        time.sleep(30)
    if action == "exit":
        os._exit(3)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    return {"env": context.log_stream_name}
"""


def test_timeout_is_sandbox_timedout_and_next_invoke_works(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, MISBEHAVING, Timeout=1)
    _, body = invoke(lambda_client, name, {"action": "spawn"})
    first = body["env"]
    # The runtime and the process it started (waited for, as in test_shutdown).
    assert wait_for(lambda: len(environment_pids(first)) == 2, timeout=10)
    response, body = invoke(lambda_client, name, {"action": "sleep"}, LogType="Tail")
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body == {
        "errorType": "Sandbox.Timedout",
        "errorMessage": f"RequestId: {request_id(response)} Error: Task timed out after "
                        "1.00 seconds",
    }
    log = base64.b64decode(response["LogResult"]).decode()
    assert "Task timed out after 1.00 seconds" in log
    assert "about to sleep" in log  # output written before the timeout is kept
    assert log.splitlines()[-1].endswith("\tStatus: timeout\t")
    # Killed: the runtime and the process the function started.
    assert wait_for(lambda: environment_gone(first), 10), "the timed-out environment lives on"
    # The next invoke gets a new environment and works.
    response, body = invoke(lambda_client, name, {})
    assert "FunctionError" not in response
    assert body["env"] != first


def test_crash_is_runtime_exit_error(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, MISBEHAVING)
    _, body = invoke(lambda_client, name, {})
    first = body["env"]
    response, body = invoke(lambda_client, name, {"action": "exit"}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body == {
        "errorType": "Runtime.ExitError",
        "errorMessage": f"RequestId: {request_id(response)} Error: Runtime exited with error: "
                        "exit status 3",
    }
    log = base64.b64decode(response["LogResult"]).decode()
    assert "Runtime exited with error: exit status 3" in log
    assert log.splitlines()[-1].endswith("\tStatus: error\tError Type: Runtime.ExitError\t")
    response, body = invoke(lambda_client, name, {})
    assert "FunctionError" not in response and body["env"] != first


def test_kill_by_signal_is_runtime_exit_error(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, MISBEHAVING)
    response, body = invoke(lambda_client, name, {"action": "kill"})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"] == (f"RequestId: {request_id(response)} Error: Runtime exited "
                                    "with error: signal: killed")
    response, body = invoke(lambda_client, name, {})
    assert "FunctionError" not in response and environment_pids(body["env"])


def test_crash_during_init(lambda_client: Any) -> None:
    name = create_python_function(lambda_client, "import os\nos._exit(2)\n")
    response, body = invoke(lambda_client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"] == (f"RequestId: {request_id(response)} Error: Runtime exited "
                                    "with error: exit status 2")


# -- environment variables -------------------------------------------------------------------------

DUMP_ENV_PY = """
import os

def handler(event, context):
    return dict(os.environ)
"""


def check_standard_environment(env: dict[str, str], name: str, handler: str,
                               memory: int) -> None:
    assert env["_HANDLER"] == handler
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == name
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "$LATEST"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == str(memory)
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{name}"
    assert re.fullmatch(r"\d{4}/\d{2}/\d{2}/\[\$LATEST\][0-9a-f]{32}",
                        env["AWS_LAMBDA_LOG_STREAM_NAME"])
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["TZ"] in (":UTC", "UTC")
    assert env["LANG"] == "en_US.UTF-8"
    assert "/usr/bin" in env["PATH"].split(":") or "/usr/bin/" in env["PATH"].split(":")
    # As on Lambda, whatever the host's path of the code: the sandbox shows it there.
    assert env["LAMBDA_TASK_ROOT"] == "/var/task"
    assert "/var/task" in env["LD_LIBRARY_PATH"].split(":")
    assert re.fullmatch(r"127\.0\.0\.1:\d+", env["AWS_LAMBDA_RUNTIME_API"])
    assert env["AWS_LAMBDA_INITIALIZATION_TYPE"] == "on-demand"
    assert env["AWS_ACCESS_KEY_ID"] and env["AWS_SECRET_ACCESS_KEY"]
    # The server's own environment does not leak into the function's.
    assert "KILN_KEEP_ALIVE_SECONDS" not in env


def test_python_environment_variables(lambda_client: Any) -> None:
    name = create_python_function(
        lambda_client, DUMP_ENV_PY, MemorySize=320,
        Environment={"Variables": {"MY_SETTING": "on", "LANG": "C.UTF-8"}})
    _, env = invoke(lambda_client, name, {})
    check_standard_environment({**env, "LANG": "en_US.UTF-8"}, name, "app.handler", 320)
    assert env["AWS_EXECUTION_ENV"] == "AWS_Lambda_python3.11"
    assert env["MY_SETTING"] == "on"
    assert env["LANG"] == "C.UTF-8"  # LANG is not reserved: the user's value wins
    assert os.getcwd() != env["LAMBDA_TASK_ROOT"]
    assert env["_X_AMZN_TRACE_ID"].startswith("Root=1-")


def test_python_code_is_read_only_and_cwd_is_task_root(lambda_client: Any) -> None:
    source = """
import os

def handler(event, context):
    try:
        open(os.path.join(os.environ["LAMBDA_TASK_ROOT"], "new.txt"), "w").close()
        writable = True
    except OSError:
        writable = False
    return {"cwd": os.getcwd(), "root": os.environ["LAMBDA_TASK_ROOT"], "writable": writable}
"""
    name = create_python_function(lambda_client, source)
    _, body = invoke(lambda_client, name, {})
    assert body["cwd"] == body["root"] == "/var/task"
    assert body["writable"] is False


# -- provided.al2023 with awslambdaric (PyPI) ------------------------------------------------------

RIC_BOOTSTRAP = f"""#!/bin/sh
cd "$LAMBDA_TASK_ROOT"
export PYTHONPATH="$LAMBDA_TASK_ROOT"
exec {sys.executable} -m awslambdaric "$_HANDLER"
"""

RIC_APP = """
import os

def handler(event, context):
    if event.get("fail"):
        raise RuntimeError("ric failure")
    print("hello from awslambdaric")
    return {
        "event": event,
        "request_id": context.aws_request_id,
        "arn": context.invoked_function_arn,
        "remaining": context.get_remaining_time_in_millis(),
        "memory": context.memory_limit_in_mb,
        "env": context.log_stream_name,
        "execution_env": os.environ.get("AWS_EXECUTION_ENV"),
    }
"""


def test_awslambdaric_success_error_and_warm_reuse(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"bootstrap": RIC_BOOTSTRAP, "app.py": RIC_APP},
                           Timeout=10)
    response, body = invoke(lambda_client, name, {"x": [1, 2]}, LogType="Tail")
    assert response["StatusCode"] == 200 and "FunctionError" not in response, body
    assert body["event"] == {"x": [1, 2]}
    assert body["request_id"] == request_id(response)
    assert body["arn"] == ARN_PREFIX + name
    assert 0 < body["remaining"] <= 10_000
    assert body["memory"] == "128"
    log = base64.b64decode(response["LogResult"]).decode()
    assert "hello from awslambdaric" in log
    assert "Init Duration" in log.splitlines()[-1]

    response, error = invoke(lambda_client, name, {"fail": True})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert error["errorType"] == "RuntimeError"
    assert error["errorMessage"] == "ric failure"
    assert error["requestId"] == request_id(response)
    assert any("app.py" in frame for frame in error["stackTrace"])

    # awslambdaric's process survives a function error and serves the next invoke warm.
    response, again = invoke(lambda_client, name, {"x": 3})
    assert "FunctionError" not in response and again["env"] == body["env"]


def test_awslambdaric_init_error(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"bootstrap": RIC_BOOTSTRAP, "app.py": RIC_APP},
                           handler="missing.handler")
    response, body = invoke(lambda_client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ImportModuleError"
    assert "Unable to import module 'missing'" in body["errorMessage"]


# -- provided.al2023 with a shell-script bootstrap (AWS custom-runtime tutorial style) ------------

SHELL_BOOTSTRAP = """#!/bin/bash
set -euo pipefail

# Initialization - load the function handler
source "$LAMBDA_TASK_ROOT/$(echo "$_HANDLER" | cut -d. -f1).sh"

# Processing
while true
do
  HEADERS="$(mktemp)"
  # Get an event. The HTTP request will block until one is received
  EVENT_DATA=$(curl -sS -LD "$HEADERS" "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/next")

  # Extract request ID by scraping response headers received above
  REQUEST_ID=$(grep -Fi Lambda-Runtime-Aws-Request-Id "$HEADERS" | tr -d '[:space:]' | cut -d: -f2)
  rm -f "$HEADERS"

  # Run the handler function from the script
  if RESPONSE=$($(echo "$_HANDLER" | cut -d. -f2) "$EVENT_DATA"); then
    # Send the response
    curl -sS --data-binary "$RESPONSE" \\
      "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/response" \\
      > /dev/null
  else
    curl -sS "http://${AWS_LAMBDA_RUNTIME_API}/2018-06-01/runtime/invocation/$REQUEST_ID/error" \\
      -H "Lambda-Runtime-Function-Error-Type: Function.ShellError" \\
      --data-binary "{\\"errorMessage\\":\\"handler failed\\",\\"errorType\\":\\"ShellError\\"}" \\
      > /dev/null
  fi
done
"""

SHELL_FUNCTION = """
function handler () {
  EVENT_DATA=$1
  echo "$EVENT_DATA" 1>&2
  case "$EVENT_DATA" in
    *fail*) return 1 ;;
    *env*) printf '{"env":"%s","pid":%s}' "$(env | base64 -w0)" "$$" ;;
    *) echo "Echoing request: '$EVENT_DATA' pid $$" ;;
  esac
}
"""


@pytest.mark.skipif(CURL is None, reason="curl is not installed")
def test_shell_bootstrap_success_error_and_environment(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"bootstrap": SHELL_BOOTSTRAP,
                                           "function.sh": SHELL_FUNCTION},
                           handler="function.handler", MemorySize=512)
    response, body = invoke(lambda_client, name, {"msg": "hi"}, LogType="Tail")
    assert response["StatusCode"] == 200 and "FunctionError" not in response, body
    assert body.startswith(b"""Echoing request: '{"msg": "hi"}' pid """)
    log = base64.b64decode(response["LogResult"]).decode()
    assert '{"msg": "hi"}' in log  # the handler's stderr is part of the invocation's log

    response, body = invoke(lambda_client, name, {"fail": 1})
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorMessage": "handler failed", "errorType": "ShellError"}

    response, body = invoke(lambda_client, name, {"env": 1})
    assert "FunctionError" not in response
    env = dict(line.split("=", 1) for line in
               base64.b64decode(body["env"]).decode().splitlines() if "=" in line)
    check_standard_environment(env, name, "function.handler", 512)
    assert "AWS_EXECUTION_ENV" not in env  # unset for provided runtimes


def test_missing_bootstrap_is_invalid_entrypoint(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"app.sh": "echo hi\n"}, executable=())
    response, body = invoke(lambda_client, name, {})
    assert response["StatusCode"] == 200
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.InvalidEntrypoint"
    assert body["errorMessage"].startswith(f"RequestId: {request_id(response)} Error: ")
    assert "bootstrap" in body["errorMessage"]
    # The server keeps serving after it.
    assert lambda_client.get_function(FunctionName=name)["Configuration"]["FunctionName"] == name


def test_non_executable_bootstrap_is_invalid_entrypoint(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"bootstrap": "#!/bin/sh\nexit 0\n"}, executable=())
    response, body = invoke(lambda_client, name, {})
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.InvalidEntrypoint"
    assert "permission denied" in body["errorMessage"]


def test_bootstrap_that_exits_during_init(lambda_client: Any) -> None:
    name = create_provided(lambda_client, {"bootstrap": "#!/bin/sh\necho starting\nexit 7\n"})
    response, body = invoke(lambda_client, name, {}, LogType="Tail")
    assert response["FunctionError"] == "Unhandled"
    assert body["errorType"] == "Runtime.ExitError"
    assert body["errorMessage"] == (f"RequestId: {request_id(response)} Error: Runtime exited "
                                    "with error: exit status 7")
    log = base64.b64decode(response["LogResult"]).decode()
    assert "starting" in log
    assert log.splitlines()[-1].endswith("\tStatus: error\tError Type: Runtime.ExitError\t")
