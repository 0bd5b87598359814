"""The Invoke operation (POST /2015-03-31/functions/{name}/invocations)."""

from __future__ import annotations

import json
import uuid
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.errors import AwsError
from kiln.aws.restjson import Endpoint, aws_endpoint, json_response, read_body
from kiln.functions.api import function_id
from kiln.invoke.service import InvokeRequest
from kiln.runtime.api import decode_client_context

if TYPE_CHECKING:
    from kiln.server import Kiln

SYNC_PAYLOAD_LIMIT = 6_291_456
ASYNC_PAYLOAD_LIMIT = 1_048_576
CLIENT_CONTEXT_LIMIT = 3583
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")


def invoke_endpoint(kiln: Kiln) -> Endpoint:
    """The Invoke operation, also served by the server's fast path."""

    @aws_endpoint("Invoke")
    async def invoke(request: Request) -> Response:
        fid = function_id(kiln, request)
        headers = request.headers
        invocation_type = headers.get("x-amz-invocation-type", "RequestResponse")
        if invocation_type not in INVOCATION_TYPES:
            raise AwsError.invalid_parameter(
                f"1 validation error detected: Value '{invocation_type}' at 'invocationType' "
                "failed to satisfy constraint: Member must satisfy enum value set: "
                "[Event, RequestResponse, DryRun]")
        log_type = headers.get("x-amz-log-type", "None")
        if log_type not in ("None", "Tail"):
            raise AwsError.invalid_parameter(
                f"1 validation error detected: Value '{log_type}' at 'logType' failed to "
                "satisfy constraint: Member must satisfy enum value set: [None, Tail]")
        record = kiln.functions.resolve(fid.name, fid.qualifier)
        if invocation_type == "Event":
            payload = await read_body(
                request, ASYNC_PAYLOAD_LIMIT,
                "{size} byte payload is too large for the Event invocation type "
                "(limit {limit} bytes)")
        else:
            payload = await read_body(
                request, SYNC_PAYLOAD_LIMIT,
                "Request must be smaller than {limit} bytes for the InvokeFunction operation")
        _check_json(payload)
        client_context = None
        raw_context = headers.get("x-amz-client-context")
        if raw_context:
            if len(raw_context) > CLIENT_CONTEXT_LIMIT:
                raise AwsError.invalid_parameter(
                    "Client context must be smaller than 3583 bytes when base64-encoded.")
            try:
                client_context = decode_client_context(raw_context)
            except ValueError:
                raise AwsError.invalid_content(
                    "Client context must be a valid Base64-encoded JSON object.") from None
        invoked_arn = kiln.arns.function(fid.name, fid.qualifier)
        if invocation_type == "DryRun":
            return Response(b"", 204, headers={"x-amzn-RequestId": str(uuid.uuid4())})
        if invocation_type == "Event":
            event = InvokeRequest(payload=payload, invoked_arn=invoked_arn)
            kiln.queue.enqueue(fid.name, fid.qualifier, event)
            # No X-Amz-Executed-Version: a weighted alias picks its version when the event runs.
            return Response(b"", 202, headers={"x-amzn-RequestId": event.request_id})
        sync = InvokeRequest(
            payload=payload,
            invoked_arn=invoked_arn,
            client_context=client_context,
            tail=log_type == "Tail",
            dedupe_key=_dedupe_key(request, invoked_arn),
        )
        outcome = await kiln.invoker.invoke(record, sync)
        response_headers = {
            "x-amzn-RequestId": outcome.request_id,
            "X-Amz-Executed-Version": outcome.executed_version,
        }
        if outcome.result.error_type is not None:
            response_headers["X-Amz-Function-Error"] = "Unhandled"
        if outcome.log_tail is not None:
            response_headers["X-Amz-Log-Result"] = outcome.log_tail
        return Response(outcome.result.body, 200, headers=response_headers,
                        media_type=outcome.result.content_type)

    return invoke


def routes(kiln: Kiln) -> list[Route]:
    invoke = invoke_endpoint(kiln)

    @aws_endpoint("KilnReadLogs")
    async def read_logs(request: Request) -> Response:
        """Kiln's own: ``GET /kiln/v1/functions/{name}/logs?offset=N`` (what `kiln logs` polls)."""
        fid = function_id(kiln, request)
        raw = request.query_params.get("offset", "0")
        if not raw.isdigit():
            raise AwsError.invalid_parameter(
                f"Value '{raw}' at 'offset' failed to satisfy constraint: Member must be a "
                "non-negative integer")
        if not kiln.logs.path(fid.name).is_file():
            kiln.functions.get(fid.name)  # ResourceNotFoundException for unknown functions
        # On the event loop, not a thread: read() flushes the store's open (unlocked) files.
        text, next_offset = kiln.logs.read(fid.name, int(raw))
        return json_response({"text": text, "nextOffset": next_offset})

    return [
        Route("/2015-03-31/functions/{name}/invocations", invoke, methods=["POST"]),
        Route("/2015-03-31/functions/{name}/invocations/", invoke, methods=["POST"]),
        Route("/kiln/v1/functions/{name}/logs", read_logs, methods=["GET"]),
    ]


def _check_json(payload: bytes) -> None:
    if not payload.strip():
        return
    try:
        json.loads(payload)
    except (ValueError, UnicodeDecodeError) as exc:
        raise AwsError.invalid_content(
            f"Could not parse request body into json: Could not parse payload into json: {exc}"
        ) from None


def _dedupe_key(request: Request, invoked_arn: str) -> str | None:
    invocation_id = request.headers.get("amz-sdk-invocation-id")
    return f"{invoked_arn}#{invocation_id}" if invocation_id else None
