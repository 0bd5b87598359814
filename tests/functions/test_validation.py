"""Server-side checks of function settings (boto3 checks only types and minimums)."""

from __future__ import annotations

from typing import Any

import pytest

from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions import validation

ROLE = "arn:aws:iam::000000000000:role/kiln-test"


def changes(**body: Any) -> dict[str, Any]:
    return validation.configuration_changes(Fields(body))


def rejected(code: str, **body: Any) -> AwsError:
    with pytest.raises(AwsError) as caught:
        changes(**body)
    assert caught.value.code == code
    assert caught.value.status == 400
    return caught.value


def test_every_accepted_field_is_returned() -> None:
    body = {
        "Role": ROLE, "Handler": "pkg.mod.fn", "Description": "d" * 256, "Timeout": 900,
        "MemorySize": 10240, "EphemeralStorage": {"Size": 10240}, "Runtime": "python3.11",
        "Environment": {"Variables": {"A1": "x", "b_2": ""}},
        "TracingConfig": {"Mode": "Active"}, "LoggingConfig": {"LogFormat": "JSON"},
        "DeadLetterConfig": {"TargetArn": "arn:aws:sqs:us-east-1:000000000000:q"},
    }
    result = changes(**body)
    assert result == {**body, "Environment": {"Variables": {"A1": "x", "b_2": ""}}}


def test_nothing_set_changes_nothing() -> None:
    assert changes() == {}
    assert changes(Timeout=None, Role=None) == {}


@pytest.mark.parametrize(("field", "low", "high", "label"), [
    ("Timeout", 1, 900, "timeout"),
    ("MemorySize", 128, 10240, "memorySize"),
])
def test_integer_ranges(field: str, low: int, high: int, label: str) -> None:
    assert changes(**{field: low}) == {field: low}
    assert changes(**{field: high}) == {field: high}
    assert changes(**{field: float(low)}) == {field: low}
    below = rejected("InvalidParameterValueException", **{field: low - 1})
    assert f"Value '{low - 1}' at '{label}'" in below.message
    assert f"greater than or equal to {low}" in below.message
    above = rejected("InvalidParameterValueException", **{field: high + 1})
    assert f"less than or equal to {high}" in above.message


@pytest.mark.parametrize("value", ["3", True, [3], {"v": 3}, 3.5])
def test_wrong_integer_types_are_invalid_content(value: Any) -> None:
    rejected("InvalidRequestContentException", Timeout=value)


def test_ephemeral_storage() -> None:
    assert changes(EphemeralStorage={"Size": 512}) == {"EphemeralStorage": {"Size": 512}}
    for size in (511, 10241, 0):
        rejected("InvalidParameterValueException", EphemeralStorage={"Size": size})
    rejected("InvalidParameterValueException", EphemeralStorage={})
    rejected("InvalidRequestContentException", EphemeralStorage=512)


@pytest.mark.parametrize("handler", [
    "index.handler", "a", "pkg/mod.fn", "x" * 128, "app.Handler::handleRequest",
])
def test_good_handlers(handler: str) -> None:
    assert changes(Handler=handler) == {"Handler": handler}


@pytest.mark.parametrize("handler", ["app handler", " app.handler", "app.handler\n",
                                     "app\t.h", "x" * 129, ""])
def test_bad_handlers(handler: str) -> None:
    rejected("InvalidParameterValueException", Handler=handler)


@pytest.mark.parametrize("role", [
    ROLE, "arn:aws:iam::123456789012:role/service-role/my-role",
    "arn:aws-cn:iam::123456789012:role/a+b=c,d.e@f-g_h",
])
def test_good_roles(role: str) -> None:
    assert changes(Role=role) == {"Role": role}


@pytest.mark.parametrize("role", [
    "role", "arn:aws:iam::12345:role/x", "arn:aws:iam::123456789012:user/x",
    "arn:aws:iam::123456789012:role/a b", "arn:aws:iam::123456789012:role/x\n", "",
])
def test_bad_roles(role: str) -> None:
    rejected("InvalidParameterValueException", Role=role)


def test_description_length() -> None:
    rejected("InvalidParameterValueException", Description="d" * 257)
    assert changes(Description="") == {"Description": ""}


@pytest.mark.parametrize("key", sorted(validation.RESERVED_ENV))
def test_reserved_environment_variables(key: str) -> None:
    error = rejected("InvalidParameterValueException",
                     Environment={"Variables": {"OK_ONE": "1", key: "x"}})
    assert f"Reserved keys used in this request: {key}" in error.message


@pytest.mark.parametrize("key", ["1ABC", "A", "A-B", "A.B", "", "É1"])
def test_bad_environment_keys(key: str) -> None:
    rejected("InvalidParameterValueException", Environment={"Variables": {key: "x"}})


def test_environment_size_limit_is_4kb_of_compact_json() -> None:
    # {"AB":"xxx..."} is 9 bytes of JSON around the value.
    at_limit = {"AB": "x" * (4096 - 9)}
    assert changes(Environment={"Variables": at_limit}) == {
        "Environment": {"Variables": at_limit}}
    error = rejected("InvalidParameterValueException",
                     Environment={"Variables": {"AB": "x" * (4096 - 8)}})
    assert "4KB" in error.message
    assert 'String measured: {"AB":"xxx' in error.message
    # Separators between variables count too: 2 variables of 2040 bytes of key+value each.
    two = {"A1": "y" * 2038, "A2": "z" * 2038}  # 4080 bytes of keys and values, 4093 of JSON
    assert changes(Environment={"Variables": two})["Environment"]["Variables"] == two
    rejected("InvalidParameterValueException",
             Environment={"Variables": {"A1": "y" * 2042, "A2": "z" * 2042}})
    # Escaped and non-ASCII characters count as their JSON escapes.
    rejected("InvalidParameterValueException",
             Environment={"Variables": {"AB": '"' * 2100}})
    rejected("InvalidParameterValueException",
             Environment={"Variables": {"AB": "é" * 2100}})


def test_environment_wrong_types() -> None:
    rejected("InvalidRequestContentException", Environment={"Variables": {"AB": 1}})
    rejected("InvalidRequestContentException", Environment={"Variables": ["AB"]})
    rejected("InvalidRequestContentException", Environment="AB=1")
    assert changes(Environment={}) == {"Environment": {"Variables": {}}}


def test_check_name() -> None:
    assert validation.check_name("my-function_1") == "my-function_1"
    assert validation.check_name("a" * 64) == "a" * 64
    for bad in (None, "", "a" * 65, "bad name", "bad:name", "arn:aws:lambda:x", "ü", "fn\n"):
        with pytest.raises(AwsError) as caught:
            validation.check_name(bad)
        assert caught.value.code == "InvalidParameterValueException"


def test_architectures() -> None:
    assert validation.architectures(Fields({})) is None
    assert validation.architectures(Fields({"Architectures": ["arm64"]})) == ["arm64"]
    assert validation.architectures(Fields({"Architectures": ["x86_64"]})) == ["x86_64"]
    for bad in ([], ["x86_64", "arm64"], ["sparc"], ["ARM64"]):
        with pytest.raises(AwsError) as caught:
            validation.architectures(Fields({"Architectures": bad}))
        assert caught.value.code == "InvalidParameterValueException"
    with pytest.raises(AwsError) as caught:
        validation.architectures(Fields({"Architectures": "arm64"}))
    assert caught.value.code == "InvalidRequestContentException"


def test_check_name_accepts_arns_as_create_function_does() -> None:
    account = "000000000000"
    assert validation.check_name(f"arn:aws:lambda:us-east-1:{account}:function:f-1",
                                 account) == "f-1"
    assert validation.check_name(f"{account}:function:f_2", account) == "f_2"
    for bad in ("f:1", f"arn:aws:lambda:us-east-1:{account}:function:f:live",
                f"{account}:function:f:$LATEST", f"{account}:function:", "function:f",
                f"{account}:function:" + "n" * 65):
        with pytest.raises(AwsError) as caught:
            validation.check_name(bad, account)
        assert caught.value.code == "InvalidParameterValueException", bad
    with pytest.raises(AwsError) as caught:
        validation.check_name("arn:aws:lambda:us-east-1:111111111111:function:f", account)
    assert caught.value.status == 403
