"""Concurrency as leases: a lease is held for exactly the life of one invocation.

    with counting.lease("fn", reserved=None):
        ...   # released on every exit path, including crashes and cancellation
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager

from kiln.aws.errors import AwsError


class Counting:
    def __init__(self, account_limit: int) -> None:
        self.account_limit = account_limit
        self._in_use: Counter[str] = Counter()
        self._total = 0

    @property
    def in_use(self) -> int:
        return self._total

    def function_in_use(self, name: str) -> int:
        return self._in_use[name]

    @contextmanager
    def lease(self, name: str, reserved: int | None = None) -> Iterator[None]:
        """Take one unit of concurrency or raise TooManyRequestsException (429)."""
        if reserved is not None and self._in_use[name] >= reserved:
            raise AwsError.too_many_requests(
                "Rate Exceeded.", "ReservedFunctionConcurrentInvocationLimitExceeded")
        if self._total >= self.account_limit:
            raise AwsError.too_many_requests(
                "Rate Exceeded.", "ConcurrentInvocationLimitExceeded")
        self._in_use[name] += 1
        self._total += 1
        try:
            yield
        finally:
            self._total -= 1
            self._in_use[name] -= 1
            if not self._in_use[name]:
                del self._in_use[name]
