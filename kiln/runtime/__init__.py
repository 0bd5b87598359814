"""The Lambda Runtime API (2018-06-01) served per execution environment, and the built-in
runtimes that speak it (Python, Node.js, ``provided``)."""

from kiln.runtime.api import RuntimeApi
from kiln.runtime.types import Invocation, InvocationResult

__all__ = ["Invocation", "InvocationResult", "RuntimeApi"]
