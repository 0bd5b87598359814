"""Content-addressed function code: the zip as uploaded and its read-only unpacked tree.

    info = store.save(zip_bytes)        # validates, unpacks to tasks/<sha256 hex>/
    store.task_root(info.sha_hex)       # what the runtime sees as LAMBDA_TASK_ROOT
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields

MAX_UNZIPPED_BYTES = 262_144_000  # 250 MB, AWS's limit for code plus layers
_UNZIP_ERROR = "Could not unzip uploaded file. Please check your file, then try to upload again."


@dataclass(frozen=True)
class CodeInfo:
    sha_hex: str
    sha256: str  # base64, as CodeSha256
    size: int
    unzipped_size: int


class CodeStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "zips").mkdir(parents=True, exist_ok=True)
        (root / "tasks").mkdir(parents=True, exist_ok=True)

    def zip_path(self, sha_hex: str) -> Path:
        return self.root / "zips" / f"{sha_hex}.zip"

    def task_root(self, sha_hex: str) -> Path:
        return self.root / "tasks" / sha_hex

    def inspect(self, data: bytes, max_unzipped: int = MAX_UNZIPPED_BYTES) -> CodeInfo:
        """Validate a zip without storing it (what a DryRun answers)."""
        digest = hashlib.sha256(data)
        unzipped = _check_zip(data, max_unzipped)
        return CodeInfo(digest.hexdigest(), base64.b64encode(digest.digest()).decode(),
                        len(data), unzipped)

    def save(self, data: bytes, max_unzipped: int = MAX_UNZIPPED_BYTES) -> CodeInfo:
        """Validate and store a zip; raises InvalidParameterValueException for a bad archive."""
        info = self.inspect(data, max_unzipped)
        sha_hex = info.sha_hex
        if not self.task_root(sha_hex).is_dir():
            self._unpack(data, sha_hex)
        zip_path = self.zip_path(sha_hex)
        if not zip_path.exists():
            tmp = zip_path.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, zip_path)
        return info

    def _unpack(self, data: bytes, sha_hex: str) -> None:
        staging = Path(tempfile.mkdtemp(prefix=f".{sha_hex}.", dir=self.root / "tasks"))
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                for member in archive.infolist():
                    _extract(archive, member, staging)
            make_read_only(staging)
            os.rename(staging, self.task_root(sha_hex))
        except OSError as exc:
            if self.task_root(sha_hex).is_dir():  # a concurrent save won the race
                remove_tree(staging)
                return
            remove_tree(staging)
            raise AwsError.invalid_parameter(f"{_UNZIP_ERROR} ({exc.strerror})") from None
        except (zipfile.BadZipFile, ValueError, EOFError, RuntimeError):
            remove_tree(staging)
            raise AwsError.invalid_parameter(_UNZIP_ERROR) from None

    def unzipped_size(self, sha_hex: str) -> int:
        """The stored zip's unzipped size."""
        return declared_size(self.zip_path(sha_hex).read_bytes())

    def remove(self, sha_hex: str) -> None:
        remove_tree(self.task_root(sha_hex))
        with contextlib.suppress(FileNotFoundError):
            self.zip_path(sha_hex).unlink()


def uploaded_zip(fields: Fields) -> bytes:
    """The zip of a ``Code``/``Content`` request member: base64 ``ZipFile`` (Kiln keeps no
    S3 buckets or images)."""
    if fields.string("S3Bucket") or fields.string("S3Key") or fields.string("ImageUri"):
        raise AwsError.invalid_parameter(
            "Kiln stores code you upload directly: pass the zip as ZipFile "
            "(S3 and image code locations are not supported).")
    encoded = fields.string("ZipFile")
    if encoded is None:
        raise AwsError.invalid_parameter("ZipFile is required: upload the code as a zip file.")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise AwsError.invalid_content(
            "Could not parse request body into json: ZipFile is not valid base64") from None


def declared_size(data: bytes) -> int:
    """The unzipped size a zip declares (its central directory only: nothing is inflated)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return sum(member.file_size for member in archive.infolist())
    except (zipfile.BadZipFile, ValueError, EOFError):
        raise AwsError.invalid_parameter(_UNZIP_ERROR) from None


def _check_zip(data: bytes, max_unzipped: int) -> int:
    """Total unzipped size; rejects archives that are corrupt, escape their root or are too big."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            # Names and declared sizes first: decompressing a zip bomb to find out is the attack.
            total = 0
            for member in archive.infolist():
                _safe_name(member.filename)
                total += member.file_size
            if total > max_unzipped:
                raise AwsError.invalid_parameter(
                    f"Unzipped size must be smaller than {max_unzipped} bytes"
                )
            bad = archive.testzip()  # reads at most the declared sizes; checks every CRC
    except (zipfile.BadZipFile, ValueError, EOFError, RuntimeError, NotImplementedError,
            zlib.error):
        raise AwsError.invalid_parameter(_UNZIP_ERROR) from None
    if bad is not None:
        raise AwsError.invalid_parameter(_UNZIP_ERROR)
    return total


def _safe_name(name: str) -> PurePosixPath:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or ".." in path.parts or name.startswith("/"):
        raise AwsError.invalid_parameter(
            f"{_UNZIP_ERROR} (entry {name!r} points outside the code directory)"
        )
    return path


def _extract(archive: zipfile.ZipFile, member: zipfile.ZipInfo, root: Path) -> None:
    relative = _safe_name(member.filename)
    if not relative.parts:
        return
    target = root.joinpath(*relative.parts)
    mode = (member.external_attr >> 16) & 0xFFFF
    if member.is_dir():
        target.mkdir(parents=True, exist_ok=True)
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    if stat.S_ISLNK(mode):
        link = archive.read(member).decode()
        resolved = (target.parent / link).resolve()
        if PurePosixPath(link).is_absolute() or not resolved.is_relative_to(root.resolve()):
            raise ValueError(f"symlink {member.filename!r} escapes the code directory")
        os.symlink(link, target)
        return
    with archive.open(member) as source, open(target, "wb") as sink:
        shutil.copyfileobj(source, sink, 1 << 20)
    executable = bool(mode & 0o111)
    os.chmod(target, 0o555 if executable else 0o444)


def make_read_only(root: Path) -> None:
    for directory, _dirs, _files in os.walk(root):
        os.chmod(directory, 0o555)


def remove_tree(path: Path) -> None:
    """rmtree that first makes read-only directories writable again."""
    if not path.exists():
        return
    for directory, _dirs, _files in os.walk(path):
        with contextlib.suppress(OSError):
            os.chmod(directory, 0o755)
    shutil.rmtree(path, ignore_errors=True)
