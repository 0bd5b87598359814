"""Function identifiers in paths: names, partial ARNs, full ARNs, qualifiers."""

from __future__ import annotations

import pytest

from kiln.aws.arn import ArnBuilder, FunctionId, parse_function_id
from kiln.aws.errors import AwsError

ACCOUNT = "000000000000"


@pytest.mark.parametrize(("raw", "expected"), [
    ("my-function", FunctionId("my-function")),
    ("my_function_2", FunctionId("my_function_2")),
    ("my-function:$LATEST", FunctionId("my-function", "$LATEST")),
    ("my-function:live", FunctionId("my-function", "live")),
    ("my-function:7", FunctionId("my-function", "7")),
    ("000000000000:function:my-function", FunctionId("my-function")),
    ("000000000000:function:my-function:live", FunctionId("my-function", "live")),
    ("arn:aws:lambda:us-east-1:000000000000:function:my-function", FunctionId("my-function")),
    ("arn:aws:lambda:us-east-1:000000000000:function:my-function:$LATEST",
     FunctionId("my-function", "$LATEST")),
    ("arn:aws-us-gov:lambda:us-gov-west-1:000000000000:function:f:3", FunctionId("f", "3")),
    ("a" * 64, FunctionId("a" * 64)),
])
def test_accepted_forms(raw: str, expected: FunctionId) -> None:
    assert parse_function_id(raw, ACCOUNT) == expected


@pytest.mark.parametrize("raw", [
    "",
    "a" * 65,
    "bad name",
    "bad/name",
    "bad.name",
    "function:my-function",
    "my-function:",
    "my-function:bad qualifier",
    "my-function\n",
    "my-function:live\n",
    "arn:aws:lambda:us-east-1:000000000000:function:",
    "arn:aws:lambda:nowhere:000000000000:function:f",
    "arn:aws:s3:::bucket",
    "00000000000:function:f",  # 11-digit account
    "x" * 257,
])
def test_rejected_forms(raw: str) -> None:
    with pytest.raises(AwsError) as caught:
        parse_function_id(raw, ACCOUNT)
    assert caught.value.code == "InvalidParameterValueException"
    assert caught.value.status == 400
    assert caught.value.message


def test_other_account_is_refused() -> None:
    with pytest.raises(AwsError) as caught:
        parse_function_id("arn:aws:lambda:us-east-1:111111111111:function:f", ACCOUNT)
    assert caught.value.status == 403
    # Without a configured account any account is accepted.
    assert parse_function_id("111111111111:function:f") == FunctionId("f")


def test_arn_builder() -> None:
    arns = ArnBuilder("eu-west-1", "123456789012")
    assert arns.function("f") == "arn:aws:lambda:eu-west-1:123456789012:function:f"
    assert arns.function("f", "live") == "arn:aws:lambda:eu-west-1:123456789012:function:f:live"
    assert arns.layer("l") == "arn:aws:lambda:eu-west-1:123456789012:layer:l"
    assert arns.layer("l", 0) == "arn:aws:lambda:eu-west-1:123456789012:layer:l:0"
    built = arns.function("name-1", "$LATEST")
    assert parse_function_id(built, "123456789012") == FunctionId("name-1", "$LATEST")
