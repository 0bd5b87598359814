"""The content-addressed code store: validation, unpacking, read-only trees, zip attacks."""

from __future__ import annotations

import base64
import hashlib
import io
import os
import stat
import zipfile
from pathlib import Path

import pytest

from kiln.aws.errors import AwsError
from kiln.functions.code import CodeStore, remove_tree
from tests.conftest import make_zip


@pytest.fixture
def store(tmp_path: Path) -> CodeStore:
    return CodeStore(tmp_path / "code")


def entries(store: CodeStore) -> tuple[list[str], list[str]]:
    return (sorted(os.listdir(store.root / "tasks")), sorted(os.listdir(store.root / "zips")))


def raw_zip(*members: tuple[zipfile.ZipInfo | str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, content in members:
            archive.writestr(info, content)
    return buffer.getvalue()


def symlink_info(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


def assert_bad_zip(store: CodeStore, data: bytes) -> AwsError:
    before = entries(store)
    with pytest.raises(AwsError) as caught:
        store.save(data)
    assert caught.value.code == "InvalidParameterValueException"
    assert caught.value.status == 400
    assert entries(store) == before, "a rejected zip must leave nothing behind"
    return caught.value


def test_save_hashes_stores_and_unpacks(store: CodeStore) -> None:
    data = make_zip({"app.py": "x = 1\n", "pkg/__init__.py": "", "pkg/run.sh": "#!/bin/sh\n"},
                    executable=("pkg/run.sh",))
    info = store.save(data)
    digest = hashlib.sha256(data)
    assert info.sha_hex == digest.hexdigest()
    assert info.sha256 == base64.b64encode(digest.digest()).decode()
    assert info.size == len(data)
    assert info.unzipped_size == len("x = 1\n") + len("#!/bin/sh\n")
    assert store.zip_path(info.sha_hex).read_bytes() == data
    root = store.task_root(info.sha_hex)
    assert (root / "app.py").read_text() == "x = 1\n"
    assert (root / "pkg" / "__init__.py").read_text() == ""
    assert stat.S_IMODE((root / "app.py").stat().st_mode) == 0o444
    assert stat.S_IMODE((root / "pkg" / "run.sh").stat().st_mode) == 0o555
    assert stat.S_IMODE(root.stat().st_mode) == 0o555
    assert stat.S_IMODE((root / "pkg").stat().st_mode) == 0o555
    assert entries(store) == ([info.sha_hex], [f"{info.sha_hex}.zip"])


def test_saving_the_same_zip_twice_is_idempotent(store: CodeStore) -> None:
    data = make_zip({"app.py": "x = 1\n"})
    first = store.save(data)
    second = store.save(data)
    assert first == second
    assert entries(store) == ([first.sha_hex], [f"{first.sha_hex}.zip"])


def test_inspect_validates_without_storing(store: CodeStore) -> None:
    data = make_zip({"app.py": "x = 1\n"})
    info = store.inspect(data)
    assert info.sha_hex == hashlib.sha256(data).hexdigest()
    assert entries(store) == ([], [])
    with pytest.raises(AwsError):
        store.inspect(b"not a zip")


def test_remove(store: CodeStore) -> None:
    info = store.save(make_zip({"a/b/c.py": "x"}))
    store.remove(info.sha_hex)
    assert entries(store) == ([], [])
    store.remove(info.sha_hex)  # removing twice is fine


def test_directory_entries_and_empty_zip(store: CodeStore) -> None:
    info = store.save(raw_zip((zipfile.ZipInfo("lib/"), b""), ("lib/m.py", b"m")))
    assert (store.task_root(info.sha_hex) / "lib" / "m.py").read_bytes() == b"m"
    empty = store.save(raw_zip())
    assert empty.unzipped_size == 0
    assert store.task_root(empty.sha_hex).is_dir()


def test_symlink_inside_the_tree_is_kept(store: CodeStore) -> None:
    info = store.save(raw_zip(("real.py", b"x"), (symlink_info("link.py"), b"real.py")))
    link = store.task_root(info.sha_hex) / "link.py"
    assert link.is_symlink()
    assert link.read_bytes() == b"x"


@pytest.mark.parametrize("data", [
    b"",
    b"not a zip at all",
    b"PK\x03\x04" + b"\x00" * 100,
    make_zip({"app.py": "x = 1\n" * 100})[:-30],  # truncated central directory
])
def test_not_a_zip(store: CodeStore, data: bytes) -> None:
    error = assert_bad_zip(store, data)
    assert "Could not unzip uploaded file" in error.message


def test_corrupted_member_data(store: CodeStore) -> None:
    data = bytearray(raw_zip(("app.py", b"print('hello')\n" * 50)))
    start = 30 + len("app.py")  # local header, then the stored bytes
    data[start + 10] ^= 0xFF
    assert_bad_zip(store, bytes(data))


def test_corrupted_deflate_stream(store: CodeStore) -> None:
    data = bytearray(make_zip({"app.py": os.urandom(64).hex() * 40}))
    start = 30 + len("app.py")
    for offset in range(start, start + 40):
        data[offset] ^= 0x5A
    assert_bad_zip(store, bytes(data))


@pytest.mark.parametrize("name", [
    "../evil.py", "/abs/evil.py", "a/../../evil.py", "..\\evil.py", "a/b/../../../evil.py",
])
def test_zip_slip_is_rejected(store: CodeStore, tmp_path: Path, name: str) -> None:
    data = raw_zip(("app.py", b"ok"), (zipfile.ZipInfo(name), b"evil"))
    error = assert_bad_zip(store, data)
    assert "outside" in error.message
    assert not list(tmp_path.rglob("evil.py"))
    assert not Path("/abs/evil.py").exists()


@pytest.mark.parametrize("target", ["../../outside", "/etc/passwd", "a/../../../x"])
def test_escaping_symlink_is_rejected(store: CodeStore, target: str) -> None:
    assert_bad_zip(store, raw_zip(("app.py", b"ok"), (symlink_info("link"), target.encode())))


@pytest.mark.parametrize("members", [
    (("a", b"file"), ("a/b.py", b"under a file")),
    (("a/b.py", b"x"), ("a", b"a file over a directory")),
])
def test_conflicting_entries_are_rejected_cleanly(store: CodeStore,
                                                  members: tuple[tuple[str, bytes], ...]) -> None:
    assert_bad_zip(store, raw_zip(*members))
    assert not [p for p in os.listdir(store.root / "tasks") if p.startswith(".")]


def test_unzipped_limit(store: CodeStore) -> None:
    data = make_zip({"a.bin": bytes(600), "b.bin": bytes(424)})
    assert store.save(data, max_unzipped=1024).unzipped_size == 1024
    store.remove(store.inspect(data).sha_hex)
    with pytest.raises(AwsError) as caught:
        store.save(make_zip({"a.bin": bytes(600), "b.bin": bytes(425)}), max_unzipped=1024)
    assert caught.value.code == "InvalidParameterValueException"
    assert "Unzipped size must be smaller than 1024 bytes" in caught.value.message
    assert entries(store) == ([], [])


def test_declared_size_is_checked_before_decompressing(store: CodeStore,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A zip bomb is refused from its directory, without inflating it."""
    data = make_zip({"bomb.bin": bytes(1 << 20)})

    def no_inflating(_archive: zipfile.ZipFile) -> None:
        raise AssertionError("decompressed an archive whose declared size is over the limit")

    monkeypatch.setattr(zipfile.ZipFile, "testzip", no_inflating)
    with pytest.raises(AwsError) as caught:
        store.save(data, max_unzipped=1 << 19)
    assert "Unzipped size must be smaller than" in caught.value.message


def test_remove_tree_handles_read_only_trees(tmp_path: Path, store: CodeStore) -> None:
    info = store.save(make_zip({"deep/er/file.py": "x"}))
    root = store.task_root(info.sha_hex)
    remove_tree(root)
    assert not root.exists()
    remove_tree(tmp_path / "missing")
