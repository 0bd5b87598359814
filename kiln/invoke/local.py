"""Invoking a function by ARN from inside Kiln (Step Functions tasks, gateways).

    local = LocalInvoker(kiln.functions, kiln.invoker)
    body, error_type = await local.invoke("arn:aws:lambda:...:function:f:live", b"{}")
"""

from __future__ import annotations

from collections.abc import Callable

from kiln.aws.arn import FunctionId, parse_function_id
from kiln.aws.errors import AwsError
from kiln.functions.service import FunctionService
from kiln.invoke.service import Invoker, InvokeRequest

_IDS_MAX = 4096


class InvokeFailed(Exception):
    """The function could not be run at all (missing, throttled): ``code`` is the AWS error."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class LocalInvoker:
    def __init__(self, functions: FunctionService, invoker: Invoker) -> None:
        self.functions = functions
        self.invoker = invoker
        #: Parsed ARNs: integrations and state machines name the same few on every request.
        self._ids: dict[str, FunctionId] = {}

    def function_id(self, function_arn: str) -> FunctionId:
        """``function_arn`` parsed (raises AwsError if it is not a function's)."""
        fid = self._ids.get(function_arn)
        if fid is None:
            fid = parse_function_id(function_arn)
            if len(self._ids) >= _IDS_MAX:
                self._ids.clear()
            self._ids[function_arn] = fid
        return fid

    async def invoke(self, function_arn: str, payload: bytes,
                     on_result: Callable[[bytes, str | None], object] | None = None
                     ) -> tuple[bytes, str | None]:
        """(response body, function error type or None); raises InvokeFailed.  ``on_result``
        is told the same the moment the function has it (``InvokeRequest.on_result``)."""
        request = InvokeRequest(payload=payload, invoked_arn=function_arn)
        if on_result is not None:
            request.on_result = lambda result: on_result(result.body, result.error_type)
        try:
            fid = self.function_id(function_arn)
            record = self.functions.resolve(fid.name, fid.qualifier)
            outcome = await self.invoker.invoke(record, request)
        except AwsError as exc:
            raise InvokeFailed(exc.code, exc.message) from None
        return outcome.result.body, outcome.result.error_type
