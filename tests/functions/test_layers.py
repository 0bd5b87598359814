"""The layer store: versions, the checks a function's Layers pass, the merged /opt stacks,
and how long a deleted layer version's code lives."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path
from typing import Any

import pytest

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.functions.code import CodeStore
from kiln.functions.layers import LayerStore
from kiln.functions.types import FunctionRecord
from kiln.store import Database
from tests.conftest import make_zip
from tests.functions.test_code import raw_zip, symlink_info

ARNS = ArnBuilder("us-east-1", "000000000000")


class Harness:
    """A LayerStore beside stand-in function versions (their configurations)."""

    def __init__(self, root: Path) -> None:
        self.code = CodeStore(root / "code")
        self.configs: list[dict[str, Any]] = []
        self.layers = LayerStore(Database(root / "db.sqlite3"), self.code, ARNS,
                                 lambda: self.configs, self.collect_code)

    def collect_code(self, sha_hex: str) -> None:
        if not self.layers.code_in_use(sha_hex):
            self.code.remove(sha_hex)

    def publish(self, name: str, data: bytes) -> str:
        info, _sha = self.layers.publish(name, {"Content": {
            "ZipFile": base64.b64encode(data).decode()}})
        return str(info["LayerVersionArn"])

    def function(self, *arns: str) -> FunctionRecord:
        config = {"FunctionName": "fn", "Version": "$LATEST",
                  "Layers": self.layers.attach(list(arns), 0)}
        self.configs.append(config)
        return FunctionRecord(config, "code")


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_versions_count_up_per_layer(harness: Harness) -> None:
    assert harness.publish("a", make_zip({"x": "1"})).endswith(":layer:a:1")
    assert harness.publish("a", make_zip({"x": "2"})).endswith(":layer:a:2")
    assert harness.publish("b", make_zip({"x": "1"})).endswith(":layer:b:1")
    info, _sha = harness.layers.get(ARNS.layer("a"), "2")
    assert info["Version"] == 2


def test_later_layers_win_in_the_merged_stack(harness: Harness) -> None:
    first = harness.publish("first", make_zip({
        "python/mod.py": "A", "only-first.txt": "1", "thing/inside.txt": "dir in first",
        "bin/tool": "#!/bin/sh\n"}, executable=("bin/tool",)))
    second = harness.publish("second", raw_zip(
        ("python/mod.py", b"B"), ("thing", b"a file in second"),
        (symlink_info("link"), b"only-first.txt")))
    opt = harness.layers.opt_dir(harness.function(first, second))
    assert opt is not None
    assert (opt / "python/mod.py").read_text() == "B"
    assert (opt / "only-first.txt").read_text() == "1"
    assert (opt / "thing").read_text() == "a file in second"  # a file replaces a directory
    assert os.readlink(opt / "link") == "only-first.txt"
    assert os.access(opt / "bin/tool", os.X_OK)
    assert stat.S_IMODE((opt / "python").stat().st_mode) == 0o555  # readable, not writable
    # The other order is another stack, built once and then reused.
    reverse = harness.layers.opt_dir(harness.function(second, first))
    assert reverse is not None and reverse != opt
    assert (reverse / "python/mod.py").read_text() == "A"
    assert (reverse / "thing/inside.txt").read_text() == "dir in first"
    assert harness.layers.opt_dir(harness.function(first, second)) == opt
    assert harness.layers.opt_dir(harness.function()) is None


@pytest.mark.parametrize(("arns", "message"), [
    (["arn:aws:lambda:us-east-1:000000000000:layer:a:1"] * 6,
     "Cannot reference more than 5 layers."),
    (["arn:aws:lambda:us-east-1:000000000000:layer:zzz:1"],
     "Layer version arn:aws:lambda:us-east-1:000000000000:layer:zzz:1 does not exist."),
    (["arn:aws:lambda:us-east-1:000000000000:layer:a"], "failed to satisfy constraint"),
    (["arn:aws:lambda:us-east-1:000000000000:layer:a:1",
      "arn:aws:lambda:us-east-1:000000000000:layer:a:2"],
     "Two different versions of the same layer"),
    (["arn:aws:lambda:eu-west-1:000000000000:layer:a:1"], "not in the same region"),
    ([7], "failed to satisfy constraint"),
])
def test_attach_refuses(harness: Harness, arns: list[Any], message: str) -> None:
    harness.publish("a", make_zip({"x": "1"}))
    harness.publish("a", make_zip({"x": "2"}))
    with pytest.raises(AwsError) as caught:
        harness.layers.attach(arns, 0)
    assert caught.value.code == "InvalidParameterValueException"
    assert message in caught.value.message


def test_attach_counts_code_and_layers_against_250_mb(harness: Harness) -> None:
    data = make_zip({"a.txt": "a" * 1000})
    arn = harness.publish("a", data)
    assert harness.layers.attach([arn], 262_144_000 - 1000) == [
        {"Arn": arn, "CodeSize": len(data)}]
    with pytest.raises(AwsError, match="The actual size is 262144001 bytes"):
        harness.layers.attach([arn], 262_144_000 - 999)


def test_a_deleted_version_lives_while_a_function_version_uses_it(harness: Harness) -> None:
    arn = harness.publish("a", make_zip({"python/mod.py": "A"}))
    info, sha_hex = harness.layers.get("a", "1")
    record = harness.function(arn)
    harness.layers.delete("a", "1")
    with pytest.raises(AwsError):
        harness.layers.get("a", "1")
    with pytest.raises(AwsError, match="does not exist"):
        harness.layers.attach([arn], 0)
    assert harness.code.task_root(sha_hex).is_dir()  # still named by a function version
    opt = harness.layers.opt_dir(record)
    assert opt is not None and (opt / "python/mod.py").read_text() == "A"

    harness.configs.clear()  # the function version went
    harness.layers.collect()
    assert not harness.code.task_root(sha_hex).exists()
    assert not opt.exists()
    assert info["Content"]["CodeSize"] > 0
