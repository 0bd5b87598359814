"""Concurrency as leases: a lease is held for exactly the life of one invocation.

    counting = Counting(account_limit=1000, reservations=functions.concurrency.reserved)
    with counting.lease("fn"):
        ...   # released on every exit path, including crashes and cancellation

A function with reserved concurrency runs within its reservation; the others share what the
reservations leave of the account's limit.  Provisioned concurrency of a function without a
reservation is carved out of that shared pool too: the function always has that much, and the
others have that much less.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from types import TracebackType

from kiln.aws.errors import AwsError


class Counting:
    def __init__(self, account_limit: int, reservations: Mapping[str, int] | None = None,
                 provisioned: Mapping[str, int] | None = None) -> None:
        self.account_limit = account_limit
        #: Reserved concurrency per function name (the control plane's live mapping).
        self.reservations: Mapping[str, int] = reservations if reservations is not None else {}
        #: Provisioned concurrency per function name, all its versions and aliases together.
        self.provisioned: Mapping[str, int] = provisioned if provisioned is not None else {}
        self._in_use: Counter[str] = Counter()
        self._total = 0

    @property
    def in_use(self) -> int:
        return self._total

    def function_in_use(self, name: str) -> int:
        return self._in_use[name]

    def lease(self, name: str) -> Lease:
        """One unit of ``name``'s concurrency for a ``with`` block; entering it raises
        TooManyRequestsException (429) when there is none left."""
        return Lease(self, name)

    def _take(self, name: str) -> None:
        reserved = self.reservations.get(name)
        if reserved is not None:
            if self._in_use[name] >= reserved:
                raise AwsError.too_many_requests(
                    "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded")
        elif (self._in_use[name] >= self.provisioned.get(name, 0)
              and self._unreserved_in_use() >= self._unreserved_pool()):
            raise AwsError.too_many_requests(
                "Rate Exceeded.", "ConcurrentInvocationLimitExceeded")
        self._in_use[name] += 1
        self._total += 1

    def _give_back(self, name: str) -> None:
        self._total -= 1
        self._in_use[name] -= 1
        if not self._in_use[name]:
            del self._in_use[name]

    def _carved(self) -> dict[str, int]:
        """Provisioned concurrency taken from the shared pool (not within a reservation)."""
        return {name: count for name, count in self.provisioned.items()
                if name not in self.reservations}

    def _unreserved_pool(self) -> int:
        if not self.reservations and not self.provisioned:
            return self.account_limit
        return (self.account_limit - sum(self.reservations.values())
                - sum(self._carved().values()))

    def _unreserved_in_use(self) -> int:
        if not self.reservations and not self.provisioned:
            return self._total
        shares = {**self._carved(), **self.reservations}
        in_shares = sum(min(self._in_use[other], share) for other, share in shares.items())
        return self._total - in_shares


class Lease:
    """A context manager rather than a generator-based one: it is taken on every invoke."""

    __slots__ = ("_counting", "_name")

    def __init__(self, counting: Counting, name: str) -> None:
        self._counting = counting
        self._name = name

    def __enter__(self) -> None:
        self._counting._take(self._name)

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self._counting._give_back(self._name)
