"""The validator: checks an ASL definition and compiles it, or reports AWS-style diagnostics.

    machine = parse_definition(text)          # raises DefinitionError
    diagnostics = validate_definition(text)   # [] when valid
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from kiln.states import jsonata
from kiln.states.choice import RuleError, compile_rule, parse_timestamp
from kiln.states.intrinsics import IntrinsicSyntaxError
from kiln.states.jsonpath import Path, PathSyntaxError, compile_path
from kiln.states.model import ROOT, Catcher, Choice, Machine, Retrier, State
from kiln.states.payload import (
    Expression,
    TemplateError,
    compile_expression,
    compile_template,
    described,
)
from kiln.states.types import JSON

STATE_TYPES = ("Pass", "Task", "Choice", "Wait", "Succeed", "Fail", "Parallel", "Map")

_COMMON = {"Type", "Comment", "QueryLanguage"}
_FLOW = {"Next", "End"}
_JSONPATH_IO = {"InputPath", "OutputPath"}
_ALLOWED: dict[str, set[str]] = {
    "Pass": _COMMON | _FLOW | _JSONPATH_IO
    | {"Parameters", "ResultPath", "Result", "Assign", "Output"},
    "Task": _COMMON | _FLOW | _JSONPATH_IO | {
        "Resource", "Parameters", "ResultPath", "ResultSelector", "Retry", "Catch",
        "TimeoutSeconds", "TimeoutSecondsPath", "HeartbeatSeconds", "HeartbeatSecondsPath",
        "Credentials", "Assign", "Arguments", "Output",
    },
    "Choice": _COMMON | _JSONPATH_IO | {"Choices", "Default", "Assign", "Output"},
    "Wait": _COMMON | _FLOW | _JSONPATH_IO | {
        "Seconds", "Timestamp", "SecondsPath", "TimestampPath", "Assign", "Output",
    },
    "Succeed": _COMMON | _JSONPATH_IO | {"Output"},
    "Fail": _COMMON | {"Error", "Cause", "ErrorPath", "CausePath"},
    "Parallel": _COMMON | _FLOW | _JSONPATH_IO | {
        "Branches", "Parameters", "ResultPath", "ResultSelector", "Retry", "Catch", "Assign",
        "Arguments", "Output",
    },
    "Map": _COMMON | _FLOW | _JSONPATH_IO | {
        "ItemProcessor", "Iterator", "ItemsPath", "Items", "ItemSelector", "Parameters",
        "MaxConcurrency", "MaxConcurrencyPath", "ResultPath", "ResultSelector", "Retry", "Catch",
        "ItemReader", "ItemBatcher", "ResultWriter", "ToleratedFailureCount",
        "ToleratedFailureCountPath", "ToleratedFailurePercentage",
        "ToleratedFailurePercentagePath", "Label", "Assign", "Arguments", "Output",
    },
}
_JSONATA_FORBIDDEN = {
    "InputPath", "OutputPath", "Parameters", "ResultPath", "ResultSelector", "ItemsPath",
    "SecondsPath", "TimestampPath", "ErrorPath", "CausePath", "MaxConcurrencyPath",
    "ToleratedFailureCountPath", "ToleratedFailurePercentagePath", "TimeoutSecondsPath",
    "HeartbeatSecondsPath",
}
_JSONPATH_FORBIDDEN = {"Arguments", "Output", "Items"}
_READER_RESOURCES = ("arn:aws:states:::s3:getObject", "arn:aws:states:::s3:listObjectsV2")
_WRITER_RESOURCE = "arn:aws:states:::s3:putObject"
MAX_BATCH_BYTES = 262144
_NAME_FORBIDDEN = set(' \t\n\r<>{}[]?*"#%\\^|~`$&,;:/')


@dataclass(frozen=True)
class Diagnostic:
    code: str
    message: str
    location: str
    severity: str = "ERROR"

    def text(self) -> str:
        return f"{self.code}: {self.message} at {self.location}"

    def to_json(self) -> dict[str, str]:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "location": self.location}


class DefinitionError(Exception):
    def __init__(self, diagnostics: list[Diagnostic]) -> None:
        self.diagnostics = diagnostics
        super().__init__(self.message())

    def message(self) -> str:
        if self.diagnostics and self.diagnostics[0].code == "INVALID_JSON_DESCRIPTION":
            return f"Invalid State Machine Definition: '{self.diagnostics[0].message}'"
        body = ", ".join(d.text() for d in self.diagnostics)
        return f"Invalid State Machine Definition: '{body}'"


def valid_name(name: object) -> bool:
    """Names of state machines, executions and activities."""
    return (
        isinstance(name, str)
        and 1 <= len(name) <= 80
        and not any(c in _NAME_FORBIDDEN or ord(c) < 32 or 0x7F <= ord(c) <= 0x9F for c in name)
    )


def parse_definition(text: str, express: bool = False) -> Machine:
    compiler = _Compiler(express)
    machine = compiler.compile_text(text)
    if compiler.diagnostics or machine is None:
        raise DefinitionError(compiler.diagnostics)
    return machine


def validate_definition(text: str, express: bool = False) -> list[Diagnostic]:
    compiler = _Compiler(express)
    compiler.compile_text(text)
    return compiler.diagnostics


class _Compiler:
    def __init__(self, express: bool) -> None:
        self.express = express
        self.diagnostics: list[Diagnostic] = []
        self.names: set[str] = set()
        self.uses_callbacks = False

    def error(self, message: str, location: str, code: str = "SCHEMA_VALIDATION_FAILED") -> None:
        self.diagnostics.append(Diagnostic(code, message, location or "/"))

    def fields(self, raw: dict[str, Any], loc: str, allowed: set[str]) -> None:
        for key in raw:
            if key not in allowed:
                self.error(f"Field '{key}' is not supported", loc)

    def compile_text(self, text: str) -> Machine | None:
        if not isinstance(text, str) or not text.strip():
            self.error("Definition must be a valid JSON object", "/",
                       "INVALID_JSON_DESCRIPTION")
            return None
        try:
            raw = json.loads(text)
        except ValueError as exc:
            self.error(f"Invalid JSON: {exc}", "/", "INVALID_JSON_DESCRIPTION")
            return None
        if not isinstance(raw, dict):
            self.error("Definition must be a valid JSON object", "/",
                       "INVALID_JSON_DESCRIPTION")
            return None
        language = raw.get("QueryLanguage", "JSONPath")
        if language not in ("JSONPath", "JSONata"):
            self.error("The value for the field 'QueryLanguage' must be one of [JSONPath, "
                       "JSONata]", "/QueryLanguage")
            language = "JSONPath"
        machine = self.machine(raw, "", top=True, jsonata=language == "JSONata")
        if machine is not None:
            machine.uses_callbacks = self.uses_callbacks
        return machine

    def machine(self, raw: Any, loc: str, top: bool, jsonata: bool) -> Machine | None:
        if not isinstance(raw, dict):
            self.error("must be an object", loc)
            return None
        allowed = {"StartAt", "States", "Comment"} | (
            {"Version", "TimeoutSeconds", "QueryLanguage"} if top else {"ProcessorConfig"}
        )
        missing = [f for f in ("StartAt", "States") if f not in raw]
        if missing:
            self.error(f"These fields are required: [{', '.join(missing)}]", loc)
        self.fields(raw, loc, allowed)
        timeout = raw.get("TimeoutSeconds")
        if top and timeout is not None and not _positive_int(timeout):
            self.error("The value for the field 'TimeoutSeconds' must be a positive integer",
                       f"{loc}/TimeoutSeconds")
        if top and "Version" in raw and raw["Version"] != "1.0":
            self.error("The value for the field 'Version' must be '1.0'", f"{loc}/Version")
        states_raw = raw.get("States")
        start_at = raw.get("StartAt")
        if "States" in raw and (not isinstance(states_raw, dict) or not states_raw):
            self.error("The field 'States' must be a non-empty object", f"{loc}/States")
            return None
        if missing or not isinstance(states_raw, dict):
            return None
        if not isinstance(start_at, str):
            self.error("The field 'StartAt' must be a string", f"{loc}/StartAt")
            return None
        states: dict[str, State] = {}
        for name, body in states_raw.items():
            state = self.state(name, body, f"{loc}/States/{name}", jsonata)
            if state is not None:
                states[name] = state
        if start_at not in states_raw:
            self.error(f"Missing 'Next' target: {start_at}", f"{loc}/StartAt",
                       "MISSING_TRANSITION_TARGET")
        self.check_graph(states, states_raw, start_at, loc)
        return Machine(start_at, states, timeout if top else None, jsonata)

    def check_graph(self, states: dict[str, State], raw: dict[str, Any], start: str,
                    loc: str) -> None:
        targets: dict[str, list[tuple[str, str]]] = {}
        for name, state in states.items():
            edges: list[tuple[str, str]] = []
            if state.next is not None:
                edges.append((state.next, "Next"))
            for i, choice in enumerate(state.choices):
                edges.append((choice.next, f"Choices[{i}]/Next"))
            if state.default is not None:
                edges.append((state.default, "Default"))
            for i, catcher in enumerate(state.catch):
                edges.append((catcher.next, f"Catch[{i}]/Next"))
            for target, where in edges:
                if target not in raw:
                    self.error(f"Missing 'Next' target: {target}",
                               f"{loc}/States/{name}/{where}", "MISSING_TRANSITION_TARGET")
            targets[name] = edges
        if start not in raw:
            return
        seen = {start}
        todo = [start]
        while todo:
            for target, _ in targets.get(todo.pop(), []):
                if target in raw and target not in seen:
                    seen.add(target)
                    todo.append(target)
        for name in raw:
            if name not in seen:
                self.error(f'State "{name}" is not reachable.', f"{loc}/States/{name}",
                           "MISSING_TRANSITION_TARGET")
        if not any(s.end or s.type in ("Succeed", "Fail") for s in states.values()):
            self.error("No terminal state found in the state machine", loc or "/",
                       "MISSING_TERMINAL_STATE")

    # ------------------------------------------------------------------ states

    def state(self, name: str, raw: Any, loc: str, machine_jsonata: bool) -> State | None:
        if len(name) > 80:
            self.error("State names must be at most 80 characters", loc)
        if name in self.names:
            self.error(f"Duplicate State name: {name}", loc, "DUPLICATE_STATE_NAME")
        self.names.add(name)
        if not isinstance(raw, dict):
            self.error("A state must be an object", loc)
            return None
        kind = raw.get("Type")
        if kind is None:
            self.error("These fields are required: [Type]", loc)
            return None
        if kind not in STATE_TYPES:
            self.error(f"The value for the field 'Type' must be one of {list(STATE_TYPES)}",
                       f"{loc}/Type")
            return None
        language = raw.get("QueryLanguage")
        if language is not None and language not in ("JSONPath", "JSONata"):
            self.error("The value for the field 'QueryLanguage' must be one of [JSONPath, "
                       "JSONata]", f"{loc}/QueryLanguage")
        if machine_jsonata and language == "JSONPath":
            self.error("'QueryLanguage' can not be 'JSONPath' if set to 'JSONata' for whole "
                       "state machine", f"{loc}/QueryLanguage")
        jsonata = language == "JSONata" or (machine_jsonata and language is None)
        for key in raw:
            if key not in _ALLOWED[kind]:
                self.error(f"Field '{key}' is not supported", loc)
            elif jsonata and key in _JSONATA_FORBIDDEN:
                self.error(f"The field '{key}' is not supported for JSONata", f"{loc}/{key}")
            elif not jsonata and key in _JSONPATH_FORBIDDEN:
                self.error(f"The field '{key}' is only supported for JSONata", f"{loc}/{key}")
        state = State(name=name, type=kind, jsonata=jsonata)
        self.flow(state, raw, loc)
        if not jsonata:
            state.input_path = self.path_field(raw, "InputPath", loc)
            state.output_path = self.path_field(raw, "OutputPath", loc)
            state.result_path = self.path_field(raw, "ResultPath", loc, reference=True)
            if "Parameters" in raw and kind != "Map":
                state.parameters = self.template(raw["Parameters"], f"{loc}/Parameters")
            if "ResultSelector" in raw:
                state.result_selector = self.template(raw["ResultSelector"],
                                                      f"{loc}/ResultSelector")
            if "Assign" in raw:
                state.assign = self.assign(raw["Assign"], f"{loc}/Assign")
        else:
            if "Arguments" in raw:
                state.arguments, state.has_arguments = raw["Arguments"], True
            if "Output" in raw:
                state.output, state.has_output = raw["Output"], True
            if "Assign" in raw:
                state.jsonata_assign = self.jsonata_assign(raw["Assign"], f"{loc}/Assign")
        if jsonata:
            self.check_jsonata(raw, loc)
        if "Retry" in raw:
            state.retry = self.retriers(raw["Retry"], f"{loc}/Retry")
        if "Catch" in raw:
            state.catch = self.catchers(raw["Catch"], f"{loc}/Catch", jsonata)
        getattr(self, "state_" + kind.lower())(state, raw, loc)
        return state

    def check_jsonata(self, raw: dict[str, Any], loc: str) -> None:
        for key in ("Arguments", "Output", "Assign", "Items", "ItemSelector", "Seconds",
                    "Timestamp", "TimeoutSeconds", "HeartbeatSeconds", "Error", "Cause",
                    "MaxConcurrency", "ToleratedFailureCount", "ToleratedFailurePercentage"):
            if key in raw:
                problem = jsonata.check_template(raw[key])
                if problem:
                    self.error(f"The JSONata expression in '{key}' is not valid: {problem}",
                               f"{loc}/{key}")
        for i, choice in enumerate(raw.get("Choices") or []):
            if isinstance(choice, dict):
                for key in ("Condition", "Output", "Assign"):
                    problem = jsonata.check_template(choice.get(key))
                    if problem:
                        self.error(f"The JSONata expression in '{key}' is not valid: {problem}",
                                   f"{loc}/Choices[{i}]/{key}")

    def flow(self, state: State, raw: dict[str, Any], loc: str) -> None:
        terminal = state.type in ("Succeed", "Fail", "Choice")
        has_next, has_end = "Next" in raw, "End" in raw
        if terminal:
            return
        if has_next and has_end:
            self.error("Only one of 'Next' or 'End' may be present", loc)
        elif not has_next and not has_end:
            self.error("These fields are required: [Next | End]", loc)
        if has_next:
            if isinstance(raw["Next"], str):
                state.next = raw["Next"]
            else:
                self.error("The field 'Next' must be a string", f"{loc}/Next")
        if has_end:
            if raw["End"] is True:
                state.end = True
            else:
                self.error("The value for the field 'End' must be true", f"{loc}/End")

    def path_field(self, raw: dict[str, Any], key: str, loc: str,
                   reference: bool = False) -> Path | None:
        if key not in raw:
            return ROOT
        value = raw[key]
        if value is None:
            return None
        path = self.compile_path_value(value, f"{loc}/{key}", key)
        if path is not None and reference and (path.root != "$" or not path.definite):
            self.error(f"The value for the field '{key}' must be a valid Reference Path",
                       f"{loc}/{key}")
            return ROOT
        return path or ROOT

    def compile_path_value(self, value: Any, loc: str, key: str) -> Path | None:
        try:
            if not isinstance(value, str):
                raise PathSyntaxError(key)
            return compile_path(value)
        except PathSyntaxError:
            self.error(f"The value for the field '{key}' must be a valid JSONPath", loc)
            return None

    def optional_path(self, raw: dict[str, Any], key: str, loc: str) -> Path | None:
        if key not in raw:
            return None
        return self.compile_path_value(raw[key], f"{loc}/{key}", key)

    def template(self, value: Any, loc: str) -> Expression | None:
        try:
            return compile_template(value, loc)
        except TemplateError as exc:
            self.error(f"The value for the field '{exc.key}' must be a valid JSONPath or a "
                       "valid intrinsic function call", loc)
            return None

    def assign(self, value: Any, loc: str) -> Expression | None:
        if not isinstance(value, dict):
            self.error("The field 'Assign' must be an object", loc)
            return None
        for key in value:
            name = key[:-2] if key.endswith(".$") else key
            if not _variable_name(name):
                self.error(f"The variable name '{name}' is not valid", loc)
        return self.template(value, loc)

    def jsonata_assign(self, value: Any, loc: str) -> Any:
        if not isinstance(value, dict):
            self.error("The field 'Assign' must be an object", loc)
            return None
        for key in value:
            if not _variable_name(key):
                self.error(f"The variable name '{key}' is not valid", loc)
        return value

    def handlers(self, raw: Any, loc: str, field: str,
                 noun: str) -> Iterator[tuple[dict[str, Any], str, tuple[str, ...]]]:
        """Each well-formed retrier or catcher of ``field``: (item, location, ErrorEquals)."""
        if not isinstance(raw, list):
            self.error(f"The field '{field}' must be an array", loc)
            return
        for i, item in enumerate(raw):
            where = f"{loc}[{i}]"
            if not isinstance(item, dict):
                self.error(f"A {noun} must be an object", where)
                continue
            yield item, where, self.error_equals(item, where, last=i == len(raw) - 1)

    def retriers(self, raw: Any, loc: str) -> list[Retrier]:
        out = []
        for item, where, errors in self.handlers(raw, loc, "Retry", "retrier"):
            self.fields(item, where, {"ErrorEquals", "IntervalSeconds", "MaxAttempts",
                                      "BackoffRate", "MaxDelaySeconds", "JitterStrategy",
                                      "Comment"})
            retrier = Retrier(errors)
            if "IntervalSeconds" in item:
                if _positive_int(item["IntervalSeconds"]):
                    retrier.interval = float(item["IntervalSeconds"])
                else:
                    self.error("The value for the field 'IntervalSeconds' must be a positive "
                               "integer", f"{where}/IntervalSeconds")
            if "MaxAttempts" in item:
                if _int(item["MaxAttempts"]) and item["MaxAttempts"] >= 0:
                    retrier.max_attempts = int(item["MaxAttempts"])
                else:
                    self.error("The value for the field 'MaxAttempts' must be a non-negative "
                               "integer", f"{where}/MaxAttempts")
            if "BackoffRate" in item:
                rate = item["BackoffRate"]
                if _number(rate) and rate >= 1.0:
                    retrier.backoff = float(rate)
                else:
                    self.error("The value for the field 'BackoffRate' must be a number greater "
                               "than or equal to 1.0", f"{where}/BackoffRate")
            if "MaxDelaySeconds" in item:
                if _positive_int(item["MaxDelaySeconds"]):
                    retrier.max_delay = float(item["MaxDelaySeconds"])
                else:
                    self.error("The value for the field 'MaxDelaySeconds' must be a positive "
                               "integer", f"{where}/MaxDelaySeconds")
            if "JitterStrategy" in item:
                if item["JitterStrategy"] in ("FULL", "NONE"):
                    retrier.jitter = item["JitterStrategy"] == "FULL"
                else:
                    self.error("The value for the field 'JitterStrategy' must be one of "
                               "[FULL, NONE]", f"{where}/JitterStrategy")
            out.append(retrier)
        return out

    def error_equals(self, item: dict[str, Any], where: str, last: bool) -> tuple[str, ...]:
        errors = item.get("ErrorEquals")
        if errors is None:
            self.error("These fields are required: [ErrorEquals]", where)
            return ()
        if (not isinstance(errors, list) or not errors
                or not all(isinstance(e, str) for e in errors)):
            self.error("The field 'ErrorEquals' must be a non-empty array of strings",
                       f"{where}/ErrorEquals")
            return ()
        if "States.ALL" in errors and (len(errors) != 1 or not last):
            self.error("States.ALL must appear alone in the last retrier or catcher",
                       f"{where}/ErrorEquals")
        return tuple(errors)

    def catchers(self, raw: Any, loc: str, jsonata: bool) -> list[Catcher]:
        out = []
        for item, where, errors in self.handlers(raw, loc, "Catch", "catcher"):
            self.fields(item, where, {"ErrorEquals", "Next", "Comment", "Assign",
                                      "Output" if jsonata else "ResultPath"})
            nxt = item.get("Next")
            if not isinstance(nxt, str):
                self.error("These fields are required: [Next]", where)
                nxt = ""
            catcher = Catcher(errors, nxt)
            if not jsonata:
                catcher.result_path = self.path_field(item, "ResultPath", where, reference=True)
                if "Assign" in item:
                    catcher.assign = self.assign(item["Assign"], f"{where}/Assign")
            else:
                if "Output" in item:
                    catcher.output, catcher.has_output = item["Output"], True
                if "Assign" in item:
                    catcher.jsonata_assign = self.jsonata_assign(item["Assign"], f"{where}/Assign")
            out.append(catcher)
        return out

    # ------------------------------------------------------------------ per type

    def state_pass(self, state: State, raw: dict[str, Any], loc: str) -> None:
        if "Result" in raw:
            state.result, state.has_result = raw["Result"], True

    def state_succeed(self, state: State, raw: dict[str, Any], loc: str) -> None:
        pass

    def state_fail(self, state: State, raw: dict[str, Any], loc: str) -> None:
        for key in ("Error", "Cause"):
            if key in raw and key + "Path" in raw:
                self.error(f"Only one of '{key}' or '{key}Path' may be present", loc)
            if key in raw:
                if not isinstance(raw[key], str):
                    self.error(f"The field '{key}' must be a string", f"{loc}/{key}")
                setattr(state, key.lower(), raw[key])
            if key + "Path" in raw:
                value = raw[key + "Path"]
                try:
                    if not isinstance(value, str):
                        raise ValueError
                    expr = compile_expression(value)
                except (ValueError, PathSyntaxError, IntrinsicSyntaxError):
                    self.error(f"The value for the field '{key}Path' must be a valid JSONPath "
                               "or a valid intrinsic function call", f"{loc}/{key}Path")
                    continue
                setattr(state, key.lower() + "_path", described(expr, key + "Path", value))

    def state_task(self, state: State, raw: dict[str, Any], loc: str) -> None:
        resource = raw.get("Resource")
        if not isinstance(resource, str):
            self.error("These fields are required: [Resource]", loc)
            return
        if not resource.startswith("arn:"):
            self.error(f"Value is not a valid resource ARN: {resource}", f"{loc}/Resource",
                       "INVALID_RESOURCE")
        state.resource = resource
        callback = resource.endswith(".waitForTaskToken") or ".sync" in resource.split(":")[-1]
        activity = ":activity:" in resource
        if callback or activity:
            self.uses_callbacks = True
            if self.express:
                pattern = ".waitForTaskToken" if resource.endswith(".waitForTaskToken") else (
                    "activity" if activity else ".sync")
                self.error(f"Express state machine does not support '{pattern}' service "
                           "integration", f"{loc}/Resource")
        for key, attr, path_attr in (
            ("TimeoutSeconds", "timeout_seconds", "timeout_path"),
            ("HeartbeatSeconds", "heartbeat_seconds", "heartbeat_path"),
        ):
            if key in raw and key + "Path" in raw:
                self.error(f"Only one of '{key}' or '{key}Path' may be present", loc)
            if key in raw:
                value = raw[key]
                if isinstance(value, str) and state.jsonata:
                    setattr(state, attr, value)
                elif _positive_int(value):
                    setattr(state, attr, int(value))
                else:
                    self.error(f"The value for the field '{key}' must be a positive integer",
                               f"{loc}/{key}")
            setattr(state, path_attr, self.optional_path(raw, key + "Path", loc))
        if (isinstance(state.timeout_seconds, int) and isinstance(state.heartbeat_seconds, int)
                and state.heartbeat_seconds >= state.timeout_seconds):
            self.error("The value of 'HeartbeatSeconds' must be less than 'TimeoutSeconds'",
                       f"{loc}/HeartbeatSeconds")

    def state_choice(self, state: State, raw: dict[str, Any], loc: str) -> None:
        choices = raw.get("Choices")
        if not isinstance(choices, list) or not choices:
            self.error("These fields are required: [Choices]" if choices is None
                       else "The field 'Choices' must be a non-empty array", loc)
            choices = []
        for i, item in enumerate(choices):
            where = f"{loc}/Choices[{i}]"
            if not isinstance(item, dict):
                self.error("A choice rule must be an object", where)
                continue
            nxt = item.get("Next")
            if not isinstance(nxt, str):
                self.error("These fields are required: [Next]", where)
                nxt = ""
            choice = Choice(None, nxt)
            if state.jsonata:
                self.fields(item, where, {"Condition", "Next", "Comment", "Assign", "Output"})
                if "Condition" not in item:
                    self.error("These fields are required: [Condition]", where)
                choice.condition = item.get("Condition")
                if "Assign" in item:
                    choice.jsonata_assign = self.jsonata_assign(item["Assign"], f"{where}/Assign")
                if "Output" in item:
                    choice.output, choice.has_output = item["Output"], True
            else:
                rule = {k: v for k, v in item.items() if k not in ("Next", "Comment", "Assign")}
                try:
                    choice.rule = compile_rule(rule, where)
                except RuleError as exc:
                    self.error(str(exc), exc.location)
                if "Assign" in item:
                    choice.assign = self.assign(item["Assign"], f"{where}/Assign")
            state.choices.append(choice)
        if "Default" in raw:
            if isinstance(raw["Default"], str):
                state.default = raw["Default"]
            else:
                self.error("The field 'Default' must be a string", f"{loc}/Default")

    def state_wait(self, state: State, raw: dict[str, Any], loc: str) -> None:
        present = [k for k in ("Seconds", "Timestamp", "SecondsPath", "TimestampPath") if k in raw]
        if len(present) != 1:
            self.error("Exactly one of 'Seconds', 'Timestamp', 'SecondsPath' or 'TimestampPath'"
                       " must be present", loc)
            return
        key = present[0]
        value = raw[key]
        if key == "Seconds":
            if state.jsonata and isinstance(value, str):
                state.seconds = value
            elif _int(value) and value >= 0:
                state.seconds = int(value)
            else:
                self.error("The value for the field 'Seconds' must be a non-negative integer",
                           f"{loc}/Seconds")
        elif key == "Timestamp":
            if state.jsonata and isinstance(value, str) and value.startswith("{%"):
                state.timestamp = value
            elif parse_timestamp(value) is None:
                self.error("The value for the field 'Timestamp' must be a valid ISO-8601 "
                           "timestamp", f"{loc}/Timestamp")
            else:
                state.timestamp = value
        elif key == "SecondsPath":
            state.seconds_path = self.compile_path_value(value, f"{loc}/{key}", key)
        else:
            state.timestamp_path = self.compile_path_value(value, f"{loc}/{key}", key)

    def state_parallel(self, state: State, raw: dict[str, Any], loc: str) -> None:
        branches = raw.get("Branches")
        if not isinstance(branches, list) or not branches:
            self.error("These fields are required: [Branches]" if branches is None
                       else "The field 'Branches' must be a non-empty array", loc)
            return
        for i, branch in enumerate(branches):
            machine = self.machine(branch, f"{loc}/Branches[{i}]", top=False,
                                   jsonata=state.jsonata)
            if machine is not None:
                state.branches.append(machine)

    def state_map(self, state: State, raw: dict[str, Any], loc: str) -> None:
        key = "ItemProcessor" if "ItemProcessor" in raw else "Iterator"
        if key not in raw:
            self.error("These fields are required: [ItemProcessor]", loc)
            return
        if "ItemProcessor" in raw and "Iterator" in raw:
            self.error("Only one of 'ItemProcessor' or 'Iterator' may be present", loc)
        processor = raw[key]
        config = processor.get("ProcessorConfig", {}) if isinstance(processor, dict) else {}
        if not isinstance(config, dict):
            config = {}
        mode = config.get("Mode", "INLINE")
        if mode not in ("INLINE", "DISTRIBUTED"):
            self.error("The value for the field 'Mode' must be one of [INLINE, DISTRIBUTED]",
                       f"{loc}/{key}/ProcessorConfig/Mode")
        state.distributed = mode == "DISTRIBUTED"
        if state.distributed:
            child_type = config.get("ExecutionType")
            if child_type not in ("STANDARD", "EXPRESS"):
                self.error("The value for the field 'ExecutionType' must be one of [STANDARD, "
                           "EXPRESS] when 'Mode' is DISTRIBUTED",
                           f"{loc}/{key}/ProcessorConfig/ExecutionType")
            else:
                state.child_type = child_type
        else:
            for dist_key in ("ItemReader", "ItemBatcher", "ResultWriter"):
                if dist_key in raw:
                    self.error(f"The field '{dist_key}' is only supported for a Map state in "
                               "DISTRIBUTED mode", f"{loc}/{dist_key}")
        if "ItemReader" in raw:
            self.item_reader(raw["ItemReader"], f"{loc}/ItemReader", state.jsonata)
            state.item_reader = raw["ItemReader"]
        if "ResultWriter" in raw:
            self.result_writer(raw["ResultWriter"], f"{loc}/ResultWriter", state.jsonata)
            state.result_writer = raw["ResultWriter"]
        state.processor = self.machine(processor, f"{loc}/{key}", top=False,
                                       jsonata=state.jsonata)
        if not state.jsonata:
            state.items_path = self.path_field(raw, "ItemsPath", loc)
            selector_key = "ItemSelector" if "ItemSelector" in raw else "Parameters"
            if selector_key in raw:
                state.item_selector = self.template(raw[selector_key], f"{loc}/{selector_key}")
                state.has_item_selector = True
            if "ItemSelector" in raw and "Parameters" in raw:
                self.error("Only one of 'ItemSelector' or 'Parameters' may be present", loc)
        else:
            if "Items" in raw:
                state.items, state.has_items = raw["Items"], True
            if "ItemSelector" in raw:
                state.jsonata_item_selector = raw["ItemSelector"]
                state.has_item_selector = True
        for field, attr, check in (
            ("MaxConcurrency", "max_concurrency", lambda v: _int(v) and v >= 0),
            ("ToleratedFailureCount", "tolerated_count", lambda v: _int(v) and v >= 0),
            ("ToleratedFailurePercentage", "tolerated_percentage",
             lambda v: _number(v) and 0 <= v <= 100),
        ):
            if field in raw:
                value = raw[field]
                if (state.jsonata and isinstance(value, str)) or _check(check, value):
                    setattr(state, attr, value)
                else:
                    self.error(f"The value for the field '{field}' is not valid",
                               f"{loc}/{field}")
            setattr(state, attr + "_path", self.optional_path(raw, field + "Path", loc))
        if "ItemBatcher" in raw:
            state.batcher = self.item_batcher(raw["ItemBatcher"], f"{loc}/ItemBatcher",
                                              state.jsonata)
        if "Label" in raw:
            state.label = str(raw["Label"])

    # ------------------------------------------------------------------ Distributed Map

    def enum(self, raw: dict[str, Any], key: str, values: tuple[str, ...], loc: str) -> None:
        if key in raw and raw[key] not in values:
            self.error(f"The value for the field '{key}' must be one of [{', '.join(values)}]",
                       f"{loc}/{key}")

    def count_field(self, raw: dict[str, Any], key: str, loc: str, jsonata: bool,
                    limit: int | None = None) -> None:
        """``Key`` (a non-negative integer, or ``{% %}`` in JSONata) or ``KeyPath``."""
        if key in raw and key + "Path" in raw:
            self.error(f"Only one of '{key}' or '{key}Path' may be present", loc)
        if key in raw:
            value = raw[key]
            if not (jsonata and isinstance(value, str)) and not (
                    _int(value) and value >= 0 and (limit is None or value <= limit)):
                bound = f" no greater than {limit}" if limit is not None else ""
                self.error(f"The value for the field '{key}' must be a non-negative "
                           f"integer{bound}", f"{loc}/{key}")
        if key + "Path" in raw:
            if jsonata:
                self.error(f"The field '{key}Path' is not supported for JSONata",
                           f"{loc}/{key}Path")
            else:
                self.compile_path_value(raw[key + "Path"], f"{loc}/{key}Path", key + "Path")

    def item_reader(self, raw: Any, loc: str, jsonata: bool) -> None:
        if not isinstance(raw, dict):
            self.error("The field 'ItemReader' must be an object", loc)
            return
        self.fields(raw, loc, {"Resource", "ReaderConfig",
                               "Arguments" if jsonata else "Parameters"})
        if raw.get("Resource") not in _READER_RESOURCES:
            self.error(f"The value for the field 'Resource' must be one of "
                       f"[{', '.join(_READER_RESOURCES)}]", f"{loc}/Resource")
        config = raw.get("ReaderConfig", {})
        if not isinstance(config, dict):
            self.error("The field 'ReaderConfig' must be an object", f"{loc}/ReaderConfig")
            return
        where = f"{loc}/ReaderConfig"
        self.fields(config, where, {"InputType", "CSVHeaderLocation", "CSVHeaders",
                                    "CSVDelimiter", "MaxItems", "MaxItemsPath",
                                    "ManifestType", "ItemsPointer"})
        self.enum(config, "InputType", ("CSV", "JSON", "JSONL", "MANIFEST", "PARQUET"), where)
        self.enum(config, "CSVHeaderLocation", ("FIRST_ROW", "GIVEN"), where)
        self.enum(config, "CSVDelimiter", ("COMMA", "PIPE", "SEMICOLON", "SPACE", "TAB"), where)
        if config.get("CSVHeaderLocation") == "GIVEN" and not (
                isinstance(config.get("CSVHeaders"), list) and config["CSVHeaders"]):
            self.error("These fields are required: [CSVHeaders]", where)
        self.count_field(config, "MaxItems", where, jsonata, limit=100_000_000)

    def result_writer(self, raw: Any, loc: str, jsonata: bool) -> None:
        if not isinstance(raw, dict) or not raw:
            self.error("The field 'ResultWriter' must be a non-empty object", loc)
            return
        self.fields(raw, loc, {"Resource", "WriterConfig",
                               "Arguments" if jsonata else "Parameters"})
        if "Resource" in raw and raw["Resource"] != _WRITER_RESOURCE:
            self.error(f"The value for the field 'Resource' must be {_WRITER_RESOURCE}",
                       f"{loc}/Resource")
        if "WriterConfig" not in raw and "Resource" not in raw:
            self.error("These fields are required: [Resource | WriterConfig]", loc)
        config = raw.get("WriterConfig")
        if config is None:
            return
        if not isinstance(config, dict):
            self.error("The field 'WriterConfig' must be an object", f"{loc}/WriterConfig")
            return
        where = f"{loc}/WriterConfig"
        self.fields(config, where, {"OutputType", "Transformation"})
        self.enum(config, "OutputType", ("JSON", "JSONL"), where)
        self.enum(config, "Transformation", ("NONE", "COMPACT", "FLATTEN"), where)

    def item_batcher(self, raw: Any, loc: str, jsonata: bool) -> JSON:
        if not isinstance(raw, dict):
            self.error("The field 'ItemBatcher' must be an object", loc)
            return None
        self.fields(raw, loc, {"MaxItemsPerBatch", "MaxItemsPerBatchPath",
                               "MaxInputBytesPerBatch", "MaxInputBytesPerBatchPath",
                               "BatchInput"})
        if not any(k in raw for k in ("MaxItemsPerBatch", "MaxItemsPerBatchPath",
                                      "MaxInputBytesPerBatch", "MaxInputBytesPerBatchPath")):
            self.error("At least one of 'MaxItemsPerBatch', 'MaxItemsPerBatchPath', "
                       "'MaxInputBytesPerBatch' or 'MaxInputBytesPerBatchPath' must be present",
                       loc)
        self.count_field(raw, "MaxItemsPerBatch", loc, jsonata)
        self.count_field(raw, "MaxInputBytesPerBatch", loc, jsonata, limit=MAX_BATCH_BYTES)
        batch_input = raw.get("BatchInput")
        if batch_input is not None and not jsonata:
            if not isinstance(batch_input, dict):
                self.error("The field 'BatchInput' must be an object", f"{loc}/BatchInput")
            else:
                self.template(batch_input, f"{loc}/BatchInput")
        return raw


def _check(check: Any, value: Any) -> bool:
    return bool(check(value))


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _positive_int(v: Any) -> bool:
    return _int(v) and v > 0


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _variable_name(name: str) -> bool:
    return (
        bool(name)
        and (name[0].isalpha() or name[0] == "_")
        and all(c.isalnum() or c == "_" for c in name)
        and name != "states"
        and len(name) <= 80
    )

