"""Server-side checks of function settings (boto3 only checks types and minimums)."""

from __future__ import annotations

import json
import re
from typing import Any

from kiln.aws.arn import NAME_RE, parse_function_id
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields

HANDLER_RE = re.compile(r"^[^\s]{1,128}$")
ROLE_RE = re.compile(r"^arn:(aws[a-zA-Z-]*)?:iam::\d{12}:role/?[a-zA-Z_0-9+=,.@\-_/]+$")
ENV_KEY_RE = re.compile(r"^[a-zA-Z]([a-zA-Z0-9_])+$")
RESERVED_ENV = frozenset({
    "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
})
MAX_ENV_BYTES = 4096
ARCHITECTURES = ("x86_64", "arm64")
SNAPSTART_APPLY_ON = ("PublishedVersions", "None")


def field_error(value: Any, field: str, constraint: str,
                code: str = "InvalidParameterValueException") -> AwsError:
    """AWS's message for one request field failing one of its model's constraints."""
    return AwsError(code, f"1 validation error detected: Value '{value}' at '{field}' failed "
                          f"to satisfy constraint: {constraint}", 400)


def null_error(field: str, code: str = "InvalidParameterValueException") -> AwsError:
    """AWS's message for a required request field that is missing."""
    return AwsError(code, f"1 validation error detected: Value null at '{field}' failed to "
                          "satisfy constraint: Member must not be null", 400)


def check_revision(given: str | None, latest: str | None,
                   api: str = "GetFunction/GetAlias") -> None:
    """PreconditionFailedException when a request's RevisionId is not the latest one."""
    if given is not None and given != latest:
        raise AwsError.precondition_failed(
            "The Revision Id provided does not match the latest Revision Id. Call the "
            f"{api} API to retrieve the latest Revision Id")


def check_name(name: str | None, account_id: str | None = None) -> str:
    """The function name CreateFunction was given: a name, a full ARN or a partial ARN."""
    if name and NAME_RE.fullmatch(name):
        return name
    error = field_error(name, "functionName", "Member must satisfy regular expression pattern: "
                        "(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?"
                        "(\\d{12}:)?(function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?")
    if not name or ":" not in name:
        raise error
    try:
        parsed = parse_function_id(name, account_id)
    except AwsError as exc:
        raise (error if exc.status == 400 else exc) from None
    if parsed.qualifier is not None:
        raise AwsError.invalid_parameter(
            f"Unsupported function name {name}: a new function cannot have a qualifier.")
    return parsed.name


def _range(fields: Fields, key: str, label: str, low: int, high: int) -> int | None:
    value = fields.integer(key)
    if value is None:
        return None
    if value < low:
        raise field_error(value, label, f"Member must have value greater than or equal to {low}")
    if value > high:
        raise field_error(value, label, f"Member must have value less than or equal to {high}")
    return value


def configuration_changes(fields: Fields) -> dict[str, Any]:
    """The FunctionConfiguration fields a create/update request sets, validated."""
    changes: dict[str, Any] = {}
    role = fields.string("Role")
    if role is not None:
        if not ROLE_RE.fullmatch(role):
            raise field_error(role, "role", "Member must satisfy regular expression pattern: "
                              "arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+")
        changes["Role"] = role
    handler = fields.string("Handler")
    if handler is not None:
        if not HANDLER_RE.fullmatch(handler):
            raise field_error(handler, "handler", "Member must satisfy regular expression "
                              "pattern: [^\\s]+ and have length less than or equal to 128")
        changes["Handler"] = handler
    description = fields.string("Description")
    if description is not None:
        if len(description) > 256:
            raise field_error("...", "description",
                              "Member must have length less than or equal to 256")
        changes["Description"] = description
    timeout = _range(fields, "Timeout", "timeout", 1, 900)
    if timeout is not None:
        changes["Timeout"] = timeout
    memory = _range(fields, "MemorySize", "memorySize", 128, 10240)
    if memory is not None:
        changes["MemorySize"] = memory
    storage = fields.mapping("EphemeralStorage")
    if storage is not None:
        size = _range(Fields(storage), "Size", "ephemeralStorage.size", 512, 10240)
        if size is None:
            raise AwsError.invalid_parameter("EphemeralStorage.Size is required")
        changes["EphemeralStorage"] = {"Size": size}
    environment = fields.mapping("Environment")
    if environment is not None:
        changes["Environment"] = {"Variables": _variables(Fields(environment))}
    runtime = fields.string("Runtime")
    if runtime is not None:
        changes["Runtime"] = runtime
    layers = fields.array("Layers")
    if layers is not None:  # layer version ARNs, checked against the layers by LayerStore
        changes["Layers"] = layers
    snap_start = fields.mapping("SnapStart")
    if snap_start is not None:
        apply_on = snap_start.get("ApplyOn")
        if apply_on not in SNAPSTART_APPLY_ON:
            raise field_error("null" if apply_on is None else apply_on, "snapStart.applyOn",
                              "Member must satisfy enum value set: "
                              f"[{', '.join(SNAPSTART_APPLY_ON)}]", "ValidationException")
        changes["SnapStart"] = {"ApplyOn": apply_on}
    for key in ("TracingConfig", "LoggingConfig", "DeadLetterConfig"):
        value = fields.mapping(key)
        if value is not None:
            changes[key] = value
    return changes


def check_snap_start(config: dict[str, Any]) -> None:
    """SnapStart needs a runtime Kiln can snapshot after INIT: its Python runtimes."""
    if config.get("SnapStart", {}).get("ApplyOn") == "PublishedVersions" and not str(
            config["Runtime"]).startswith("python"):
        raise AwsError.invalid_parameter(
            f"{config['Runtime']} is not supported for SnapStart enabled functions.")


def _variables(environment: Fields) -> dict[str, str]:
    variables = environment.mapping("Variables") or {}
    reserved = sorted(key for key in variables if key in RESERVED_ENV)
    if reserved:
        raise AwsError.invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment "
            "variables you have provided contains reserved keys that are currently not supported "
            f"for modification. Reserved keys used in this request: {', '.join(reserved)}"
        )
    for key, value in variables.items():
        if not ENV_KEY_RE.fullmatch(key):
            raise field_error(key, "environment.variables",
                              "Map keys must satisfy constraint: [Member must satisfy regular "
                              "expression pattern: [a-zA-Z]([a-zA-Z0-9_])+]")
        if not isinstance(value, str):
            raise AwsError.invalid_content(
                "Could not parse request body into json: environment variable values must be "
                "strings"
            )
    # AWS measures the variables as compact JSON (keys, values, quotes, escapes and all).
    measured = json.dumps(variables, separators=(",", ":"))
    if len(measured.encode()) > MAX_ENV_BYTES:
        raise AwsError.invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment "
            f"variables you have provided exceeded the 4KB limit. String measured: {measured}"
        )
    return dict(variables)


def architectures(fields: Fields) -> list[str] | None:
    value = fields.array("Architectures")
    if value is None:
        return None
    if len(value) != 1 or value[0] not in ARCHITECTURES:
        raise field_error(value, "architectures", "Member must have length less than or equal "
                          "to 1, and each member must satisfy enum value set: [x86_64, arm64]")
    return list(value)


# -- versions, aliases, concurrency -----------------------------------------------------------

ALIAS_RE = re.compile(r"(?!^[0-9]+$)([a-zA-Z0-9-_]+)")
VERSION_RE = re.compile(r"(\$LATEST|[0-9]+)")
PUBLISHED_RE = re.compile(r"[0-9]+")
MAX_ALIAS_DESCRIPTION = 256


def alias_name(name: str | None) -> str:
    """An alias name: 1-128 of [a-zA-Z0-9-_], not all digits (that would be a version)."""
    if not name:
        raise null_error("name")
    if len(name) > 128:
        raise field_error(name, "name", "Member must have length less than or equal to 128")
    if not ALIAS_RE.fullmatch(name):
        raise field_error(name, "name", "Member must satisfy regular expression pattern: "
                          "(?!^[0-9]+$)([a-zA-Z0-9-_]+)")
    return name


def function_version(version: str | None) -> str:
    """The version an alias points to: $LATEST or a version number."""
    if not version:
        raise null_error("functionVersion")
    if len(version) > 1024 or not VERSION_RE.fullmatch(version):
        raise field_error(version, "functionVersion", "Member must satisfy regular expression "
                          "pattern: (\\$LATEST|[0-9]+)")
    return version


def description(fields: Fields) -> str | None:
    value = fields.string("Description")
    if value is not None and len(value) > MAX_ALIAS_DESCRIPTION:
        raise field_error("...", "description",
                          "Member must have length less than or equal to 256")
    return value


def routing_weights(fields: Fields) -> dict[str, float] | None:
    """RoutingConfig.AdditionalVersionWeights, checked for shape only: None when the request
    does not mention RoutingConfig, {} when it clears it."""
    routing = fields.mapping("RoutingConfig")
    if routing is None:
        return None
    weights = Fields(routing).mapping("AdditionalVersionWeights")
    if not weights:
        return {}
    if len(weights) > 1:
        raise AwsError.invalid_parameter(
            "Number of items in AdditionalVersionWeights cannot be greater than 1")
    checked: dict[str, float] = {}
    for version, weight in weights.items():
        shown = f"{{{version}={weight}}}"
        if isinstance(weight, bool) or not isinstance(weight, (int, float)):
            raise AwsError.invalid_content(
                "Could not parse request body into json: Could not parse payload into json: "
                "Cannot deserialize value of type `java.lang.Double` for field "
                "'AdditionalVersionWeights'")
        if not 0.0 <= weight <= 1.0:
            raise field_error(shown, "routingConfig.additionalVersionWeights",
                              "Map value must satisfy constraint: [Member must have value less "
                              "than or equal to 1.0, Member must have value greater than or "
                              "equal to 0.0, Member must not be null]")
        if not PUBLISHED_RE.fullmatch(version) or len(version) > 1024:
            raise field_error(shown, "routingConfig.additionalVersionWeights",
                              "Map keys must satisfy constraint: [Member must have length less "
                              "than or equal to 1024, Member must have length greater than or "
                              "equal to 1, Member must satisfy regular expression pattern: "
                              "[0-9]+, Member must not be null]")
        checked[version] = float(weight)
    return checked


def reserved_concurrency(fields: Fields) -> int:
    value = fields.integer("ReservedConcurrentExecutions")
    if value is None:
        raise null_error("reservedConcurrentExecutions")
    if value < 0:
        raise field_error(value, "reservedConcurrentExecutions",
                          "Member must have value greater than or equal to 0")
    return value
