"""Asynchronous invocation settings of a function version or alias (PutFunctionEventInvokeConfig
and its siblings): retries, maximum event age and OnSuccess/OnFailure destinations.

    configs = EventInvokeConfigs(db, functions)
    configs.put("fn", "live", body)        # -> the FunctionEventInvokeConfig the API answers
    configs.effective("fn", "live")        # what the async queue applies (AWS's defaults if unset)

A config belongs to the qualifier an Event invoke names: an unqualified invoke uses $LATEST's,
an invoke of an alias the alias's.  Rows live in ``event_invoke_configs`` and, as the queue
reads them for every event, in memory too (this store is their only writer on a node).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, replace
from typing import Any

from kiln.aws.arn import parse_function_id
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions.paging import page_of
from kiln.functions.service import LATEST, FunctionService
from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS event_invoke_configs (
        function TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        maximum_retry_attempts INTEGER,
        maximum_event_age INTEGER,
        on_success TEXT,
        on_failure TEXT,
        last_modified REAL NOT NULL,
        PRIMARY KEY (function, qualifier)
    )""",
]
DEFAULT_RETRY_ATTEMPTS = 2
DEFAULT_EVENT_AGE_SECONDS = 21600
_DESTINATION_PATTERN = (r"^$|arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\-])+:"
                        r"([a-z]{2}((-gov)|(-iso(b?)))?-[a-z]+-\d{1})?:(\d{12})?:(.*)")
_DESTINATION_RE = re.compile(_DESTINATION_PATTERN)
_DESTINATION_MAX = 350
#: Services AWS accepts as destinations; Kiln delivers to Lambda (the others once they exist).
_DESTINATION_SERVICES = ("lambda", "sqs", "sns", "events")


@dataclass(frozen=True)
class EventInvokeConfig:
    function: str
    qualifier: str
    maximum_retry_attempts: int | None = None
    maximum_event_age: int | None = None
    on_success: str | None = None
    on_failure: str | None = None
    last_modified: float = 0.0

    @property
    def retries(self) -> int:
        if self.maximum_retry_attempts is None:
            return DEFAULT_RETRY_ATTEMPTS
        return self.maximum_retry_attempts

    @property
    def max_age(self) -> int:
        if self.maximum_event_age is None:
            return DEFAULT_EVENT_AGE_SECONDS
        return self.maximum_event_age

    def answer(self, function_arn: str) -> dict[str, Any]:
        """The FunctionEventInvokeConfig shape: unset limits are left out, as AWS does."""
        body: dict[str, Any] = {
            "LastModified": round(self.last_modified, 3),
            "FunctionArn": function_arn,
            "DestinationConfig": {
                "OnSuccess": {"Destination": self.on_success} if self.on_success else {},
                "OnFailure": {"Destination": self.on_failure} if self.on_failure else {},
            },
        }
        if self.maximum_retry_attempts is not None:
            body["MaximumRetryAttempts"] = self.maximum_retry_attempts
        if self.maximum_event_age is not None:
            body["MaximumEventAgeInSeconds"] = self.maximum_event_age
        return body


class EventInvokeConfigs:
    def __init__(self, db: Database, functions: FunctionService) -> None:
        self.db = db
        self.functions = functions
        db.migrate(SCHEMA)
        self._configs: dict[tuple[str, str], EventInvokeConfig] = {
            (row["function"], row["qualifier"]): EventInvokeConfig(
                row["function"], row["qualifier"], row["maximum_retry_attempts"],
                row["maximum_event_age"], row["on_success"], row["on_failure"],
                row["last_modified"])
            for row in db.query("SELECT * FROM event_invoke_configs")}

    def effective(self, name: str, qualifier: str | None) -> EventInvokeConfig:
        key = (name, qualifier or LATEST)
        return self._configs.get(key) or EventInvokeConfig(*key)

    # -- the API's operations -----------------------------------------------------------------

    def put(self, name: str, qualifier: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """PutFunctionEventInvokeConfig: replaces the whole configuration."""
        changes = self._validated(name, qualifier, body)
        config = EventInvokeConfig(name, qualifier or LATEST, **changes)
        return self._save(config)

    def update(self, name: str, qualifier: str | None, body: dict[str, Any]) -> dict[str, Any]:
        """UpdateFunctionEventInvokeConfig: changes only the settings the request names."""
        changes = self._validated(name, qualifier, body)
        current = self._configs.get((name, qualifier or LATEST))
        if current is None:
            raise self._missing(name, qualifier)
        return self._save(replace(current, **changes))

    def get(self, name: str, qualifier: str | None) -> dict[str, Any]:
        config = self._configs.get((name, qualifier or LATEST))
        if config is None:
            raise self._missing(name, qualifier)
        return config.answer(self._arn(config))

    def delete(self, name: str, qualifier: str | None) -> None:
        if (name, qualifier or LATEST) not in self._configs:
            raise self._missing(name, qualifier)
        self._remove(name, qualifier or LATEST)

    def list(self, name: str, marker: str | None,
             max_items: int) -> tuple[list[dict[str, Any]], str | None]:
        self._check_function(name, None)
        qualifiers = sorted(q for (function, q) in self._configs if function == name)
        page, next_marker = page_of(qualifiers, str, max_items, marker)
        answers = [self._configs[(name, q)] for q in page]
        return [c.answer(self._arn(c)) for c in answers], next_marker

    async def prune(self, name: str) -> None:
        """Forget the configs of versions and aliases that no longer exist (a FunctionService
        listener: called after a function, or one of its versions, was deleted or changed)."""
        for function, qualifier in [key for key in self._configs if key[0] == name]:
            try:
                self.functions.get(function, qualifier)
            except AwsError:
                self._remove(function, qualifier)

    # -- helpers ------------------------------------------------------------------------------

    def _validated(self, name: str, qualifier: str | None,
                   body: dict[str, Any]) -> dict[str, Any]:
        """The settings a Put/Update request gives, checked in AWS's order: the request's
        shape (ValidationException), then its meaning, then the function and destinations."""
        fields = Fields(body)
        retries = fields.integer("MaximumRetryAttempts")
        max_age = fields.integer("MaximumEventAgeInSeconds")
        destinations = fields.mapping("DestinationConfig")
        targets: dict[str, str | None] = {}
        problems = []
        if retries is not None:
            problems += _range_problems(retries, "maximumRetryAttempts", 0, 2)
        if max_age is not None:
            problems += _range_problems(max_age, "maximumEventAgeInSeconds", 60, 21600)
        if destinations is not None:
            for key in ("OnSuccess", "OnFailure"):
                target = Fields(destinations).mapping(key)
                if target is None:
                    continue
                arn = Fields(target).string("Destination")
                label = f"destinationConfig.{key[0].lower()}{key[1:]}.destination"
                if arn is not None:
                    problems += _destination_problems(arn, label)
                targets[key] = arn or None
        if problems:
            count = len(problems)
            raise AwsError("ValidationException",
                           f"{count} validation error{'s' if count > 1 else ''} detected: "
                           + "; ".join(problems), 400)
        if retries is None and max_age is None and destinations is None:
            raise AwsError.invalid_parameter(
                "You must specify at least one of error handling or destination setting.")
        self._check_function(name, qualifier)
        self._check_destinations(name, targets)
        changes: dict[str, Any] = {"last_modified": time.time()}
        if retries is not None:
            changes["maximum_retry_attempts"] = retries
        if max_age is not None:
            changes["maximum_event_age"] = max_age
        if "OnSuccess" in targets:
            changes["on_success"] = targets["OnSuccess"]
        if "OnFailure" in targets:
            changes["on_failure"] = targets["OnFailure"]
        return changes

    def _check_function(self, name: str, qualifier: str | None) -> None:
        try:
            self.functions.get(name, qualifier)
        except AwsError as exc:
            if exc.status != 404:
                raise
            raise AwsError.not_found("The function doesn't exist.") from None

    def _check_destinations(self, name: str, targets: dict[str, str | None]) -> None:
        """A Lambda destination must exist and not be the function itself; a service Lambda
        cannot deliver to makes the whole configuration invalid."""
        for arn in (targets.get("OnFailure"), targets.get("OnSuccess")):
            if arn is None:
                continue
            service = arn.split(":")[2]
            if service not in _DESTINATION_SERVICES:
                raise AwsError.invalid_parameter(
                    "The provided destination config DestinationConfig("
                    f"onSuccess={_describe('OnSuccess', targets.get('OnSuccess'))}, "
                    f"onFailure={_describe('OnFailure', targets.get('OnFailure'))}) is invalid.")
            if service != "lambda":
                continue
            try:
                target = parse_function_id(arn, self.functions.arns.account_id)
                if arn.split(":")[3] != self.functions.arns.region:
                    raise AwsError.not_found(arn)
                self.functions.get(target.name, target.qualifier)
            except AwsError:
                raise AwsError.invalid_parameter(
                    f"The destination ARN {arn} is invalid.") from None
            if target.name == name:
                raise AwsError.invalid_parameter(
                    "You can't specify the function as a destination for itself.")

    def _missing(self, name: str, qualifier: str | None) -> AwsError:
        arn = self.functions.arns.function(name, qualifier or LATEST)
        return AwsError.not_found(f"The function {arn} doesn't have an EventInvokeConfig")

    def _arn(self, config: EventInvokeConfig) -> str:
        return self.functions.arns.function(config.function, config.qualifier)

    def _save(self, config: EventInvokeConfig) -> dict[str, Any]:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO event_invoke_configs (function, qualifier, "
                "maximum_retry_attempts, maximum_event_age, on_success, on_failure, "
                "last_modified) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (config.function, config.qualifier, config.maximum_retry_attempts,
                 config.maximum_event_age, config.on_success, config.on_failure,
                 config.last_modified))
        self._configs[(config.function, config.qualifier)] = config
        return config.answer(self._arn(config))

    def _remove(self, name: str, qualifier: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM event_invoke_configs WHERE function = ? AND qualifier = ?",
                       (name, qualifier))
        self._configs.pop((name, qualifier), None)


def _range_problems(value: int, label: str, low: int, high: int) -> list[str]:
    if value < low:
        constraint = f"greater than or equal to {low}"
    elif value > high:
        constraint = f"less than or equal to {high}"
    else:
        return []
    return [f"Value '{value}' at '{label}' failed to satisfy constraint: Member must have "
            f"value {constraint}"]


def _destination_problems(arn: str, label: str) -> list[str]:
    if len(arn) > _DESTINATION_MAX:
        return [f"Value '{arn}' at '{label}' failed to satisfy constraint: Member must have "
                f"length less than or equal to {_DESTINATION_MAX}"]
    if not _DESTINATION_RE.match(arn):
        return [f"Value '{arn}' at '{label}' failed to satisfy constraint: Member must satisfy "
                f"regular expression pattern: {_DESTINATION_PATTERN}"]
    return []


def _describe(key: str, arn: str | None) -> str:
    return f"{key}(destination={arn})" if arn else "null"
