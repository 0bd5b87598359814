"""Reserved concurrency: per-function shares of the account's concurrency.

A function with a reservation runs at most that many invocations at once (0 throttles every
invoke), and no other function can use its share: functions without one share what is left,
the unreserved pool.  AWS keeps at least 100 executions unreserved; Kiln keeps
``minimum_unreserved(limit)``, which is 100 for AWS's default limit of 1,000 and scales down
for the small limits a local account may be given (``KILN_ACCOUNT_CONCURRENCY``).

    reservations.reserved          # {"fn": 2, ...}: a live mapping the Invoker reads per invoke
"""

from __future__ import annotations

from kiln.aws.errors import AwsError
from kiln.store import Database

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS function_concurrency (
        function TEXT PRIMARY KEY,
        reserved INTEGER NOT NULL
    )""",
]
AWS_MINIMUM_UNRESERVED = 100


def minimum_unreserved(account_limit: int) -> int:
    """The part of the account's concurrency that reservations must leave unreserved:
    AWS's 100, or a tenth of a smaller account's limit (so that a local limit of 20 can still
    reserve 18)."""
    return min(AWS_MINIMUM_UNRESERVED, account_limit // 10)


class Reservations:
    def __init__(self, db: Database) -> None:
        self.db = db
        db.migrate(SCHEMA)
        #: function name -> reserved concurrent executions (mutated in place, never replaced).
        self.reserved: dict[str, int] = {
            row["function"]: int(row["reserved"])
            for row in db.query("SELECT function, reserved FROM function_concurrency")}

    def total(self) -> int:
        return sum(self.reserved.values())

    def unreserved(self, account_limit: int) -> int:
        return account_limit - self.total()

    def check_unreserved(self, function: str, taken: int, account_limit: int, carved: int,
                         setting: str) -> None:
        """InvalidParameterValueException naming ``setting`` when ``function`` taking
        ``taken`` executions leaves too little unreserved (``carved``: what other functions'
        provisioned concurrency already took from it)."""
        minimum = minimum_unreserved(account_limit)
        others = self.total() - self.reserved.get(function, 0)
        if account_limit - others - carved - taken < minimum:
            raise AwsError.invalid_parameter(
                f"Specified {setting} for function decreases account's "
                f"UnreservedConcurrentExecution below its minimum value of [{minimum}].")

    def put(self, function: str, reserved: int, account_limit: int, carved: int = 0) -> None:
        """Reserve ``reserved`` executions for ``function``, or raise
        InvalidParameterValueException when that leaves too little unreserved."""
        self.check_unreserved(function, reserved, account_limit, carved,
                              "ReservedConcurrentExecutions")
        with self.db.transaction() as tx:
            tx.execute("INSERT OR REPLACE INTO function_concurrency (function, reserved) "
                       "VALUES (?, ?)", (function, reserved))
        self.reserved[function] = reserved

    def remove(self, function: str) -> None:
        """Drop a function's reservation (joins the caller's transaction, if any)."""
        with self.db.transaction() as tx:
            tx.execute("DELETE FROM function_concurrency WHERE function = ?", (function,))
        self.reserved.pop(function, None)
