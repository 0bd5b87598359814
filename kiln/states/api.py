"""The AWS JSON 1.0 front door: ``X-Amz-Target: AWSStepFunctions.<Operation>``.

    api = StatesApi(db, invoker, region, account_id, clock)
    await api.start()                  # resumes Standard executions left RUNNING
    response = await api.handle(request)
    await api.stop()
"""

from __future__ import annotations

import base64
import json
import random
import re
import sqlite3
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from kiln.aws.errors import AwsError
from kiln.states.callbacks import token_execution
from kiln.states.definition import DefinitionError, valid_name, validate_definition
from kiln.states.maprun import MapRun
from kiln.states.payload import dumps
from kiln.states.service import ExecutionService
from kiln.states.store import StatesStore
from kiln.states.types import Clock, FunctionInvoker, SystemClock
from kiln.store import Database

TARGET_PREFIX = "AWSStepFunctions."
CONTENT_TYPE = "application/x-amz-json-1.0"
MAX_POLL_SECONDS = 60.0
_STATUSES = ("RUNNING", "SUCCEEDED", "FAILED", "TIMED_OUT", "ABORTED", "PENDING_REDRIVE")
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_\-]+$")

Operation = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]


def error_response(error: AwsError, request_id: str) -> Response:
    """json-1.0 errors: ``__type`` in the body plus the header botocore also reads."""
    body = {"__type": error.code, "message": error.message, **error.fields}
    return Response(
        json.dumps(body),
        status_code=error.status,
        headers={"x-amzn-ErrorType": error.code, "x-amzn-RequestId": request_id,
                 **error.headers},
        media_type=CONTENT_TYPE,
    )


def _err(code: str, message: str) -> AwsError:
    return AwsError(code, message, 400)


def _validation(message: str) -> AwsError:
    return _err("ValidationException", message)


def _enum(value: Any, field: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise _validation(f"1 validation error detected: Value '{value}' at '{field}' failed to "
                          "satisfy constraint: Member must satisfy enum value set: "
                          f"[{', '.join(allowed)}]")
    return str(value)


def _definition(value: Any) -> str:
    if not isinstance(value, str):
        raise _validation("1 validation error detected: Value null at 'definition' failed "
                          "to satisfy constraint: Member must not be null")
    return value


def _role(value: Any) -> str:
    if not isinstance(value, str) or not value.startswith("arn:"):
        raise _err("InvalidArn", f"Invalid Arn: 'Invalid ARN prefix: {value}'")
    return value


def _name(value: Any, *, alias: bool = False) -> str:
    """A valid resource name, else InvalidName; an alias's may not be all digits (a version's)."""
    if not valid_name(value) or (alias and str(value).isdigit()):
        raise _err("InvalidName", f"Invalid Name: '{value}'")
    return str(value)


class StatesApi:
    def __init__(self, db: Database, invoker: FunctionInvoker, region: str, account_id: str,
                 clock: Clock | None = None) -> None:
        self.region = region
        self.account_id = account_id
        self.clock = clock or SystemClock()
        self.store = StatesStore(db)
        self.executions = ExecutionService(self.store, invoker, region, account_id, self.clock)
        self._ops: dict[str, Operation] = {
            name: getattr(self, "op_" + _snake(name)) for name in _OPERATIONS
        }

    async def start(self) -> None:
        self.executions.resume_all()

    async def stop(self) -> None:
        await self.executions.shutdown()

    # ------------------------------------------------------------------ dispatch

    async def handle(self, request: Request) -> Response:
        request_id = str(uuid.uuid4())
        target = request.headers.get("x-amz-target", "")
        op_name = target[len(TARGET_PREFIX):] if target.startswith(TARGET_PREFIX) else ""
        try:
            op = self._ops.get(op_name)
            if op is None:
                raise _err("UnknownOperationException", f"Unknown operation {target}")
            raw = await request.body()
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                raise _err("SerializationException", "Malformed JSON request body") from None
            if not isinstance(body, dict):
                raise _err("SerializationException", "Request body must be a JSON object")
            result = await op(body)
        except AwsError as error:
            return error_response(error, request_id)
        except Exception as exc:  # noqa: BLE001 - answer in AWS's shape, never a bare 500
            return error_response(AwsError("InternalFailure", f"Internal error: {exc!r}", 500),
                                  request_id)
        return Response(json.dumps(result), media_type=CONTENT_TYPE,
                        headers={"x-amzn-RequestId": request_id})

    async def call(self, operation: str, body: dict[str, Any]) -> dict[str, Any]:
        """Invoke an operation directly (tests, in-process callers); raises AwsError."""
        return await self._ops[operation](body)

    # ------------------------------------------------------------------ helpers

    def _arn(self, kind: str, name: str) -> str:
        return f"arn:aws:states:{self.region}:{self.account_id}:{kind}:{name}"

    def _check_arn(self, arn: Any, kind: str, resource_type: str | None = None) -> str:
        """A states ARN in field ``<kind>Arn``; with ``resource_type``, of that type only."""
        if not isinstance(arn, str) or not arn:
            raise _validation(f"1 validation error detected: Value null at '{kind}Arn' failed "
                              "to satisfy constraint: Member must not be null")
        if not arn.startswith("arn:"):
            raise _err("InvalidArn", f"Invalid Arn: 'Invalid ARN prefix: {arn}'")
        parts = arn.split(":")
        if len(parts) < 7 or parts[2] != "states":
            raise _err("InvalidArn", f"Invalid Arn: 'Resource type not valid in this context: "
                       f"{parts[5] if len(parts) > 5 else arn}'")
        if resource_type is not None and parts[5] != resource_type:
            raise _err("InvalidArn", "Invalid Arn: 'Resource type not valid in this context: "
                       f"{parts[5]}'")
        return arn

    def _machine(self, arn: Any) -> sqlite3.Row:
        arn = self._check_arn(arn, "stateMachine", "stateMachine")
        row = self.store.machine(arn)
        if row is None:
            raise _err("StateMachineDoesNotExist", f"State Machine Does Not Exist: '{arn}'")
        return row

    def _execution(self, arn: Any) -> sqlite3.Row:
        arn = self._check_arn(arn, "execution")
        kind = arn.split(":")[5]
        if kind != "execution":
            raise _err("InvalidArn", f"Resource type not valid in this context: {kind}")
        row = self.store.execution(arn)
        if row is None:
            raise _err("ExecutionDoesNotExist", f"Execution Does Not Exist: '{arn}'")
        return row

    def _definition_error(self, definition: Any, express: bool) -> None:
        diagnostics = validate_definition(_definition(definition), express)
        errors = [d for d in diagnostics if d.severity == "ERROR"]
        if errors:
            raise _err("InvalidDefinition", DefinitionError(errors).message())

    def _input(self, value: Any) -> str:
        if value is None:
            return "{}"
        if not isinstance(value, str) or not value.strip():
            raise _err("InvalidExecutionInput", "Invalid execution input.")
        try:
            json.loads(value)
        except ValueError as exc:
            raise _err("InvalidExecutionInput",
                       f"Invalid State Machine Execution Input: '{exc}'") from None
        if len(value.encode()) > 262144:
            raise _err("InvalidExecutionInput", "Execution input exceeds the maximum size of "
                       "262144 bytes")
        return value

    @staticmethod
    def _page(key: str, items: list[Any], body: dict[str, Any],
              default: int = 100) -> dict[str, Any]:
        """One page of a List*/Get*History answer: ``{key: [...], "nextToken"?: ...}``."""
        max_results = body.get("maxResults") or default
        if not isinstance(max_results, int) or not 0 <= max_results <= 1000:
            raise _validation(f"1 validation error detected: Value '{max_results}' at "
                              "'maxResults' failed to satisfy constraint: Member must have value "
                              "less than or equal to 1000")
        token = body.get("nextToken")
        start = 0
        if token is not None:
            if not isinstance(token, str) or not 1 <= len(token) <= 1024:
                raise _validation("1 validation error detected: Value at 'nextToken' failed to "
                                  "satisfy constraint: Member must have length less than or "
                                  "equal to 1024")
            try:
                start = int(base64.urlsafe_b64decode(token.encode()).decode())
            except (ValueError, UnicodeDecodeError):
                raise _err("InvalidToken", f"Invalid Token: '{token}'") from None
        out: dict[str, Any] = {key: items[start:start + max_results]}
        if start + max_results < len(items):
            out["nextToken"] = base64.urlsafe_b64encode(
                str(start + max_results).encode()).decode()
        return out

    # ------------------------------------------------------------------ state machines

    async def op_create_state_machine(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body.get("name"))
        sm_type = _enum(body.get("type", "STANDARD"), "type", ("STANDARD", "EXPRESS"))
        role = _role(body.get("roleArn"))
        definition = body.get("definition")
        self._definition_error(definition, sm_type == "EXPRESS")
        arn = self._arn("stateMachine", name)
        tags = self._tags(body.get("tags"), arn)
        existing = self.store.machine(arn)
        logging = body.get("loggingConfiguration") or {"level": "OFF",
                                                       "includeExecutionData": False}
        tracing = body.get("tracingConfiguration") or {"enabled": False}
        if existing is not None:
            same = (existing["definition"] == definition and existing["role_arn"] == role
                    and existing["type"] == sm_type)
            if not same:
                raise _err("StateMachineAlreadyExists", f"State Machine Already Exists: '{arn}'")
            return {"stateMachineArn": arn, "creationDate": existing["created"]}
        created = self.clock.now()
        self.store.insert_machine({
            "arn": arn, "name": name, "type": sm_type, "definition": definition,
            "role_arn": role, "created": created, "revision_id": str(uuid.uuid4()),
            "logging": logging, "tracing": tracing,
            "description": body.get("versionDescription"),
        })
        self.store.tag(arn, tags)
        out: dict[str, Any] = {"stateMachineArn": arn, "creationDate": created}
        if body.get("publish"):
            out["stateMachineVersionArn"] = self._publish(arn, body.get("versionDescription"))
        return out

    def _describe_machine(self, row: sqlite3.Row) -> dict[str, Any]:
        out = {
            "stateMachineArn": row["arn"], "name": row["name"], "status": "ACTIVE",
            "definition": row["definition"], "roleArn": row["role_arn"], "type": row["type"],
            "creationDate": row["created"],
            "loggingConfiguration": json.loads(row["logging"]),
            "tracingConfiguration": json.loads(row["tracing"]),
            "revisionId": row["revision_id"],
        }
        if row["description"]:
            out["description"] = row["description"]
        return out

    async def op_describe_state_machine(self, body: dict[str, Any]) -> dict[str, Any]:
        target = self._resolve(body.get("stateMachineArn"))
        if target["alias_arn"]:
            raise _err("InvalidArn", "Invalid Arn: 'Resource type not valid in this context: "
                       "alias'")
        out = self._describe_machine(self._machine(target["arn"]))
        if target["version_arn"]:
            version = self.store.version(target["version_arn"])
            assert version is not None
            out.update(stateMachineArn=version["arn"], definition=version["definition"],
                       roleArn=version["role_arn"], revisionId=version["revision_id"],
                       creationDate=version["created"])
            if version["description"]:
                out["description"] = version["description"]
        return out

    async def op_update_state_machine(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._machine(body.get("stateMachineArn"))
        fields: dict[str, Any] = {}
        if "definition" in body:
            self._definition_error(body["definition"], row["type"] == "EXPRESS")
            fields["definition"] = body["definition"]
        if "roleArn" in body:
            fields["role_arn"] = _role(body["roleArn"])
        if "loggingConfiguration" in body:
            fields["logging"] = dumps(body["loggingConfiguration"])
        if "tracingConfiguration" in body:
            fields["tracing"] = dumps(body["tracingConfiguration"])
        if not fields:
            raise _err("MissingRequiredParameter",
                       "Either the definition, the roleArn, the LoggingConfiguration, or the "
                       "TracingConfiguration must be specified")
        updated = self.clock.now()
        fields["updated"] = updated
        fields["revision_id"] = str(uuid.uuid4())
        self.store.update_machine(row["arn"], fields)
        out: dict[str, Any] = {"updateDate": updated, "revisionId": fields["revision_id"]}
        if body.get("publish"):
            out["stateMachineVersionArn"] = self._publish(row["arn"],
                                                          body.get("versionDescription"))
        return out

    async def op_delete_state_machine(self, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._check_arn(body.get("stateMachineArn"), "stateMachine")
        self.store.delete_machine(arn)
        return {}

    async def op_list_state_machines(self, body: dict[str, Any]) -> dict[str, Any]:
        items = [{"stateMachineArn": r["arn"], "name": r["name"], "type": r["type"],
                  "creationDate": r["created"]} for r in self.store.machines()]
        return self._page("stateMachines", items, body)

    async def op_validate_state_machine_definition(self, body: dict[str, Any]) -> dict[str, Any]:
        diagnostics = validate_definition(_definition(body.get("definition")),
                                          body.get("type") == "EXPRESS")
        max_results = body.get("maxResults") or 100
        shown = diagnostics[:max_results]
        return {
            "result": "FAIL" if any(d.severity == "ERROR" for d in diagnostics) else "OK",
            "diagnostics": [d.to_json() for d in shown],
            "truncated": len(shown) < len(diagnostics),
        }

    # ------------------------------------------------------------------ versions / aliases

    def _publish(self, machine_arn: str, description: Any) -> str:
        machine = self._machine(machine_arn)
        latest = next(iter(self.store.versions(machine_arn)), None)
        if latest is not None and latest["revision_id"] == machine["revision_id"]:
            return str(latest["arn"])
        return self.store.insert_version(machine, description, self.clock.now())

    async def op_publish_state_machine_version(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._machine(body.get("stateMachineArn"))
        revision = body.get("revisionId")
        if revision is not None and revision != machine["revision_id"]:
            raise _err("ConflictException",
                       f"Failed to publish the State Machine version for revision {revision}. "
                       f"The current State Machine revision is {machine['revision_id']}.")
        arn = self._publish(machine["arn"], body.get("description"))
        version = self.store.version(arn)
        assert version is not None
        return {"creationDate": version["created"], "stateMachineVersionArn": arn}

    async def op_list_state_machine_versions(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._machine(body.get("stateMachineArn"))
        items = [{"stateMachineVersionArn": v["arn"], "creationDate": v["created"]}
                 for v in self.store.versions(machine["arn"])]
        return self._page("stateMachineVersions", items, body)

    async def op_delete_state_machine_version(self, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._check_arn(body.get("stateMachineVersionArn"), "stateMachineVersion")
        for alias in self.store.aliases(":".join(arn.split(":")[:7])):
            if any(r["stateMachineVersionArn"] == arn for r in json.loads(alias["routing"])):
                raise _err("ConflictException",
                           f"Version to be deleted must not be referenced by an alias. "
                           f"Current list of aliases referencing this version: "
                           f"[{alias['name']}]")
        self.store.delete_version(arn)
        return {}

    def _routing(self, machine_arn: str, routing: Any) -> list[dict[str, Any]]:
        if not isinstance(routing, list) or not 1 <= len(routing) <= 2:
            raise _validation("The routingConfiguration must contain one or two versions")
        for route in routing:
            version = route.get("stateMachineVersionArn") if isinstance(route, dict) else None
            if not isinstance(version, str) or self.store.version(version) is None or (
                    ":".join(version.split(":")[:7]) != machine_arn):
                raise _err("ResourceNotFound", f"Resource not found: '{version}'")
            if not isinstance(route.get("weight"), int) or not 0 <= route["weight"] <= 100:
                raise _validation("Each routing weight must be between 0 and 100")
        if sum(r["weight"] for r in routing) != 100:
            raise _validation("The routing weights must add up to 100")
        return [{"stateMachineVersionArn": r["stateMachineVersionArn"], "weight": r["weight"]}
                for r in routing]

    async def op_create_state_machine_alias(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body.get("name"), alias=True)
        routing = body.get("routingConfiguration")
        first = routing[0].get("stateMachineVersionArn") if isinstance(routing, list) and \
            routing and isinstance(routing[0], dict) else None
        machine_arn = ":".join(str(first).split(":")[:7])
        self._machine(machine_arn)
        routes = self._routing(machine_arn, routing)
        arn = f"{machine_arn}:{name}"
        existing = self.store.alias(arn)
        if existing is not None:
            if json.loads(existing["routing"]) == routes:
                return {"stateMachineAliasArn": arn, "creationDate": existing["created"]}
            raise _err("ConflictException", f"Alias already exists: '{arn}'")
        created = self.clock.now()
        self.store.put_alias(arn, machine_arn, name, body.get("description"), routes,
                             created, None)
        return {"stateMachineAliasArn": arn, "creationDate": created}

    def _alias(self, value: Any) -> sqlite3.Row:
        arn = self._check_arn(value, "stateMachineAlias")
        alias = self.store.alias(arn)
        if alias is None:
            raise _err("ResourceNotFound", f"Resource not found: '{arn}'")
        return alias

    async def op_describe_state_machine_alias(self, body: dict[str, Any]) -> dict[str, Any]:
        alias = self._alias(body.get("stateMachineAliasArn"))
        out: dict[str, Any] = {
            "stateMachineAliasArn": alias["arn"], "name": alias["name"],
            "routingConfiguration": json.loads(alias["routing"]),
            "creationDate": alias["created"],
        }
        if alias["description"]:
            out["description"] = alias["description"]
        if alias["updated"] is not None:
            out["updateDate"] = alias["updated"]
        return out

    async def op_update_state_machine_alias(self, body: dict[str, Any]) -> dict[str, Any]:
        alias = self._alias(body.get("stateMachineAliasArn"))
        routes = json.loads(alias["routing"])
        if "routingConfiguration" in body:
            routes = self._routing(alias["machine_arn"], body["routingConfiguration"])
        description = body.get("description", alias["description"])
        updated = self.clock.now()
        self.store.put_alias(alias["arn"], alias["machine_arn"], alias["name"], description,
                             routes, alias["created"], updated)
        return {"updateDate": updated}

    async def op_delete_state_machine_alias(self, body: dict[str, Any]) -> dict[str, Any]:
        self.store.delete_alias(self._check_arn(body.get("stateMachineAliasArn"),
                                                "stateMachineAlias"))
        return {}

    async def op_list_state_machine_aliases(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._machine(body.get("stateMachineArn"))
        items = [{"stateMachineAliasArn": a["arn"], "creationDate": a["created"]}
                 for a in self.store.aliases(machine["arn"])]
        return self._page("stateMachineAliases", items, body)

    # ------------------------------------------------------------------ executions

    def _resolve(self, value: Any) -> dict[str, Any]:
        """A state machine, version or alias ARN -> what to run (definition, role, qualifiers)."""
        arn = self._check_arn(value, "stateMachine")
        parts = arn.split(":")
        if parts[5] != "stateMachine" or len(parts) > 8:
            raise _err("InvalidArn", f"Invalid Arn: 'Resource type not valid in this context: "
                       f"{parts[5]}'")
        row = self._machine(":".join(parts[:7]))
        target = dict(row)
        target["version_arn"] = target["alias_arn"] = None
        if len(parts) == 8:
            version_arn = arn
            if not parts[7].isdigit():
                alias = self.store.alias(arn)
                if alias is None:
                    raise _err("ResourceNotFound", f"Resource not found: '{arn}'")
                routes = json.loads(alias["routing"])
                chosen = random.choices(routes, weights=[r["weight"] for r in routes])[0]
                version_arn = chosen["stateMachineVersionArn"]
                target["alias_arn"] = arn
            version = self.store.version(version_arn)
            if version is None:
                raise _err("StateMachineDoesNotExist",
                           f"State Machine Does Not Exist: '{version_arn}'")
            target.update(definition=version["definition"], role_arn=version["role_arn"],
                          revision_id=version["revision_id"], version_arn=version_arn)
        return target

    async def op_start_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._resolve(body.get("stateMachineArn"))
        name = _name(body.get("name") or str(uuid.uuid4()))
        input_text = self._input(body.get("input"))
        if machine["type"] == "EXPRESS":
            arn = self._arn("express", f"{machine['name']}:{name}:{uuid.uuid4()}")
            running = self.executions.start_express(machine, arn, name, input_text)
            return {"executionArn": arn, "startDate": running.started}
        arn = self._arn("execution", f"{machine['name']}:{name}")
        existing = self.store.execution(arn)
        if existing is not None:
            if existing["status"] == "RUNNING" and existing["input"] == input_text:
                return {"executionArn": arn, "startDate": existing["started"]}
            raise _err("ExecutionAlreadyExists", f"Execution Already Exists: '{arn}'")
        started = self.executions.start_standard(machine, arn, name, input_text)
        return {"executionArn": arn, "startDate": started}

    async def op_start_sync_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        machine = self._resolve(body.get("stateMachineArn"))
        if machine["type"] != "EXPRESS":
            raise _err("StateMachineTypeNotSupported",
                       "This operation is not supported by this type of state machine")
        name = _name(body.get("name") or str(uuid.uuid4()))
        input_text = self._input(body.get("input"))
        arn = self._arn("express", f"{machine['name']}:{name}:{uuid.uuid4()}")
        running = self.executions.start_express(machine, arn, name, input_text)
        outcome = await running.done
        stopped = self.clock.now()
        out: dict[str, Any] = {
            "executionArn": arn, "stateMachineArn": machine["arn"], "name": name,
            "startDate": running.started, "stopDate": stopped,
            "status": outcome.status, "input": input_text,
            "inputDetails": {"included": True},
            "billingDetails": {
                "billedMemoryUsedInMB": 64,
                "billedDurationInMilliseconds": max(
                    100, int((stopped - running.started) * 1000 + 99) // 100 * 100),
            },
        }
        if outcome.status == "SUCCEEDED":
            out["output"] = dumps(outcome.output)
            out["outputDetails"] = {"included": True}
        if outcome.error is not None:
            out["error"] = outcome.error
        if outcome.cause is not None:
            out["cause"] = outcome.cause
        return out

    def _describe_execution(self, row: sqlite3.Row) -> dict[str, Any]:
        out: dict[str, Any] = {
            "executionArn": row["arn"], "stateMachineArn": row["machine_arn"],
            "name": row["name"], "status": row["status"], "startDate": row["started"],
            "input": row["input"], "inputDetails": {"included": True},
            "redriveCount": row["redrive_count"], "redriveStatus": "NOT_REDRIVABLE",
        }
        if row["redrive_date"] is not None:
            out["redriveDate"] = row["redrive_date"]
        if row["stopped"] is not None:
            out["stopDate"] = row["stopped"]
        if row["status"] == "SUCCEEDED":
            out["output"] = row["output"]
            out["outputDetails"] = {"included": True}
        if row["error"] is not None:
            out["error"] = row["error"]
        if row["cause"] is not None:
            out["cause"] = row["cause"]
        for column, key in (("version_arn", "stateMachineVersionArn"),
                            ("alias_arn", "stateMachineAliasArn")):
            if row[column]:
                out[key] = row[column]
        if row["status"] != "RUNNING":
            reason = self._not_redrivable(row)
            if reason is None:
                out["redriveStatus"] = "REDRIVABLE"
            else:
                out["redriveStatusReason"] = reason
        return out

    def _not_redrivable(self, row: sqlite3.Row) -> str | None:
        if row["status"] not in ("FAILED", "TIMED_OUT", "ABORTED"):
            return f"Execution is {row['status']} and cannot be redriven"
        if not row["checkpoint"]:
            return "Execution has no state to redrive from"
        if self.clock.now() - row["started"] > 14 * 86400:
            return "Execution started more than 14 days ago"
        return None

    async def op_describe_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._describe_execution(self._execution(body.get("executionArn")))

    async def op_describe_state_machine_for_execution(self, body: dict[str, Any]) -> dict[
            str, Any]:
        row = self._execution(body.get("executionArn"))
        machine = self.store.machine(row["machine_arn"])
        out: dict[str, Any] = {
            "stateMachineArn": row["machine_arn"],
            "name": row["machine_arn"].rsplit(":", 1)[-1],
            "definition": row["definition"], "roleArn": row["role_arn"],
            "updateDate": row["started"], "revisionId": row["revision_id"],
        }
        if machine is not None:
            out["loggingConfiguration"] = json.loads(machine["logging"])
            out["tracingConfiguration"] = json.loads(machine["tracing"])
        return out

    async def op_stop_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._execution(body.get("executionArn"))
        if row["status"] != "RUNNING":
            return {"stopDate": row["stopped"]}
        stopped = await self.executions.stop(row["arn"], body.get("error"), body.get("cause"))
        return {"stopDate": stopped}

    async def op_list_executions(self, body: dict[str, Any]) -> dict[str, Any]:
        status = body.get("statusFilter")
        if status is not None:
            _enum(status, "statusFilter", _STATUSES)
        redrive = body.get("redriveFilter")
        if redrive is not None:
            _enum(redrive, "redriveFilter", ("REDRIVEN", "NOT_REDRIVEN"))
        if body.get("mapRunArn") is not None:
            if body.get("stateMachineArn") is not None:
                raise _validation("Only one of stateMachineArn or mapRunArn may be specified")
            run = self._map_run(body["mapRunArn"])
            children = [] if redrive == "REDRIVEN" else run.executions(status)
            return self._page("executions", children, body)
        target = self._resolve(body.get("stateMachineArn"))
        machine = self._machine(target["arn"])
        qualified = target["alias_arn"] or target["version_arn"]
        if machine["type"] == "EXPRESS":
            raise _err("StateMachineTypeNotSupported",
                       "This operation is not supported by this type of state machine")
        items = []
        for r in self.store.executions(machine["arn"], status, qualified):
            if redrive is not None and (r["redrive_count"] > 0) != (redrive == "REDRIVEN"):
                continue
            item = {"executionArn": r["arn"], "stateMachineArn": r["machine_arn"],
                    "name": r["name"], "status": r["status"], "startDate": r["started"],
                    "redriveCount": r["redrive_count"]}
            if r["stopped"] is not None:
                item["stopDate"] = r["stopped"]
            if r["version_arn"]:
                item["stateMachineVersionArn"] = r["version_arn"]
            if r["alias_arn"]:
                item["stateMachineAliasArn"] = r["alias_arn"]
            items.append(item)
        return self._page("executions", items, body)

    async def op_get_execution_history(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._execution(body.get("executionArn"))
        events = self.store.events(row["arn"])
        if body.get("reverseOrder"):
            events.reverse()
        if body.get("includeExecutionData") is False:
            for event in events:
                for key, value in event.items():
                    if key.endswith("EventDetails") and isinstance(value, dict):
                        for field in ("input", "output", "parameters"):
                            value.pop(field, None)
        return self._page("events", events, body)

    async def op_redrive_execution(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._execution(body.get("executionArn"))
        reason = self._not_redrivable(row)
        if reason is not None:
            raise _err("ExecutionNotRedrivable",
                       f"Execution with ARN {row['arn']} cannot be redriven: {reason}")
        return {"redriveDate": self.executions.redrive(row)}

    async def op_test_state(self, body: dict[str, Any]) -> dict[str, Any]:
        try:
            raw = json.loads(_definition(body.get("definition")))
        except ValueError:
            raise _err("InvalidDefinition", "Invalid State Machine Definition: "
                       "'INVALID_JSON_DESCRIPTION: The definition is not valid JSON'") from None
        if not isinstance(raw, dict):
            raise _err("InvalidDefinition", "Invalid State Machine Definition: "
                       "'Definition must be a valid JSON object'")
        level = _enum(body.get("inspectionLevel", "INFO"), "inspectionLevel",
                      ("INFO", "DEBUG", "TRACE"))
        debug = level != "INFO"  # TRACE adds HTTP details, which only HTTP Tasks have
        input_text = self._input(body.get("input"))
        variables_text = body.get("variables")
        try:
            variables = json.loads(variables_text) if variables_text else {}
        except ValueError:
            raise _validation("The variables must be a JSON object") from None
        if not isinstance(variables, dict):
            raise _validation("The variables must be a JSON object")
        try:
            result = await self.executions.test_state(raw, body.get("stateName"),
                                                      json.loads(input_text), variables, debug)
        except DefinitionError as exc:
            raise _err("InvalidDefinition", exc.message()) from None
        except KeyError as exc:
            raise _validation(f"State {exc} does not exist in the definition") from None
        if debug:
            result["inspectionData"]["variables"] = dumps(variables)
        return result

    # ------------------------------------------------------------------ map runs

    def _map_run(self, value: Any) -> MapRun:
        arn = self._check_arn(value, "mapRun", "mapRun")
        run = self.executions.map_run(arn)
        if run is None:
            raise _err("ResourceNotFound", f"Resource not found: '{arn}'")
        return run

    async def op_describe_map_run(self, body: dict[str, Any]) -> dict[str, Any]:
        return self._map_run(body.get("mapRunArn")).describe()

    async def op_list_map_runs(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._execution(body.get("executionArn"))
        live = self.executions.services.map_runs.live
        runs = [live.get(r["arn"]) or MapRun.from_json(r)
                for r in self.store.map_runs(row["arn"])]
        return self._page("mapRuns", [run.summary() for run in runs], body)

    async def op_update_map_run(self, body: dict[str, Any]) -> dict[str, Any]:
        run = self._map_run(body.get("mapRunArn"))
        values: dict[str, Any] = {}
        for key, percentage in (("maxConcurrency", False), ("toleratedFailureCount", False),
                                ("toleratedFailurePercentage", True)):
            value = body.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 or (
                    not percentage and not float(value).is_integer()) or (
                    percentage and value > 100):
                bound = "between 0 and 100" if percentage else "greater than or equal to 0"
                raise _validation(f"1 validation error detected: Value '{value}' at '{key}' "
                                  f"failed to satisfy constraint: Member must have value {bound}")
            values[key] = float(value) if percentage else int(value)
        if not values:
            raise _validation("At least one of maxConcurrency, toleratedFailureCount or "
                              "toleratedFailurePercentage must be specified")
        self.executions.services.map_runs.update(
            run, values.get("maxConcurrency"), values.get("toleratedFailureCount"),
            values.get("toleratedFailurePercentage"))
        return {}

    # ------------------------------------------------------------------ callbacks

    def _token(self, body: dict[str, Any]) -> str:
        token = body.get("taskToken")
        if not isinstance(token, str) or not 1 <= len(token) <= 2048:
            raise _validation("1 validation error detected: Value at 'taskToken' failed to "
                              "satisfy constraint: Member must have length less than or equal "
                              "to 2048")
        if not _TOKEN_RE.match(token):
            raise _err("InvalidToken", f"Invalid Token: '{token}'")
        return token

    def _missing_task(self, token: str) -> AwsError:
        if token_execution(token) is None:
            return _err("InvalidToken", f"Invalid Token: '{token}'")
        return _err("TaskDoesNotExist", "Task Does Not Exist")

    async def op_send_task_success(self, body: dict[str, Any]) -> dict[str, Any]:
        token = self._token(body)
        output = body.get("output")
        if not isinstance(output, str):
            raise _validation("1 validation error detected: Value null at 'output' failed to "
                              "satisfy constraint: Member must not be null")
        try:
            value = json.loads(output)
        except ValueError as exc:
            raise _err("InvalidOutput", f"Invalid Output: '{exc}'") from None
        if not self.executions.services.tokens.succeed(token, value):
            raise self._missing_task(token)
        return {}

    async def op_send_task_failure(self, body: dict[str, Any]) -> dict[str, Any]:
        token = self._token(body)
        if not self.executions.services.tokens.fail(token, body.get("error"),
                                                     body.get("cause")):
            raise self._missing_task(token)
        return {}

    async def op_send_task_heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        token = self._token(body)
        if not self.executions.services.tokens.heartbeat(token):
            raise self._missing_task(token)
        return {}

    # ------------------------------------------------------------------ activities

    def _activity(self, arn: Any) -> sqlite3.Row:
        arn = self._check_arn(arn, "activity")
        row = self.store.activity(arn)
        if row is None:
            raise _err("ActivityDoesNotExist", f"Activity Does Not Exist: '{arn}'")
        return row

    async def op_create_activity(self, body: dict[str, Any]) -> dict[str, Any]:
        name = _name(body.get("name"))
        arn = self._arn("activity", name)
        tags = self._tags(body.get("tags"), arn)
        existing = self.store.activity(arn)
        if existing is not None:
            return {"activityArn": arn, "creationDate": existing["created"]}
        created = self.clock.now()
        self.store.insert_activity(arn, name, created)
        self.store.tag(arn, tags)
        return {"activityArn": arn, "creationDate": created}

    async def op_describe_activity(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._activity(body.get("activityArn"))
        return {"activityArn": row["arn"], "name": row["name"], "creationDate": row["created"]}

    async def op_delete_activity(self, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._check_arn(body.get("activityArn"), "activity")
        self.store.delete_activity(arn)
        for task in self.executions.services.activities.drop(arn):
            self.executions.services.tokens.fail(
                task.token, "States.Runtime", f"The activity {arn} does not exist.")
        return {}

    async def op_list_activities(self, body: dict[str, Any]) -> dict[str, Any]:
        items = [{"activityArn": r["arn"], "name": r["name"], "creationDate": r["created"]}
                 for r in self.store.activities()]
        return self._page("activities", items, body)

    async def op_get_activity_task(self, body: dict[str, Any]) -> dict[str, Any]:
        row = self._activity(body.get("activityArn"))
        worker = body.get("workerName") or ""
        task = await self.executions.services.activities.poll(
            row["arn"], str(worker), self.clock, MAX_POLL_SECONDS)
        if task is None:
            return {}
        return {"taskToken": task.token, "input": task.input}

    # ------------------------------------------------------------------ tags

    def _taggable(self, value: Any) -> str:
        arn = self._check_arn(value, "resource")
        if self.store.machine(arn) is None and self.store.activity(arn) is None:
            raise _err("ResourceNotFound", f"Resource not found: '{arn}'")
        return arn

    def _tags(self, value: Any, arn: str) -> list[dict[str, str]]:
        """Validated tags; at most 50 on a resource once merged with the ones it has."""
        if value is None:
            return []
        if not isinstance(value, list) or not all(
                isinstance(t, dict) and isinstance(t.get("key"), str)
                and 1 <= len(t["key"]) <= 128 and isinstance(t.get("value", ""), str)
                and len(t.get("value", "")) <= 256 for t in value):
            raise _validation("1 validation error detected: Value at 'tags' failed to satisfy "
                              "constraint: each tag needs a key of 1 to 128 characters and a "
                              "value of at most 256")
        keys = {t["key"] for t in self.store.tags(arn)} | {t["key"] for t in value}
        if len(keys) > 50:
            raise AwsError("TooManyTags", f"Too many tags: '{arn}' can have at most 50 tags",
                           400, resourceName=arn)
        return [{"key": t["key"], "value": t.get("value", "")} for t in value]

    async def op_tag_resource(self, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._taggable(body.get("resourceArn"))
        self.store.tag(arn, self._tags(body.get("tags") or [], arn))
        return {}

    async def op_untag_resource(self, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._taggable(body.get("resourceArn"))
        keys = body.get("tagKeys") or []
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise _validation("1 validation error detected: Value at 'tagKeys' failed to "
                              "satisfy constraint: Member must be a list of strings")
        self.store.untag(arn, keys)
        return {}

    async def op_list_tags_for_resource(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"tags": self.store.tags(self._taggable(body.get("resourceArn")))}


_OPERATIONS = (
    "CreateStateMachine", "DescribeStateMachine", "UpdateStateMachine", "DeleteStateMachine",
    "ListStateMachines", "ValidateStateMachineDefinition", "StartExecution",
    "StartSyncExecution", "TestState", "DescribeExecution", "DescribeStateMachineForExecution",
    "StopExecution", "ListExecutions", "GetExecutionHistory", "RedriveExecution",
    "SendTaskSuccess", "SendTaskFailure", "SendTaskHeartbeat", "CreateActivity",
    "DescribeActivity", "DeleteActivity", "ListActivities", "GetActivityTask", "TagResource",
    "UntagResource", "ListTagsForResource", "PublishStateMachineVersion",
    "ListStateMachineVersions", "DeleteStateMachineVersion", "CreateStateMachineAlias",
    "DescribeStateMachineAlias", "UpdateStateMachineAlias", "DeleteStateMachineAlias",
    "ListStateMachineAliases", "DescribeMapRun", "ListMapRuns", "UpdateMapRun",
)


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
