"""Layers: named series of immutable zips that functions stack, in order, at ``/opt``.

    info, sha_hex = layers.publish("deps", body)     # PublishLayerVersion (but Location)
    attached = layers.attach(arns, code_unzipped)    # a function's ``Layers`` configuration
    opt = layers.opt_dir(record)                     # that version's merged /opt, on the host

A layer version's zip is content-addressed in the CodeStore like function code.  Deleting a
layer version hides it from the API and from new configurations, but (as AWS keeps a copy) its
code stays while a function version still names it, and goes with the last one.

Each distinct stack of layers is merged once into ``<code root>/opt/<hash of the stack>``
(hard links; a later layer's file replaces an earlier one's): that directory is the
environment's ``/opt``, mounted as the only layer by isolating backends and used in place by
the plain process backend.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sqlite3
import tempfile
import uuid
from collections.abc import Callable, Collection, Iterable
from pathlib import Path
from typing import Any

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions.code import (
    MAX_UNZIPPED_BYTES,
    CodeStore,
    make_read_only,
    remove_tree,
    uploaded_zip,
)
from kiln.functions.paging import decode_marker, page_of
from kiln.functions.types import FunctionRecord, timestamp
from kiln.functions.validation import ARCHITECTURES, check_revision, field_error, null_error
from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS layer_versions (
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        info TEXT NOT NULL,
        code_sha_hex TEXT NOT NULL,
        unzipped INTEGER NOT NULL,
        deleted INTEGER NOT NULL DEFAULT 0,
        policy TEXT,
        PRIMARY KEY (name, version)
    )""",
    """CREATE TABLE IF NOT EXISTS layer_counters (
        name TEXT PRIMARY KEY,
        last_version INTEGER NOT NULL
    )""",
]
MAX_LAYERS = 5
NAME_RE = re.compile(r"[a-zA-Z0-9_-]{1,140}")
LAYER_ARN_RE = re.compile(
    r"arn:(?P<partition>aws[a-zA-Z-]*):lambda:(?P<region>[a-z]{2}(?:-gov)?-[a-z]+-\d):"
    r"(?P<account>\d{12}):layer:(?P<name>[a-zA-Z0-9_-]{1,140})(?::(?P<version>[0-9]+))?")
VERSION_ARN_PATTERN = ("(arn:(aws[a-zA-Z-]*)?:lambda:[a-z]{2}((-gov)|(-iso(b?)))?-[a-z]+-\\d{1}:"
                       "\\d{12}:layer:[a-zA-Z0-9-_]+:[0-9]+)|(arn:[a-zA-Z0-9-]+:lambda:::awslayer:"
                       "[a-zA-Z0-9-_]+)")
#: CompatibleRuntime values the API model accepts (whether or not Kiln can run them).
RUNTIMES = (
    "nodejs", "nodejs4.3", "nodejs6.10", "nodejs8.10", "nodejs10.x", "nodejs12.x", "nodejs14.x",
    "nodejs16.x", "nodejs18.x", "nodejs20.x", "nodejs22.x", "nodejs24.x", "java8", "java8.al2",
    "java11", "java17", "java21", "java25", "python2.7", "python3.6", "python3.7", "python3.8",
    "python3.9", "python3.10", "python3.11", "python3.12", "python3.13", "python3.14",
    "dotnetcore1.0", "dotnetcore2.0", "dotnetcore2.1", "dotnetcore3.1", "dotnet6", "dotnet8",
    "dotnet10", "nodejs4.3-edge", "go1.x", "ruby2.5", "ruby2.7", "ruby3.2", "ruby3.3",
    "ruby3.4", "ruby4.0", "provided", "provided.al2", "provided.al2023", "nodejs26.x",
    "python3.15", "java8.al2023", "java11.al2023", "java17.al2023", "custom",
)
_POLICY_PRINCIPAL_RE = re.compile(r"\d{12}|\*|arn:(aws[a-zA-Z-]*):iam::\d{12}:root")
_NOT_FOUND = "The resource you requested does not exist."
_NAME_CONSTRAINT = ("Member must satisfy regular expression pattern: (arn:[a-zA-Z0-9-]+:lambda:"
                    "[a-zA-Z0-9-]+:\\d{12}:layer:[a-zA-Z0-9-_]+)|[a-zA-Z0-9-_]+")


class LayerStore:
    def __init__(self, db: Database, code: CodeStore, arns: ArnBuilder,
                 configs: Callable[[], Iterable[dict[str, Any]]],
                 collect_code: Callable[[str], None]) -> None:
        """``configs()``: the configuration of every function version;
        ``collect_code(sha_hex)``: remove code if nothing references it any more."""
        self.db = db
        self.code = code
        self.arns = arns
        self._configs = configs
        self._collect_code = collect_code
        (code.root / "opt").mkdir(parents=True, exist_ok=True)
        db.migrate(SCHEMA)

    # -- the API ------------------------------------------------------------------------------

    def publish(self, layer: str, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        """PublishLayerVersion: the next version of ``layer`` (a name or a layer ARN), and
        its code's sha hex."""
        name = self._name(layer)
        fields = Fields(body)
        description = _text(fields, "Description", "description", 256)
        license_info = _text(fields, "LicenseInfo", "licenseInfo", 512)
        runtimes = _choices(fields, "CompatibleRuntimes", "compatibleRuntimes", RUNTIMES, 15)
        architectures = _choices(fields, "CompatibleArchitectures", "compatibleArchitectures",
                                 ARCHITECTURES, 2)
        content = fields.mapping("Content")
        if content is None:
            raise null_error("content")
        data = uploaded_zip(Fields(content))
        info = self.code.save(data)
        row = self.db.query_one("SELECT last_version FROM layer_counters WHERE name = ?", (name,))
        version = (int(row["last_version"]) if row else 0) + 1
        published: dict[str, Any] = {
            "Content": {"CodeSha256": info.sha256, "CodeSize": info.size},
            "LayerArn": self.arns.layer(name),
            "LayerVersionArn": self.arns.layer(name, version),
            "Description": description or "",
            "CreatedDate": timestamp(),
            "Version": version,
        }
        if runtimes is not None:
            published["CompatibleRuntimes"] = runtimes
        if architectures is not None:
            published["CompatibleArchitectures"] = architectures
        if license_info is not None:
            published["LicenseInfo"] = license_info
        with self.db.transaction() as tx:
            tx.execute("INSERT INTO layer_counters (name, last_version) VALUES (?, ?) "
                       "ON CONFLICT (name) DO UPDATE SET last_version = excluded.last_version",
                       (name, version))
            tx.execute("INSERT INTO layer_versions (name, version, info, code_sha_hex, unzipped) "
                       "VALUES (?, ?, ?, ?, ?)",
                       (name, version, json.dumps(published), info.sha_hex, info.unzipped_size))
        return published, info.sha_hex

    def get(self, layer: str, version: str) -> tuple[dict[str, Any], str]:
        """GetLayerVersion: (the version's description, its code's sha hex)."""
        row = self._row(self._name(layer), _version_number(version))
        if row is None:
            raise AwsError.not_found(_NOT_FOUND)
        return json.loads(row["info"]), str(row["code_sha_hex"])

    def get_by_arn(self, arn: str | None) -> tuple[dict[str, Any], str]:
        match = LAYER_ARN_RE.fullmatch(arn or "")
        if arn is None or match is None or match["version"] is None:
            raise field_error(arn, "arn", f"Member must satisfy regular expression pattern: "
                                          f"{VERSION_ARN_PATTERN}")
        if not self._ours(match):
            raise AwsError.not_found(_NOT_FOUND)
        return self.get(match["name"], match["version"])

    def list_layers(self, runtime: str | None, architecture: str | None, marker: str | None,
                    max_items: int) -> tuple[list[dict[str, Any]], str | None]:
        """ListLayers: each layer with its latest version matching the filters, by name."""
        _filters(runtime, architecture)
        after = decode_marker(marker) if marker else ""
        rows = self.db.query("SELECT name, info FROM layer_versions WHERE deleted = 0 "
                             "AND name > ? ORDER BY name, version DESC", (after,))
        latest: dict[str, dict[str, Any]] = {}
        for row in rows:
            info = json.loads(row["info"])
            if row["name"] not in latest and _matches(info, runtime, architecture):
                latest[row["name"]] = info
        items = [{"LayerName": name, "LayerArn": info["LayerArn"],
                  "LatestMatchingVersion": _summary(info)} for name, info in latest.items()]
        return page_of(items, lambda item: str(item["LayerName"]), max_items)

    def list_versions(self, layer: str, runtime: str | None, architecture: str | None,
                      marker: str | None,
                      max_items: int) -> tuple[list[dict[str, Any]], str | None]:
        """ListLayerVersions: newest first (an unknown layer has none)."""
        name = self._name(layer)
        _filters(runtime, architecture)
        before = None
        if marker:
            key = decode_marker(marker)
            if not key.isdigit():
                raise AwsError.invalid_parameter(f"Invalid marker: {marker}")
            before = int(key)
        rows = self.db.query("SELECT version, info FROM layer_versions WHERE name = ? "
                             "AND deleted = 0 ORDER BY version DESC", (name,))
        infos = [json.loads(r["info"]) for r in rows
                 if before is None or int(r["version"]) < before]
        infos = [_summary(info) for info in infos if _matches(info, runtime, architecture)]
        return page_of(infos, lambda info: str(info["Version"]), max_items)

    def delete(self, layer: str, version: str) -> None:
        """DeleteLayerVersion: idempotent, like AWS's."""
        name, number = self._name(layer), _version_number(version)
        self.db.execute("UPDATE layer_versions SET deleted = 1 WHERE name = ? AND version = ?",
                        (name, number))
        self.collect()

    def add_permission(self, layer: str, version: str, body: dict[str, Any],
                       revision_id: str | None) -> dict[str, Any]:
        fields = Fields(body)
        sid = fields.string("StatementId")
        if not sid or len(sid) > 100 or not re.fullmatch(r"[a-zA-Z0-9_-]+", sid):
            raise field_error(sid, "statementId", "Member must satisfy regular expression pattern: "
                                                  "([a-zA-Z0-9-_]+)")
        action = fields.string("Action")
        if action != "lambda:GetLayerVersion":
            raise field_error(action, "action", "Member must satisfy regular expression pattern: "
                                                "lambda:GetLayerVersion")
        principal = fields.string("Principal")
        if principal is None or not _POLICY_PRINCIPAL_RE.fullmatch(principal):
            raise field_error(principal, "principal", "Member must satisfy regular expression "
                              "pattern: \\d{12}|\\*|arn:(aws[a-zA-Z-]*):iam::\\d{12}:root")
        organization = fields.string("OrganizationId")
        if organization is not None and not re.fullmatch(r"o-[a-z0-9]{10,32}", organization):
            raise field_error(organization, "organizationId",
                              "Member must satisfy regular expression pattern: o-[a-z0-9]{10,32}")
        name, number, policy = self._policy_target(layer, version)
        check_revision(revision_id, policy.get("RevisionId"), "GetLayerPolicy")
        if any(s["Sid"] == sid for s in policy["Statements"]):
            raise AwsError.conflict(
                f"The statement id ({sid}) provided already exists. Please provide a new "
                "statement id, or remove the existing statement.")
        account = principal if principal.startswith("arn:") else f"arn:aws:iam::{principal}:root"
        statement: dict[str, Any] = {
            "Sid": sid, "Effect": "Allow",
            "Principal": "*" if principal == "*" else {"AWS": account},
            "Action": action, "Resource": self.arns.layer(name, number),
        }
        if organization is not None:
            statement["Condition"] = {"StringEquals": {"aws:PrincipalOrgID": organization}}
        policy = {"Statements": [*policy["Statements"], statement],
                  "RevisionId": str(uuid.uuid4())}
        self._save_policy(name, number, policy)
        return {"Statement": json.dumps(statement), "RevisionId": policy["RevisionId"]}

    def get_policy(self, layer: str, version: str) -> dict[str, Any]:
        _name, _number, policy = self._policy_target(layer, version)
        if not policy["Statements"]:
            raise AwsError.not_found("No policy is associated with the given resource.")
        document = {"Version": "2012-10-17", "Id": "default", "Statement": policy["Statements"]}
        return {"Policy": json.dumps(document), "RevisionId": policy["RevisionId"]}

    def remove_permission(self, layer: str, version: str, sid: str,
                          revision_id: str | None) -> None:
        name, number, policy = self._policy_target(layer, version)
        check_revision(revision_id, policy.get("RevisionId"), "GetLayerPolicy")
        kept = [s for s in policy["Statements"] if s["Sid"] != sid]
        if len(kept) == len(policy["Statements"]):
            raise AwsError.not_found(f"Statement {sid} is not found in resource policy.")
        self._save_policy(name, number, {"Statements": kept, "RevisionId": str(uuid.uuid4())})

    # -- functions' layers --------------------------------------------------------------------

    def attach(self, arns: list[str], code_unzipped: int,
               attached: Collection[str] = ()) -> list[dict[str, Any]]:
        """Validate a function's ``Layers`` (in order) against its code's unzipped size; the
        FunctionConfiguration ``Layers`` value.  Versions the function already has
        (``attached``) may have been deleted since: they still serve it."""
        if len(arns) > MAX_LAYERS:
            raise AwsError.invalid_parameter(f"Cannot reference more than {MAX_LAYERS} layers.")
        seen: dict[str, str] = {}
        configured: list[dict[str, Any]] = []
        total = code_unzipped
        for arn in arns:
            match = LAYER_ARN_RE.fullmatch(arn) if isinstance(arn, str) else None
            if match is None or match["version"] is None:
                raise field_error(f"[{arn}]", "layers",
                                  "Member must satisfy constraint: [Member must have length less "
                                  "than or equal to 140, Member must have length greater than or "
                                  "equal to 1, Member must satisfy regular expression pattern: "
                                  f"{VERSION_ARN_PATTERN}, Member must not be null]")
            if match["region"] != self.arns.region:
                raise AwsError.invalid_parameter(
                    "Layers are not in the same region as the function. Layers are expected to "
                    f"be in region {self.arns.region}.")
            row = (self._row(match["name"], int(match["version"]), arn in attached)
                   if self._ours(match) else None)
            if row is None:
                raise AwsError.invalid_parameter(f"Layer version {arn} does not exist.")
            layer_arn = arn.rsplit(":", 1)[0]
            if layer_arn in seen:
                raise AwsError.invalid_parameter(
                    "Two different versions of the same layer are not allowed to be referenced "
                    f"in the same function. {seen[layer_arn]} and {arn} are versions of the "
                    "same layer.")
            seen[layer_arn] = arn
            total += int(row["unzipped"])
            configured.append({"Arn": arn,
                               "CodeSize": json.loads(row["info"])["Content"]["CodeSize"]})
        if total > MAX_UNZIPPED_BYTES:
            raise AwsError.invalid_parameter(
                "Function code combined with layers exceeds the maximum allowed size of "
                f"{MAX_UNZIPPED_BYTES} bytes. The actual size is {total} bytes.")
        return configured

    def opt_dir(self, record: FunctionRecord) -> Path | None:
        """The merged layers of a function version (built on first use), or None."""
        shas = self._stack(record.config)
        if not shas:
            return None
        target = self.code.root / "opt" / _stack_id(shas)
        if not target.is_dir():
            self._merge(shas, target)
        return target

    def code_in_use(self, sha_hex: str) -> bool:
        return self.db.query_one("SELECT 1 FROM layer_versions WHERE code_sha_hex = ?",
                                 (sha_hex,)) is not None

    async def function_changed(self, _function: str) -> None:
        """FunctionService listener: a function version went, or changed its layers."""
        self.collect()

    def collect(self) -> None:
        """Drop deleted layer versions that no function version names any more (with their
        code), and merged stacks that no function version uses."""
        configs = list(self._configs())
        named = {layer["Arn"] for c in configs for layer in c.get("Layers", [])}
        for row in self.db.query("SELECT name, version, code_sha_hex FROM layer_versions "
                                 "WHERE deleted = 1"):
            if self.arns.layer(row["name"], int(row["version"])) in named:
                continue
            self.db.execute("DELETE FROM layer_versions WHERE name = ? AND version = ?",
                            (row["name"], row["version"]))
            self._collect_code(row["code_sha_hex"])
        wanted = {_stack_id(s) for s in (self._stack(c) for c in configs) if s}
        for entry in (self.code.root / "opt").iterdir():
            if entry.name not in wanted and not entry.name.startswith("."):
                remove_tree(entry)

    # -- helpers ------------------------------------------------------------------------------

    def _stack(self, config: dict[str, Any]) -> list[str]:
        shas: list[str] = []
        for layer in config.get("Layers", []):
            match = LAYER_ARN_RE.fullmatch(layer["Arn"])
            if match is None or match["version"] is None:
                continue  # attach() let no such ARN in
            row = self._row(match["name"], int(match["version"]), include_deleted=True)
            if row is not None:
                shas.append(str(row["code_sha_hex"]))
        return shas

    def _merge(self, shas: list[str], target: Path) -> None:
        """Link every layer's files into ``target``, in order, so later layers win."""
        staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
        try:
            for sha in shas:
                _overlay(self.code.task_root(sha), staging)
            make_read_only(staging)  # and readable by the sandbox's unprivileged user
            os.rename(staging, target)
        except OSError:
            remove_tree(staging)
            raise

    def _name(self, layer: str) -> str:
        if layer.startswith("arn:"):
            match = LAYER_ARN_RE.fullmatch(layer)
            if match is None or match["version"] is not None or not self._ours(match):
                raise field_error(layer, "layerName", _NAME_CONSTRAINT)
            return match["name"]
        if not NAME_RE.fullmatch(layer):
            raise field_error(layer, "layerName", _NAME_CONSTRAINT)
        return layer

    def _ours(self, match: re.Match[str]) -> bool:
        return (match["account"] == self.arns.account_id
                and match["region"] == self.arns.region)

    def _row(self, name: str, version: int,
             include_deleted: bool = False) -> sqlite3.Row | None:
        return self.db.query_one(
            "SELECT * FROM layer_versions WHERE name = ? AND version = ?"
            + ("" if include_deleted else " AND deleted = 0"), (name, version))

    def _policy_target(self, layer: str, version: str) -> tuple[str, int, dict[str, Any]]:
        """The layer version's name, number and policy (without one, no statements)."""
        name, number = self._name(layer), _version_number(version)
        row = self._row(name, number)
        if row is None:
            raise AwsError.not_found(
                f"Layer version {self.arns.layer(name, number)} does not exist.")
        policy = json.loads(row["policy"]) if row["policy"] else {"Statements": []}
        return name, number, policy

    def _save_policy(self, name: str, number: int, policy: dict[str, Any]) -> None:
        self.db.execute("UPDATE layer_versions SET policy = ? WHERE name = ? AND version = ?",
                        (json.dumps(policy), name, number))


def _overlay(source: Path, target: Path) -> None:
    for directory, dirs, files in os.walk(source):
        here = target / Path(directory).relative_to(source)
        if here.is_symlink() or (here.exists() and not here.is_dir()):
            here.unlink()  # a directory replaces an earlier layer's file
        here.mkdir(parents=True, exist_ok=True)
        for entry in [*files, *(d for d in dirs if (Path(directory) / d).is_symlink())]:
            src, dst = Path(directory) / entry, here / entry
            if dst.is_dir() and not dst.is_symlink():
                remove_tree(dst)
            else:
                with contextlib.suppress(FileNotFoundError):
                    dst.unlink()
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                try:
                    os.link(src, dst)
                except OSError:  # another filesystem, or too many links: a copy serves too
                    shutil.copy2(src, dst)


def _stack_id(shas: list[str]) -> str:
    return hashlib.sha256("\n".join(shas).encode()).hexdigest()


def _version_number(raw: str) -> int:
    if not raw.lstrip("-").isdigit():
        raise AwsError.invalid_content(
            f"Could not parse request body into json: VersionNumber '{raw}' is not a number")
    number = int(raw)
    if number < 1:
        raise AwsError.invalid_parameter("Layer Version Cannot be less than 1")
    return number


def _text(fields: Fields, key: str, label: str, limit: int) -> str | None:
    value = fields.string(key)
    if value is not None and len(value) > limit:
        raise field_error("...", label, f"Member must have length less than or equal to {limit}")
    return value


def _choices(fields: Fields, key: str, label: str, allowed: tuple[str, ...],
             limit: int) -> list[str] | None:
    values = fields.array(key)
    if values is None:
        return None
    if len(values) > limit:
        raise field_error(values, label, f"Member must have length less than or equal to {limit}")
    for value in values:
        if value not in allowed:
            raise field_error(values, label, "Member must satisfy constraint: [Member must satisfy "
                              f"enum value set: [{', '.join(allowed)}]]")
    return list(values)


def _filters(runtime: str | None, architecture: str | None) -> None:
    if runtime is not None and runtime not in RUNTIMES:
        raise field_error(runtime, "compatibleRuntime",
                          f"Member must satisfy enum value set: [{', '.join(RUNTIMES)}]")
    if architecture is not None and architecture not in ARCHITECTURES:
        raise field_error(architecture, "compatibleArchitecture",
                          "Member must satisfy enum value set: [x86_64, arm64]")


def _matches(info: dict[str, Any], runtime: str | None, architecture: str | None) -> bool:
    return ((runtime is None or runtime in info.get("CompatibleRuntimes", []))
            and (architecture is None
                 or architecture in info.get("CompatibleArchitectures", [])))


def _summary(info: dict[str, Any]) -> dict[str, Any]:
    """A LayerVersionsListItem: the version without its Content."""
    return {k: v for k, v in info.items() if k not in ("Content", "LayerArn")}

