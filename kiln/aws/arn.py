"""Lambda ARNs and the function identifiers AWS accepts in paths.

    parse_function_id("arn:aws:lambda:us-east-1:000000000000:function:f:live")
    -> FunctionId(name="f", qualifier="live")
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kiln.aws.errors import AwsError

NAME_RE = re.compile(r"^[a-zA-Z0-9_-]{1,64}\Z")
QUALIFIER_RE = re.compile(r"^(\$LATEST|[a-zA-Z0-9_-]{1,128})\Z")
# The forms of botocore's FunctionName pattern: name, partial ARN (account:function:name) and
# full ARN, each with an optional :qualifier.
_FUNCTION_ID_RE = re.compile(
    r"^(?:arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d):)?"
    r"(?:(?P<account>\d{12}):)?"
    r"(?:function:)?"
    r"(?P<name>[a-zA-Z0-9_-]+)"
    r"(?::(?P<qualifier>\$LATEST|[a-zA-Z0-9_-]+))?$"
)


@dataclass(frozen=True)
class FunctionId:
    name: str
    qualifier: str | None = None


def parse_function_id(raw: str, account_id: str | None = None) -> FunctionId:
    """Split a name / partial ARN / full ARN into name and qualifier, or raise AwsError."""
    if len(raw) > 256:
        raise AwsError.invalid_parameter(
            f"1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy "
            "constraint: Member must have length less than or equal to 256"
        )
    match = _FUNCTION_ID_RE.fullmatch(raw)
    # A bare "function:name" without account is not a form AWS accepts.
    if match is None or (raw.startswith("function:")) or len(match["name"]) > 64:
        raise AwsError.invalid_parameter(
            f"1 validation error detected: Value '{raw}' at 'functionName' failed to satisfy "
            "constraint: Member must satisfy regular expression pattern: "
            "(arn:(aws[a-zA-Z-]*)?:lambda:)?([a-z]{2}(-gov)?-[a-z]+-\\d{1}:)?(\\d{12}:)?"
            "(function:)?([a-zA-Z0-9-_]+)(:(\\$LATEST|[a-zA-Z0-9-_]+))?"
        )
    if match["account"] is None and ":" in raw and match["qualifier"] is None:
        raise AwsError.invalid_parameter(f"Invalid function identifier: {raw}")
    if account_id and match["account"] and match["account"] != account_id:
        raise AwsError(
            "AccessDeniedException",
            f"The function {raw} belongs to another account.",
            403,
        )
    return FunctionId(match["name"], match["qualifier"])


@dataclass(frozen=True)
class ArnBuilder:
    region: str
    account_id: str

    def function(self, name: str, qualifier: str | None = None) -> str:
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:function:{name}"
        return f"{arn}:{qualifier}" if qualifier else arn

    def layer(self, name: str, version: int | None = None) -> str:
        arn = f"arn:aws:lambda:{self.region}:{self.account_id}:layer:{name}"
        return f"{arn}:{version}" if version is not None else arn
