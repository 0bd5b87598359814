"""Provisioned concurrency: environments of a published version (or of an alias's versions)
initialised ahead of invokes and kept warm.

    configs = ProvisionedConfigs(db)                 # the stored configurations
    provisioning = Provisioning(functions, assignment, account_limit)
    answer = await provisioning.put("fn", "live", {"ProvisionedConcurrentExecutions": 2})
    provisioning.get("fn", "live")["Status"]         # IN_PROGRESS, then READY (or FAILED)

The data plane (``Provisioner``: the Assignment) keeps the environments; this module decides how
many each version gets, from every configuration of its function, whenever the function, its
versions or aliases change (``reconcile``).  Provisioned concurrency counts against the
function's reservation, or is carved out of the account's unreserved pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields
from kiln.functions.paging import page_of
from kiln.functions.types import FunctionRecord, timestamp
from kiln.functions.validation import field_error, null_error
from kiln.store import Database

if TYPE_CHECKING:
    from kiln.functions.service import FunctionService

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS provisioned_concurrency (
        function TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        requested INTEGER NOT NULL,
        last_modified TEXT NOT NULL,
        PRIMARY KEY (function, qualifier)
    )""",
]


@dataclass(frozen=True)
class ProvisionedConfig:
    function: str
    qualifier: str
    requested: int
    last_modified: str


class ProvisionedConfigs:
    """The stored configurations, also held in memory (the FunctionService writes them)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)
        self._configs = {
            (row["function"], row["qualifier"]): ProvisionedConfig(
                row["function"], row["qualifier"], int(row["requested"]), row["last_modified"])
            for row in db.query("SELECT * FROM provisioned_concurrency")}
        #: Function name -> provisioned concurrency of all its qualifiers (mutated in place:
        #: the Counting reads it per invoke).
        self.totals: dict[str, int] = {}
        for function in {key[0] for key in self._configs}:
            self._recount(function)

    def functions(self) -> list[str]:
        return sorted({key[0] for key in self._configs})

    def of(self, function: str) -> list[ProvisionedConfig]:
        return sorted((c for key, c in self._configs.items() if key[0] == function),
                      key=lambda c: c.qualifier)

    def find(self, function: str, qualifier: str) -> ProvisionedConfig | None:
        return self._configs.get((function, qualifier))

    def carved(self, reservations: dict[str, int], exclude: str | None = None) -> int:
        """Provisioned concurrency of functions without a reservation (taken from the
        account's unreserved pool), except ``exclude``'s."""
        return sum(count for function, count in self.totals.items()
                   if function not in reservations and function != exclude)

    def put(self, config: ProvisionedConfig) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO provisioned_concurrency (function, qualifier, requested, "
            "last_modified) VALUES (?, ?, ?, ?)",
            (config.function, config.qualifier, config.requested, config.last_modified))
        self._configs[(config.function, config.qualifier)] = config
        self._recount(config.function)

    def remove(self, function: str, qualifier: str | None = None) -> None:
        """One configuration, or (``qualifier`` None) all of a function's."""
        if qualifier is None:
            self.db.execute("DELETE FROM provisioned_concurrency WHERE function = ?",
                            (function,))
        else:
            self.db.execute("DELETE FROM provisioned_concurrency WHERE function = ? "
                            "AND qualifier = ?", (function, qualifier))
        for key in [k for k in self._configs
                    if k[0] == function and qualifier in (None, k[1])]:
            del self._configs[key]
        self._recount(function)

    def _recount(self, function: str) -> None:
        total = sum(c.requested for key, c in self._configs.items() if key[0] == function)
        if total:
            self.totals[function] = total
        else:
            self.totals.pop(function, None)


class Provisioner(Protocol):
    """The data plane's side (the Assignment)."""

    def provision(self, record: FunctionRecord, count: int) -> None:
        """Keep ``count`` environments of ``record`` initialised (0: none)."""

    def provisioned_state(self, name: str, version: str) -> tuple[int, str | None]:
        """(environments initialised, the INIT failure that stopped provisioning)."""


class Provisioning:
    def __init__(self, functions: FunctionService, provisioner: Provisioner,
                 account_limit: int) -> None:
        self.functions = functions
        self.configs = functions.provisioned
        self.provisioner = provisioner
        self.account_limit = account_limit
        #: (function, version) -> the record provisioned for it and how many, as last applied.
        self._applied: dict[tuple[str, str], tuple[FunctionRecord, int]] = {}

    async def start(self) -> None:
        """Provision what the stored configurations ask for (after a restart)."""
        for function in self.configs.functions():
            await self.reconcile(function)

    # -- the API ------------------------------------------------------------------------------

    async def put(self, name: str, qualifier: str | None,
                  body: dict[str, Any]) -> dict[str, Any]:
        """PutProvisionedConcurrencyConfig."""
        qualifier = _qualifier(qualifier)
        if qualifier == "$LATEST":
            raise AwsError.invalid_parameter(
                "Provisioned Concurrency Configs cannot be applied to unpublished function "
                "versions.")
        requested = Fields(body).integer("ProvisionedConcurrentExecutions")
        if requested is None:
            raise null_error("provisionedConcurrentExecutions")
        if requested < 1:
            raise field_error(requested, "provisionedConcurrentExecutions",
                              "Member must have value greater than or equal to 1")
        self._target(name, qualifier)  # ResourceNotFoundException for unknown qualifiers
        self._check_conflicts(name, qualifier)
        self._check_capacity(name, qualifier, requested)
        self.configs.put(ProvisionedConfig(name, qualifier, requested, timestamp()))
        await self.reconcile(name, retry=True)
        return self.get(name, qualifier)

    def get(self, name: str, qualifier: str | None) -> dict[str, Any]:
        """GetProvisionedConcurrencyConfig."""
        qualifier = _published_qualifier(qualifier)
        self._target(name, qualifier)
        config = self.configs.find(name, qualifier)
        if config is None:
            raise AwsError("ProvisionedConcurrencyConfigNotFoundException",
                           "No Provisioned Concurrency Config found for this function", 404)
        return self._status(config)

    async def delete(self, name: str, qualifier: str | None) -> None:
        """DeleteProvisionedConcurrencyConfig (idempotent, like AWS's)."""
        qualifier = _published_qualifier(qualifier)
        self._target(name, qualifier)
        self.configs.remove(name, qualifier)
        await self.reconcile(name)

    def listing(self, name: str, marker: str | None,
                max_items: int) -> tuple[list[dict[str, Any]], str | None]:
        """ListProvisionedConcurrencyConfigs, by qualifier."""
        self.functions.get(name)
        page, next_marker = page_of(self.configs.of(name), lambda c: c.qualifier, max_items,
                                    marker)
        items = [{"FunctionArn": self.functions.arns.function(name, c.qualifier),
                  **self._status(c)} for c in page]
        return items, next_marker

    # -- keeping the data plane in step -------------------------------------------------------

    async def reconcile(self, name: str, retry: bool = False) -> None:
        """Provision every version of ``name`` as its configurations now ask, dropping
        configurations whose version, alias or function is gone (a FunctionService listener;
        also called after alias changes).  Versions whose provisioning did not change are left
        alone (one that FAILED stays so) unless ``retry``."""
        wanted: dict[str, tuple[FunctionRecord, int]] = {}
        for config in self.configs.of(name):
            try:
                split = self._target(name, config.qualifier)
            except AwsError:
                self.configs.remove(name, config.qualifier)
                continue
            for record, count in _share(split, config.requested):
                wanted[record.version] = (record, wanted.get(record.version, (record, 0))[1]
                                          + count)
        for key, (record, _count) in list(self._applied.items()):
            if key[0] == name and key[1] not in wanted:
                self.provisioner.provision(record, 0)
                del self._applied[key]
        for version, (record, count) in wanted.items():
            if retry or self._applied.get((name, version)) != (record, count):
                self.provisioner.provision(record, count)
                self._applied[(name, version)] = (record, count)

    # -- helpers ------------------------------------------------------------------------------

    def _target(self, name: str, qualifier: str) -> list[tuple[FunctionRecord, float]]:
        """The versions a qualifier provisions, with their shares (an alias with a routing
        configuration splits its provisioned concurrency by the weights)."""
        self.functions.get(name)  # ResourceNotFoundException for a missing function
        if qualifier.isdigit():
            return [(self.functions.get(name, qualifier), 1.0)]
        alias = self.functions.aliases.find(name, qualifier)
        if alias is None:
            raise AwsError.not_found(
                f"Cannot find alias arn: {self.functions.arns.function(name, qualifier)}")
        extra = sum(alias.weights.values())
        return [(self.functions.get(name, alias.function_version), 1.0 - extra),
                *((self.functions.get(name, v), w) for v, w in alias.weights.items())]

    def _check_conflicts(self, name: str, qualifier: str) -> None:
        """A version and an alias pointing to it cannot both be provisioned."""
        if qualifier.isdigit():
            for config in self.configs.of(name):
                alias = self.functions.aliases.find(name, config.qualifier)
                if alias is not None and alias.function_version == qualifier:
                    raise AwsError.conflict(
                        "Version is pointed by a Provisioned Concurrency alias")
            return
        alias = self.functions.aliases.find(name, qualifier)
        if alias is not None and self.configs.find(name, alias.function_version) is not None:
            raise AwsError.conflict(
                "Alias can't be used for Provisioned Concurrency configuration on an already "
                "Provisioned version")

    def _check_capacity(self, name: str, qualifier: str, requested: int) -> None:
        existing = self.configs.find(name, qualifier)
        total = (self.configs.totals.get(name, 0)
                 - (existing.requested if existing else 0) + requested)
        reservations = self.functions.concurrency
        reserved = reservations.reserved.get(name)
        if reserved is not None:
            if total > reserved:
                raise AwsError.invalid_parameter(
                    "Requested Provisioned Concurrency should not be greater than the "
                    "reservedConcurrentExecution for function")
            return
        reservations.check_unreserved(
            name, total, self.account_limit,
            self.configs.carved(reservations.reserved, exclude=name), "ConcurrentExecutions")

    def _status(self, config: ProvisionedConfig) -> dict[str, Any]:
        available = 0
        failures = []
        for record, count in _share(self._target(config.function, config.qualifier),
                                    config.requested):
            ready, failure = self.provisioner.provisioned_state(record.name, record.version)
            available += min(count, ready)
            if failure is not None:
                failures.append(failure)
        answer: dict[str, Any] = {
            "RequestedProvisionedConcurrentExecutions": config.requested,
            "AvailableProvisionedConcurrentExecutions": available,
            "AllocatedProvisionedConcurrentExecutions": available,
            "Status": ("FAILED" if failures
                       else "READY" if available >= config.requested else "IN_PROGRESS"),
            "LastModified": config.last_modified,
        }
        if failures:
            answer["StatusReason"] = failures[0]
        return answer


def _share(split: list[tuple[FunctionRecord, float]],
           requested: int) -> list[tuple[FunctionRecord, int]]:
    """``requested`` environments shared by weight (the primary version takes the rest)."""
    extras = [(record, round(requested * weight)) for record, weight in split[1:]]
    primary = requested - sum(count for _record, count in extras)
    return [(record, count) for record, count in [(split[0][0], primary), *extras] if count]


def _qualifier(qualifier: str | None) -> str:
    if not qualifier:
        raise null_error("qualifier")
    return qualifier


def _published_qualifier(qualifier: str | None) -> str:
    qualifier = _qualifier(qualifier)
    if qualifier == "$LATEST":
        raise AwsError.invalid_parameter(
            "The function resource provided must be an alias or a published version.")
    return qualifier
