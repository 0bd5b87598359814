"""Functions: create, read, update, delete, list, publish versions, with state kept in SQLite.

``functions`` holds one row per version: ``$LATEST`` (the editable one) and published
versions "1", "2", ... (immutable snapshots of $LATEST's code and configuration).
``function_counters`` remembers each function's last version number, so a deleted version's
number is never reused.

Every change is validated completely before anything is written, and is written in one
transaction, so a rejected request leaves no trace.  Readers get records from an in-memory
cache kept coherent by this service (the only writer on a node).
"""

from __future__ import annotations

import builtins
import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions import validation
from kiln.functions.aliases import Alias, AliasStore
from kiln.functions.code import CodeInfo, CodeStore, declared_size, uploaded_zip
from kiln.functions.concurrency import Reservations
from kiln.functions.layers import LayerStore
from kiln.functions.paging import decode_marker, page_of
from kiln.functions.provisioned import ProvisionedConfigs
from kiln.functions.tags import FunctionTags, validated
from kiln.functions.types import FunctionRecord
from kiln.functions.types import timestamp as timestamp  # re-exported
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
    """CREATE TABLE IF NOT EXISTS function_counters (
        name TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    )""",
]
#: FunctionConfiguration fields that do not make a version different from another.
_VOLATILE = frozenset({"FunctionArn", "Version", "LastModified", "RevisionId", "Description",
                       "State", "StateReason", "StateReasonCode", "LastUpdateStatus",
                       "LastUpdateStatusReason", "LastUpdateStatusReasonCode"})
Listener = Callable[[str], Awaitable[None]]


class FunctionService:
    def __init__(self, db: Database, code: CodeStore, runtimes: RuntimeCatalog,
                 arns: ArnBuilder) -> None:
        self.db = db
        self.code = code
        self.runtimes = runtimes
        self.arns = arns
        #: Called with a function name after its code/configuration changed or it was deleted.
        self.listeners: list[Listener] = []
        #: Called with every version as it is published (inside the write: schedule, no I/O).
        self.published: list[Callable[[FunctionRecord], None]] = []
        db.migrate(SCHEMA)
        self.aliases = AliasStore(db)
        self.concurrency = Reservations(db)
        self.provisioned = ProvisionedConfigs(db)
        self.tags = FunctionTags(db)
        self.layers = LayerStore(db, code, arns, self._configs, self._collect_code)
        self.listeners.append(self.layers.function_changed)
        self._cache: dict[tuple[str, str], FunctionRecord] = {}

    # -- reads --------------------------------------------------------------------------------

    def get(self, name: str, qualifier: str | None = None) -> FunctionRecord:
        """$LATEST, a published version, or (when an alias is named) the alias's primary
        version with the alias's ARN as FunctionArn."""
        version = qualifier or LATEST
        if not is_version(version):
            return self._alias_view(name, version)
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

    def resolve(self, name: str, qualifier: str | None = None) -> FunctionRecord:
        """The version an invoke of ``name:qualifier`` runs: an alias with a routing
        configuration picks one of its two versions at random, per the weights."""
        version = qualifier or LATEST
        if is_version(version):
            return self.get(name, version)
        return self.get(name, self._alias(name, version).pick())

    def list_versions(self, name: str, marker: str | None,
                      max_items: int) -> tuple[builtins.list[FunctionRecord], str | None]:
        """$LATEST, then published versions in number order."""
        self.get(name)
        rows = self.db.query("SELECT version FROM functions WHERE name = ?", (name,))
        versions = sorted((r["version"] for r in rows), key=_version_order)
        if marker:
            after = _version_order(decode_marker(marker))
            if after < 0:
                raise AwsError.invalid_parameter(f"Invalid marker: {marker}")
            versions = [v for v in versions if _version_order(v) > after]
        page, next_marker = page_of(versions, str, max_items)
        return [self.get(name, v) for v in page], next_marker

    def list(self, marker: str | None, max_items: int,
             all_versions: bool = False) -> tuple[list[FunctionRecord], str | None]:
        """Functions by name ($LATEST; with ``all_versions`` every published version after
        it, as ``FunctionVersion=ALL`` lists them)."""
        after = decode_marker(marker) if marker else ""
        name, _, version = after.partition(":")
        rows = self.db.query(
            "SELECT config, code_sha_hex FROM functions WHERE name >= ? "
            + ("" if all_versions else "AND version = '$LATEST' ") + "ORDER BY name", (name,))
        records = sorted((FunctionRecord(json.loads(r["config"]), r["code_sha_hex"])
                          for r in rows), key=_list_order)
        if marker:
            start = (name, _version_order(version) if all_versions else 1 << 62)
            records = [r for r in records if _list_order(r) > start]
        return page_of(records, lambda r: f"{r.name}:{r.version}" if all_versions else r.name,
                       max_items)

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
        publish = fields.boolean("Publish")
        tags = validated(fields.mapping("Tags") or {})
        code = fields.mapping("Code")
        if code is None:
            raise AwsError.invalid_parameter("Code is a required parameter.")
        if self.db.query_one("SELECT 1 FROM functions WHERE name = ?", (name,)):
            raise AwsError.conflict(f"Function already exist: {name}")
        info, layers = self._save_code(Fields(code), changes.get("Layers", []))
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
            "SnapStart": {"ApplyOn": changes.get("SnapStart", {}).get("ApplyOn", "None"),
                          "OptimizationStatus": "Off"},
        }
        validation.check_snap_start(config)
        if "DeadLetterConfig" in changes:
            config["DeadLetterConfig"] = changes["DeadLetterConfig"]
        if layers:
            config["Layers"] = layers
        record = FunctionRecord(config, info.sha_hex)
        with self.db.transaction():
            self._write(record)
            self.tags.put(name, tags)
            if publish:
                return self._publish(record, None)[0]
        return record

    async def update_code(self, name: str, body: dict[str, Any]) -> FunctionRecord:
        fields = Fields(body)
        current = self.get(name)
        validation.check_revision(fields.string("RevisionId"), current.revision_id)
        architectures = validation.architectures(fields)
        dry_run = fields.boolean("DryRun")
        publish = fields.boolean("Publish")
        layer_arns = _layer_arns(current)
        info, _layers = self._save_code(fields, layer_arns, attached=layer_arns,
                                        store=not dry_run)
        config = {**current.config, "CodeSize": info.size, "CodeSha256": info.sha256}
        if architectures:
            config["Architectures"] = architectures
        if dry_run:  # validated, nothing stored
            return FunctionRecord(config, info.sha_hex)
        record = await self._update(current, config, info.sha_hex)
        if publish:
            # _update retired the environments, and none started since: no await between.
            return self._publish(record, None)[0]
        return record

    async def publish(self, name: str, body: dict[str, Any]) -> FunctionRecord:
        """PublishVersion: snapshot $LATEST as the next version number, unless nothing
        changed since the last version, which is then answered instead."""
        fields = Fields(body)
        latest = self.get(name)
        validation.check_revision(fields.string("RevisionId"), latest.revision_id)
        code_sha256 = fields.string("CodeSha256")
        if code_sha256 and code_sha256 != latest.config["CodeSha256"]:
            raise AwsError.invalid_parameter(
                f"CodeSHA256 ({code_sha256}) is different from current CodeSHA256 in $LATEST "
                f"({latest.config['CodeSha256']}). Please try again with the CodeSHA256 in "
                "$LATEST.")
        version, published = self._publish(latest, validation.description(fields))
        if published:
            await self._notify(name)  # $LATEST has a new RevisionId: retire its environments
        return version

    async def update_configuration(self, name: str, body: dict[str, Any]) -> FunctionRecord:
        fields = Fields(body)
        current = self.get(name)
        validation.check_revision(fields.string("RevisionId"), current.revision_id)
        changes = validation.configuration_changes(fields)
        if "Runtime" in changes:
            self.runtimes.check(changes["Runtime"])
        if "Layers" in changes:
            changes["Layers"] = self.layers.attach(
                changes["Layers"], self.code.unzipped_size(current.code_sha_hex),
                attached=_layer_arns(current))
        config = {**current.config, **changes}
        if "SnapStart" in changes:  # optimised are published versions, never $LATEST
            config["SnapStart"] = {**changes["SnapStart"], "OptimizationStatus": "Off"}
        validation.check_snap_start(config)
        if not config.get("Layers"):
            config.pop("Layers", None)  # AWS leaves the member out when there are none
        if "LoggingConfig" in changes:
            config["LoggingConfig"] = {**current.config["LoggingConfig"],
                                       **changes["LoggingConfig"]}
        return await self._update(current, config, current.code_sha_hex)

    async def delete(self, name: str, qualifier: str | None) -> None:
        if qualifier == LATEST:
            raise AwsError.invalid_parameter("$LATEST version cannot be deleted without deleting "
                                             "the function.")
        if qualifier is not None:
            await self._delete_version(name, qualifier)
            return
        rows = self.db.query("SELECT DISTINCT code_sha_hex FROM functions WHERE name = ?",
                             (name,))
        if not rows:
            self.get(name)  # ResourceNotFoundException
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM functions WHERE name = ?", (name,))
            tx.execute("DELETE FROM function_counters WHERE name = ?", (name,))
            self.aliases.remove_all(name)
            self.concurrency.remove(name)
            self.provisioned.remove(name)
            self.tags.remove(name)
        for key in [k for k in self._cache if k[0] == name]:
            del self._cache[key]
        await self._notify(name)
        for row in rows:
            self._collect_code(row["code_sha_hex"])

    async def _delete_version(self, name: str, version: str) -> None:
        if not version.isdigit():
            self.get(name)  # ResourceNotFoundException for a missing function
            raise AwsError.invalid_parameter(
                f"Deletion of alias {version} is not supported by DeleteFunction: use "
                "DeleteAlias, or name a version number.")
        record = self.get(name, version)  # ResourceNotFoundException for unknown versions
        users = self.aliases.users(name, version)
        if users:
            raise AwsError.conflict("Unable to delete version because the following aliases "
                                    f"reference it: [{', '.join(users)}]")
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM functions WHERE name = ? AND version = ?", (name, version))
        self._cache.pop((name, version), None)
        await self._notify(name)
        self._collect_code(record.code_sha_hex)

    # -- aliases ------------------------------------------------------------------------------

    def create_alias(self, name: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = Fields(body)
        alias_name = validation.alias_name(fields.string("Name"))
        version = validation.function_version(fields.string("FunctionVersion"))
        description = validation.description(fields) or ""
        weights = validation.routing_weights(fields) or {}
        self.get(name)
        self.get(name, version)
        arn = self.arns.function(name, alias_name)
        if self.aliases.find(name, alias_name) is not None:
            raise AwsError.conflict(f"Alias already exists: {arn}")
        self._check_routing(name, version, weights)
        alias = Alias(name, alias_name, version, description, str(uuid.uuid4()), weights)
        self.aliases.save(alias)
        return alias.configuration(arn)

    def get_alias(self, name: str, alias_name: str) -> dict[str, Any]:
        return self._existing_alias(name, alias_name).configuration(
            self.arns.function(name, alias_name))

    def update_alias(self, name: str, alias_name: str, body: dict[str, Any]) -> dict[str, Any]:
        fields = Fields(body)
        current = self._existing_alias(name, alias_name)
        validation.check_revision(fields.string("RevisionId"), current.revision_id)
        raw_version = fields.string("FunctionVersion")
        version = (current.function_version if raw_version is None
                   else validation.function_version(raw_version))
        description = validation.description(fields)
        weights = validation.routing_weights(fields)
        self.get(name, version)
        if weights is None:
            weights = current.weights
        self._check_routing(name, version, weights)
        alias = Alias(name, alias_name, version,
                      current.description if description is None else description,
                      str(uuid.uuid4()), weights)
        self.aliases.save(alias)
        return alias.configuration(self.arns.function(name, alias_name))

    def delete_alias(self, name: str, alias_name: str) -> None:
        self._existing_alias(name, alias_name)
        self.aliases.remove(name, alias_name)

    def list_aliases(self, name: str, version: str | None, marker: str | None,
                     max_items: int) -> tuple[builtins.list[dict[str, Any]], str | None]:
        self.get(name)
        if version is not None:
            version = validation.function_version(version)
        aliases = [a for a in self.aliases.of(name)
                   if version is None or a.function_version == version]
        page, next_marker = page_of(aliases, lambda a: a.name, max_items, marker)
        return [a.configuration(self.arns.function(name, a.name)) for a in page], next_marker

    def _existing_alias(self, name: str, alias_name: str) -> Alias:
        validation.alias_name(alias_name)
        self.get(name)
        alias = self.aliases.find(name, alias_name)
        if alias is None:
            raise AwsError.not_found(
                f"Cannot find alias arn: {self.arns.function(name, alias_name)}")
        return alias

    def _check_routing(self, name: str, version: str, weights: dict[str, float]) -> None:
        """An additional version must be published, exist and differ from the primary."""
        for extra in weights:
            if extra == version:
                raise AwsError.invalid_parameter(
                    f"Invalid function version {version}. Function version {version} is "
                    "already included in routing configuration.")
            if version == LATEST:
                raise AwsError.invalid_parameter(
                    "$LATEST is not supported for an alias pointing to more than 1 version")
            self.get(name, extra)

    # -- reserved concurrency -----------------------------------------------------------------

    def put_concurrency(self, name: str, body: dict[str, Any], account_limit: int) -> int:
        reserved = validation.reserved_concurrency(Fields(body))
        self.get(name)
        provisioned = self.provisioned.totals.get(name, 0)
        if provisioned > reserved:
            raise AwsError.invalid_parameter(
                f"ReservedConcurrentExecutions {reserved} should not be lower than function's "
                f"total provisioned concurrency [{provisioned}].")
        self.concurrency.put(name, reserved, account_limit,
                             carved=self.provisioned.carved(self.concurrency.reserved, name))
        return reserved

    def unreserved_concurrency(self, account_limit: int) -> int:
        """What neither reservations nor provisioned concurrency outside them have taken."""
        return (self.concurrency.unreserved(account_limit)
                - self.provisioned.carved(self.concurrency.reserved))

    def get_concurrency(self, name: str) -> int | None:
        self.get(name)
        return self.concurrency.reserved.get(name)

    def delete_concurrency(self, name: str) -> None:
        self.get(name)
        self.concurrency.remove(name)

    # -- helpers ------------------------------------------------------------------------------

    def _alias_view(self, name: str, alias_name: str) -> FunctionRecord:
        """GetFunction(Configuration) of an alias: its primary version, under its ARN."""
        record = self.get(name, self._alias(name, alias_name).function_version)
        return FunctionRecord({**record.config,
                               "FunctionArn": self.arns.function(name, alias_name)},
                              record.code_sha_hex)

    def _alias(self, name: str, alias_name: str) -> Alias:
        alias = self.aliases.find(name, alias_name)
        if alias is None:
            raise AwsError.not_found(
                f"Function not found: {self.arns.function(name, alias_name)}")
        return alias

    def _publish(self, latest: FunctionRecord,
                 description: str | None) -> tuple[FunctionRecord, bool]:
        """Snapshot ``latest`` as a new version (in the caller's transaction, if any), or
        find the last version when nothing changed since: (version, whether it is new).
        Publishing gives $LATEST a new RevisionId, as AWS does."""
        name = latest.name
        row = self.db.query_one("SELECT last_version FROM function_counters WHERE name = ?",
                                (name,))
        last = int(row["last_version"]) if row else 0
        previous = self._cache.get((name, str(last))) if last else None
        if last and previous is None:
            found = self.db.query_one("SELECT 1 FROM functions WHERE name = ? AND version = ?",
                                      (name, str(last)))
            previous = self.get(name, str(last)) if found else None
        if previous is not None and _same_version(previous, latest):
            return previous, False
        version = str(last + 1)
        config = {**latest.config,
                  "FunctionArn": self.arns.function(name, version),
                  "Version": version,
                  "LastModified": timestamp(),
                  "RevisionId": str(uuid.uuid4()),
                  "State": "Active",
                  "LastUpdateStatus": "Successful",
                  "SnapStart": _optimized(latest.config)}
        if description is not None:
            config["Description"] = description
        record = FunctionRecord(config, latest.code_sha_hex)
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO function_counters (name, last_version) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
                       (name, last + 1))
            self._write(record)
            self._write(FunctionRecord({**latest.config, "RevisionId": str(uuid.uuid4())},
                                       latest.code_sha_hex))
        for listener in self.published:
            listener(record)
        return record, True

    def _save_code(self, fields: Fields, layer_arns: builtins.list[str],
                   attached: builtins.list[str] | None = None,
                   store: bool = True) -> tuple[CodeInfo, builtins.list[dict[str, Any]]]:
        """Store (with ``store=False`` only check) uploaded code, checked with the layers it
        will run with against the unzipped limit before anything is written; and the
        configuration's ``Layers`` value (``attached``: the ones the function already has)."""
        data = uploaded_zip(fields)
        layers = self.layers.attach(layer_arns, declared_size(data), attached or [])
        return (self.code.save(data) if store else self.code.inspect(data)), layers

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
        """Remove code no function or layer references any more."""
        if (not self.db.query_one("SELECT 1 FROM functions WHERE code_sha_hex = ?", (sha_hex,))
                and not self.layers.code_in_use(sha_hex)):
            self.code.remove(sha_hex)

    def _configs(self) -> builtins.list[dict[str, Any]]:
        """Every function version's configuration."""
        return [json.loads(row["config"]) for row in self.db.query("SELECT config FROM functions")]

    async def _notify(self, name: str) -> None:
        for listener in self.listeners:
            await listener(name)


def is_version(qualifier: str) -> bool:
    """$LATEST or a version number (anything else names an alias)."""
    return qualifier == LATEST or qualifier.isdigit()


def _version_order(version: str) -> int:
    return 0 if version == LATEST else int(version) if version.isdigit() else -1


def _layer_arns(record: FunctionRecord) -> list[str]:
    return [layer["Arn"] for layer in record.config.get("Layers", [])]


def _list_order(record: FunctionRecord) -> tuple[str, int]:
    return record.name, _version_order(record.version)


def _optimized(config: dict[str, Any]) -> dict[str, str]:
    """A published version's SnapStart: On where it applies to published versions."""
    apply_on = config.get("SnapStart", {}).get("ApplyOn", "None")
    return {"ApplyOn": apply_on,
            "OptimizationStatus": "On" if apply_on == "PublishedVersions" else "Off"}


def _same_version(a: FunctionRecord, b: FunctionRecord) -> bool:
    """Same code and same configuration, whatever their ARNs, dates and revisions."""
    def essence(record: FunctionRecord) -> dict[str, Any]:
        essence = {k: v for k, v in record.config.items() if k not in _VOLATILE}
        # SnapStart's OptimizationStatus differs between $LATEST and versions: not a change.
        essence["SnapStart"] = essence.get("SnapStart", {}).get("ApplyOn")
        return essence

    return a.code_sha_hex == b.code_sha_hex and essence(a) == essence(b)
