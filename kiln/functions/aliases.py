"""Aliases: named pointers to one function version, optionally sending a share of invokes to
a second (published) version.

    alias = store.find("fn", "live")
    version = alias.pick()     # the additional version with its weight's chance, else the primary

Rows live in ``function_aliases``; every alias is also held in memory (the FunctionService is
the only writer on a node), because invokes by alias read them on the hot path.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Any

from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS function_aliases (
        function TEXT NOT NULL,
        name TEXT NOT NULL,
        config TEXT NOT NULL,
        PRIMARY KEY (function, name)
    )""",
]


@dataclass(frozen=True)
class Alias:
    function: str
    name: str
    function_version: str
    description: str
    revision_id: str
    #: AdditionalVersionWeights: at most one published version and its share of invokes.
    weights: dict[str, float] = field(default_factory=dict)

    def pick(self) -> str:
        """The version one invoke runs, chosen at random per the weights."""
        draw = random.random()
        for version, weight in self.weights.items():
            if draw < weight:
                return version
            draw -= weight
        return self.function_version

    def references(self, version: str) -> bool:
        return version == self.function_version or version in self.weights

    def configuration(self, arn: str) -> dict[str, Any]:
        """The AliasConfiguration shape the API answers."""
        config: dict[str, Any] = {
            "AliasArn": arn,
            "Name": self.name,
            "FunctionVersion": self.function_version,
            "Description": self.description,
            "RevisionId": self.revision_id,
        }
        if self.weights:
            config["RoutingConfig"] = {"AdditionalVersionWeights": dict(self.weights)}
        return config

    def to_json(self) -> str:
        return json.dumps({"FunctionVersion": self.function_version,
                           "Description": self.description, "RevisionId": self.revision_id,
                           "Weights": self.weights})

    @classmethod
    def from_json(cls, function: str, name: str, raw: str) -> Alias:
        data = json.loads(raw)
        return cls(function, name, str(data["FunctionVersion"]), str(data["Description"]),
                   str(data["RevisionId"]),
                   {str(k): float(v) for k, v in data.get("Weights", {}).items()})


class AliasStore:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)
        self._aliases: dict[str, dict[str, Alias]] = {}
        for row in db.query("SELECT function, name, config FROM function_aliases"):
            alias = Alias.from_json(row["function"], row["name"], row["config"])
            self._aliases.setdefault(alias.function, {})[alias.name] = alias

    def find(self, function: str, name: str) -> Alias | None:
        return self._aliases.get(function, {}).get(name)

    def of(self, function: str) -> list[Alias]:
        """A function's aliases, by name."""
        return sorted(self._aliases.get(function, {}).values(), key=lambda a: a.name)

    def users(self, function: str, version: str) -> tuple[str, ...]:
        """Names of the aliases that route to ``version``."""
        return tuple(a.name for a in self.of(function) if a.references(version))

    def save(self, alias: Alias) -> None:
        with self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO function_aliases (function, name, config) "
                       "VALUES (?, ?, ?)", (alias.function, alias.name, alias.to_json()))
        self._aliases.setdefault(alias.function, {})[alias.name] = alias

    def remove(self, function: str, name: str) -> None:
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM function_aliases WHERE function = ? AND name = ?",
                       (function, name))
        aliases = self._aliases.get(function, {})
        aliases.pop(name, None)
        if not aliases:
            self._aliases.pop(function, None)

    def remove_all(self, function: str) -> None:
        """Forget a deleted function's aliases (joins the caller's transaction)."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM function_aliases WHERE function = ?", (function,))
        self._aliases.pop(function, None)
