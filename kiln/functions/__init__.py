"""The Lambda control plane: functions and their code (versions, aliases, layers,
concurrency and URLs build on these)."""

from kiln.functions.service import FunctionService
from kiln.functions.types import FunctionRecord

__all__ = ["FunctionRecord", "FunctionService"]
