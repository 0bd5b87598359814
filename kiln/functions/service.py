"""Functions: create, read, update, delete, list, with state kept in SQLite.

Every change is validated completely before anything is written, and is written in one
transaction, so a rejected request leaves no trace.  Readers get records from an in-memory
cache kept coherent by this service (the only writer on a node).
"""

from __future__ import annotations

import base64
import binascii
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions import validation
from kiln.functions.code import CodeInfo, CodeStore
from kiln.functions.types import FunctionRecord
from kiln.runtime.runtimes import RuntimeCatalog
from kiln.store import Database

LATEST = "$LATEST"
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS functions (
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        config TEXT NOT NULL,
        code_sha_hex TEXT NOT NULL,
        PRIMARY KEY (name, version)
    )""",
]
Listener = Callable[[str], Awaitable[None]]


def timestamp() -> str:
    """AWS's LastModified format: 2024-05-01T12:00:00.000+0000."""
    now = time.time()
    millis = int(now * 1000) % 1000
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{millis:03d}+0000"


class FunctionService:
    def __init__(self, db: Database, code: CodeStore, runtimes: RuntimeCatalog,
                 arns: ArnBuilder) -> None:
        self.db = db
        self.code = code
        self.runtimes = runtimes
        self.arns = arns
        #: Called with a function name after its code/configuration changed or it was deleted.
        self.listeners: list[Listener] = []
        db.migrate(SCHEMA)
        self._cache: dict[tuple[str, str], FunctionRecord] = {}

    # -- reads --------------------------------------------------------------------------------

    def get(self, name: str, qualifier: str | None = None) -> FunctionRecord:
        version = qualifier or LATEST
        key = (name, version)
        record = self._cache.get(key)
        if record is None:
            row = self.db.query_one(
                "SELECT config, code_sha_hex FROM functions WHERE name = ? AND version = ?",
                (name, version))
            if row is None:
                raise AwsError.not_found(
                    f"Function not found: {self.arns.function(name, qualifier)}")
            record = FunctionRecord(json.loads(row["config"]), row["code_sha_hex"])
            self._cache[key] = record
        return record

    def list(self, marker: str | None, max_items: int) -> tuple[list[FunctionRecord], str | None]:
        after = ""
        if marker:
            try:
                after = base64.urlsafe_b64decode(marker.encode()).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise AwsError.invalid_parameter(f"Invalid marker: {marker}") from None
        rows = self.db.query(
            "SELECT config, code_sha_hex FROM functions WHERE version = ? AND name > ? "
            "ORDER BY name LIMIT ?", (LATEST, after, max_items + 1))
        records = [FunctionRecord(json.loads(r["config"]), r["code_sha_hex"]) for r in rows]
        next_marker = None
        if len(records) > max_items:
            records = records[:max_items]
            next_marker = base64.urlsafe_b64encode(records[-1].name.encode()).decode()
        return records, next_marker

    def usage(self) -> tuple[int, int]:
        """(function count, total code size in bytes)."""
        rows = self.db.query("SELECT config FROM functions")
        sizes = [int(json.loads(r["config"])["CodeSize"]) for r in rows]
        count = self.db.query_one(
            "SELECT COUNT(*) AS n FROM functions WHERE version = ?", (LATEST,))
        return (int(count["n"]) if count else 0), sum(sizes)

    # -- writes -------------------------------------------------------------------------------

    def create(self, body: dict[str, Any]) -> FunctionRecord:
        fields = Fields(body)
        name = validation.check_name(fields.string("FunctionName"), self.arns.account_id)
        package_type = fields.string("PackageType") or "Zip"
        if package_type != "Zip":
            raise AwsError.invalid_parameter(
                f"PackageType {package_type} is not supported by Kiln; use Zip.")
        changes = validation.configuration_changes(fields)
        if "Role" not in changes:
            raise AwsError.invalid_parameter("Role is a required parameter.")
        if "Runtime" not in changes or "Handler" not in changes:
            raise AwsError.invalid_parameter(
                "Runtime and Handler are mandatory parameters for functions created with "
                "deployment packages.")
        self.runtimes.check(changes["Runtime"])
        architectures = validation.architectures(fields) or ["x86_64"]
        code = fields.mapping("Code")
        if code is None:
            raise AwsError.invalid_parameter("Code is a required parameter.")
        if self.db.query_one("SELECT 1 FROM functions WHERE name = ?", (name,)):
            raise AwsError.conflict(f"Function already exist: {name}")
        info = self._save_code(Fields(code))
        config: dict[str, Any] = {
            "FunctionName": name,
            "FunctionArn": self.arns.function(name),
            "Runtime": changes["Runtime"],
            "Role": changes["Role"],
            "Handler": changes["Handler"],
            "CodeSize": info.size,
            "Description": changes.get("Description", ""),
            "Timeout": changes.get("Timeout", 3),
            "MemorySize": changes.get("MemorySize", 128),
            "LastModified": timestamp(),
            "CodeSha256": info.sha256,
            "Version": LATEST,
            "Environment": changes.get("Environment", {"Variables": {}}),
            "TracingConfig": changes.get("TracingConfig", {"Mode": "PassThrough"}),
            "RevisionId": str(uuid.uuid4()),
            "State": "Active",
            "LastUpdateStatus": "Successful",
            "PackageType": "Zip",
            "Architectures": architectures,
            "EphemeralStorage": changes.get("EphemeralStorage", {"Size": 512}),
            "LoggingConfig": {"LogFormat": "Text", "LogGroup": f"/aws/lambda/{name}",
                              **changes.get("LoggingConfig", {})},
            "SnapStart": {"ApplyOn": "None", "OptimizationStatus": "Off"},
        }
        if "DeadLetterConfig" in changes:
            config["DeadLetterConfig"] = changes["DeadLetterConfig"]
        record = FunctionRecord(config, info.sha_hex)
        self._write(record)
        return record

    async def update_code(self, name: str, body: dict[str, Any]) -> FunctionRecord:
        fields = Fields(body)
        current = self.get(name)
        self._check_revision(current, fields.string("RevisionId"))
        architectures = validation.architectures(fields)
        dry_run = fields.boolean("DryRun")
        info = self._save_code(fields, store=not dry_run)
        config = {**current.config, "CodeSize": info.size, "CodeSha256": info.sha256}
        if architectures:
            config["Architectures"] = architectures
        if dry_run:  # validated, nothing stored
            return FunctionRecord(config, info.sha_hex)
        return await self._update(current, config, info.sha_hex)

    async def update_configuration(self, name: str, body: dict[str, Any]) -> FunctionRecord:
        fields = Fields(body)
        current = self.get(name)
        self._check_revision(current, fields.string("RevisionId"))
        changes = validation.configuration_changes(fields)
        if "Runtime" in changes:
            self.runtimes.check(changes["Runtime"])
        config = {**current.config, **changes}
        if "LoggingConfig" in changes:
            config["LoggingConfig"] = {**current.config["LoggingConfig"],
                                       **changes["LoggingConfig"]}
        return await self._update(current, config, current.code_sha_hex)

    async def delete(self, name: str, qualifier: str | None) -> None:
        if qualifier not in (None, LATEST):
            self.get(name, qualifier)  # raises ResourceNotFound for unknown versions
        if qualifier == LATEST:
            raise AwsError.invalid_parameter("$LATEST version cannot be deleted without deleting "
                                             "the function.")
        current = self.get(name)
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM functions WHERE name = ?", (name,))
        for key in [k for k in self._cache if k[0] == name]:
            del self._cache[key]
        await self._notify(name)
        self._collect_code(current.code_sha_hex)

    # -- helpers ------------------------------------------------------------------------------

    def _save_code(self, fields: Fields, store: bool = True) -> CodeInfo:
        if fields.string("S3Bucket") or fields.string("S3Key") or fields.string("ImageUri"):
            raise AwsError.invalid_parameter(
                "Kiln stores code you upload directly: pass the zip as ZipFile "
                "(S3 and image code locations are not supported).")
        encoded = fields.string("ZipFile")
        if encoded is None:
            raise AwsError.invalid_parameter("ZipFile is required: upload the function's code "
                                             "as a zip file.")
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            raise AwsError.invalid_content(
                "Could not parse request body into json: ZipFile is not valid base64") from None
        return self.code.save(data) if store else self.code.inspect(data)

    def _check_revision(self, current: FunctionRecord, revision_id: str | None) -> None:
        if revision_id is not None and revision_id != current.revision_id:
            raise AwsError.precondition_failed(
                "The Revision Id provided does not match the latest Revision Id. Call the "
                "GetFunction/GetAlias API to retrieve the latest Revision Id")

    async def _update(self, current: FunctionRecord, config: dict[str, Any],
                      code_sha_hex: str) -> FunctionRecord:
        config.update({"LastModified": timestamp(), "RevisionId": str(uuid.uuid4()),
                       "LastUpdateStatus": "Successful", "State": "Active"})
        record = FunctionRecord(config, code_sha_hex)
        self._write(record)
        await self._notify(record.name)  # retire environments before their code goes
        if code_sha_hex != current.code_sha_hex:
            self._collect_code(current.code_sha_hex)
        return record

    def _write(self, record: FunctionRecord) -> None:
        with self.db.transaction() as tx:
            tx.execute(
                "INSERT OR REPLACE INTO functions (name, version, config, code_sha_hex) "
                "VALUES (?, ?, ?, ?)",
                (record.name, record.version, json.dumps(record.config), record.code_sha_hex))
        self._cache[(record.name, record.version)] = record

    def _collect_code(self, sha_hex: str) -> None:
        """Remove code no function references any more."""
        if not self.db.query_one("SELECT 1 FROM functions WHERE code_sha_hex = ?", (sha_hex,)):
            self.code.remove(sha_hex)

    async def _notify(self, name: str) -> None:
        for listener in self.listeners:
            await listener(name)
