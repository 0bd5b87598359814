"""Function tags (TagResource, UntagResource, ListTags, CreateFunction's ``Tags``) and the
network and sandbox choices they carry.

Tags belong to the function, not to a version: every version and alias shows the same ones,
and only the unqualified function ARN takes them.  AWS's limits apply: at most 50 per function,
keys 1-128 characters, values up to 256, both of letters, digits, spaces and ``_.:/=+-@``, and
keys starting with ``aws:`` are reserved.

    tags = FunctionTags(db)
    tags.put("fn", validated({"team": "a", EGRESS_TAG: "allow"}))
    egress = egress_policy("tagged", tags.get)     # egress("fn") -> True
    sandbox = sandbox_policy("process", tags.get)  # sandbox("fn") -> "process"

``kiln:egress`` = ``allow`` gives the function's execution environments the host's network
(they can reach Kiln itself and the outside); without it they have only their own loopback.
The ``sandbox_egress`` setting can instead allow (``all``) or deny (``none``) every function.

``kiln:sandbox`` = ``microvm`` or ``process`` runs the function's execution environments on that
sandbox backend instead of the ``sandbox_backend`` setting's (``unisolated`` is no choice: a tag
must not take a function out of isolation).
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Callable, Iterable
from typing import Any

from kiln.aws.errors import AwsError
from kiln.functions.validation import field_error, null_error
from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS function_tags (
        function TEXT PRIMARY KEY,
        tags TEXT NOT NULL
    )""",
]
EGRESS_TAG = "kiln:egress"
EGRESS_MODES = ("tagged", "all", "none")
SANDBOX_TAG = "kiln:sandbox"
SANDBOX_CHOICES = ("process", "microvm")
MAX_TAGS = 50
_TAG_PATTERN = r"[\p{L}\p{Z}\p{N}_.:/=+\-@]*"
_TAG_PUNCTUATION = frozenset("_.:/=+-@")
_KEY_CONSTRAINTS = ("[Member must have length less than or equal to 128, Member must have "
                    "length greater than or equal to 1, Member must satisfy regular expression "
                    f"pattern: {_TAG_PATTERN}]")
_VALUE_CONSTRAINTS = ("[Member must have length less than or equal to 256, Member must have "
                      "length greater than or equal to 0, Member must satisfy regular "
                      f"expression pattern: {_TAG_PATTERN}]")
#: botocore's TaggableResource: the ARNs Lambda accepts in the tagging operations' path.
TAGGABLE_RE = re.compile(
    r"arn:(aws[a-zA-Z-]*):lambda:(eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\d{1}:\d{12}:"
    r"(function:[a-zA-Z0-9-_]+(:(\$LATEST|[a-zA-Z0-9-_]+))?|code-signing-config:csc-[a-z0-9]{17}"
    r"|event-source-mapping:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}"
    r"-[0-9a-fA-F]{12}|(capacity-provider|network-connector):[a-zA-Z0-9-_]{1,64})")


def _allowed(text: str) -> bool:
    return all(c in _TAG_PUNCTUATION or unicodedata.category(c)[0] in "LZN" for c in text)


def _shown(tags: dict[str, Any]) -> str:
    """A map as AWS's validation messages print it."""
    return "{" + ", ".join(f"{k}={v}" for k, v in tags.items()) + "}"


def validated(tags: Any) -> dict[str, str]:
    """``tags`` (a request's ``Tags`` member) checked against AWS's constraints on its keys and
    values, or the AWS error."""
    if not isinstance(tags, dict) or not all(isinstance(v, str) for v in tags.values()):
        raise AwsError.invalid_content(
            "Could not parse request body into json: Could not parse payload into json: "
            "Cannot deserialize value of type `java.util.Map` for field 'Tags'")
    _check_count(tags)
    for key, value in tags.items():
        if not 1 <= len(key) <= 128 or not _allowed(key):
            raise field_error(_shown(tags), "tags", "Map keys must satisfy constraint: "
                              f"{_KEY_CONSTRAINTS}", "ValidationException")
        if len(value) > 256 or not _allowed(value):
            raise field_error(_shown(tags), "tags", "Map value must satisfy constraint: "
                              f"{_VALUE_CONSTRAINTS}", "ValidationException")
        if key.lower().startswith("aws:"):
            raise AwsError.invalid_parameter(
                f"Invalid tag key {key}: tag keys starting with 'aws:' are reserved for AWS "
                "use.")
    choice = tags.get(SANDBOX_TAG)
    if choice is not None and choice not in SANDBOX_CHOICES:
        raise AwsError.invalid_parameter(
            f"Invalid tag value {choice} for key {SANDBOX_TAG}: the value must be one of "
            f"{', '.join(SANDBOX_CHOICES)}.")
    return dict(tags)


def validated_keys(keys: list[str]) -> list[str]:
    """UntagResource's ``tagKeys`` query parameters, checked."""
    if not keys:
        raise null_error("tagKeys", "ValidationException")
    for key in keys:
        if not 1 <= len(key) <= 128 or not _allowed(key):
            raise field_error(f"[{', '.join(keys)}]", "tagKeys", "Member must satisfy "
                              f"constraint: {_KEY_CONSTRAINTS}", "ValidationException")
    return keys


def _check_count(tags: dict[str, str]) -> None:
    if len(tags) > MAX_TAGS:
        raise AwsError.invalid_parameter("Number of tags exceeds function tag limit.")


class FunctionTags:
    """Each function's tags, stored in SQLite and held in memory (read per cold start)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)
        self._tags: dict[str, dict[str, str]] = {
            row["function"]: json.loads(row["tags"])
            for row in db.query("SELECT function, tags FROM function_tags")}

    def get(self, function: str) -> dict[str, str]:
        return dict(self._tags.get(function, {}))

    def put(self, function: str, tags: dict[str, str]) -> None:
        """Set a function's tags (``validated`` ones; joins the caller's transaction)."""
        _check_count(tags)
        with self.db.transaction() as tx:
            if tags:
                tx.execute("INSERT OR REPLACE INTO function_tags (function, tags) VALUES (?, ?)",
                           (function, json.dumps(tags)))
            else:
                tx.execute("DELETE FROM function_tags WHERE function = ?", (function,))
        if tags:
            self._tags[function] = dict(tags)
        else:
            self._tags.pop(function, None)

    def add(self, function: str, tags: dict[str, str]) -> None:
        """TagResource: add or overwrite ``tags`` (``validated`` ones)."""
        if not tags:
            raise AwsError.invalid_parameter(
                "An error occurred and the request cannot be processed.")
        self.put(function, {**self.get(function), **tags})

    def discard(self, function: str, keys: Iterable[str]) -> None:
        """UntagResource: keys the function does not have are ignored."""
        remaining = self.get(function)
        for key in keys:
            remaining.pop(key, None)
        self.put(function, remaining)

    def remove(self, function: str) -> None:
        """The function is deleted (joins the caller's transaction)."""
        self.put(function, {})


def egress_policy(mode: str,
                  tags: Callable[[str], dict[str, str]]) -> Callable[[str], bool]:
    """Whether a function's environments get the host's network, under the ``sandbox_egress``
    setting ``mode``: ``tagged`` (when tagged ``kiln:egress=allow``), ``all`` or ``none``."""
    if mode == "all":
        return lambda _function: True
    if mode == "none":
        return lambda _function: False
    if mode == "tagged":
        return lambda function: tags(function).get(EGRESS_TAG) == "allow"
    raise ValueError(f"sandbox_egress must be one of {', '.join(EGRESS_MODES)}, not {mode!r}")


def sandbox_policy(default: str,
                   tags: Callable[[str], dict[str, str]]) -> Callable[[str], str]:
    """The sandbox backend a function's environments run on: its ``kiln:sandbox`` tag's, else
    ``default`` (the ``sandbox_backend`` setting)."""

    def sandbox(function: str) -> str:
        choice = tags(function).get(SANDBOX_TAG, default)
        return choice if choice in SANDBOX_CHOICES else default  # never out of isolation

    return sandbox
