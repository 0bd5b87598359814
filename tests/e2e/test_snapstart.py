"""SnapStart through boto3 against ``kiln serve``: the configuration fields and their errors."""

from __future__ import annotations

from typing import Any

from tests.conftest import ROLE, expect_error, make_zip, unique_name

HANDLER = "def handler(event, context):\n    return 'ok'\n"


def _create(lambda_api: Any, function_name: str, **kwargs: Any) -> dict[str, Any]:
    return dict(lambda_api.create_function(
        FunctionName=function_name, Runtime=kwargs.pop("Runtime", "python3.11"), Role=ROLE,
        Handler="app.handler", Code={"ZipFile": make_zip({"app.py": HANDLER})}, **kwargs))


def test_snapstart_configuration_and_versions(lambda_client: Any) -> None:
    name = unique_name("snap")
    created = _create(lambda_client, name,
                      SnapStart={"ApplyOn": "PublishedVersions"})
    assert created["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    version = lambda_client.publish_version(FunctionName=name)
    assert version["SnapStart"]["ApplyOn"] == "PublishedVersions"
    got = lambda_client.get_function_configuration(FunctionName=name, Qualifier=version["Version"])
    assert got["SnapStart"] == version["SnapStart"]
    latest = lambda_client.get_function_configuration(FunctionName=name)
    assert latest["SnapStart"] == {"ApplyOn": "PublishedVersions", "OptimizationStatus": "Off"}
    # Publishing again without a change answers the same version (OptimizationStatus aside).
    assert lambda_client.publish_version(FunctionName=name)["Version"] == version["Version"]

    updated = lambda_client.update_function_configuration(FunctionName=name,
                                                           SnapStart={"ApplyOn": "None"})
    assert updated["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
    plain = lambda_client.publish_version(FunctionName=name)
    assert plain["Version"] != version["Version"]
    assert plain["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}

    default = _create(lambda_client, unique_name("snap"))
    assert default["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}


def test_snapstart_errors(lambda_client: Any) -> None:
    name = unique_name("snap")
    error = expect_error(lambda_client, "ValidationException", 400, _create,
                         lambda_api=lambda_client, function_name=name,
                         SnapStart={"ApplyOn": "Always"})
    assert "'Always' at 'snapStart.applyOn'" in error.response["Error"]["Message"]
    error = expect_error(lambda_client, "InvalidParameterValueException", 400, _create,
                         lambda_api=lambda_client, function_name=name, Runtime="provided.al2023",
                         SnapStart={"ApplyOn": "PublishedVersions"})
    assert error.response["Error"]["Message"] == (
        "provided.al2023 is not supported for SnapStart enabled functions.")
    # Nothing was written by the rejected requests.
    expect_error(lambda_client, "ResourceNotFoundException", 404,
                 lambda_client.get_function, FunctionName=name)

    _create(lambda_client, name)
    expect_error(lambda_client, "ValidationException", 400,
                 lambda_client.update_function_configuration, FunctionName=name,
                 SnapStart={})
    expect_error(lambda_client, "InvalidParameterValueException", 400,
                 lambda_client.update_function_configuration, FunctionName=name,
                 Runtime="provided.al2023", SnapStart={"ApplyOn": "PublishedVersions"})
    unchanged = lambda_client.get_function_configuration(FunctionName=name)
    assert unchanged["Runtime"] == "python3.11"
    assert unchanged["SnapStart"] == {"ApplyOn": "None", "OptimizationStatus": "Off"}
