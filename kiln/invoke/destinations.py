"""What an asynchronous invocation leaves behind once it is done: AWS's invocation record for
an OnSuccess/OnFailure destination, or the dead-letter message for a DeadLetterConfig target.

    record = invocation_record("RetriesExhausted", request_id, arn, 3, payload, outcome)
    letter = dead_letter_event(payload, request_id, "200", "boom", target_arn, "us-east-1")

Kiln delivers both to Lambda functions, as Event invokes.  A dead letter reaches its function
shaped as the SQS event a Lambda subscribed to an SQS dead-letter queue would get: the original
payload as ``body``, with the ``RequestID``, ``ErrorCode`` and ``ErrorMessage`` message
attributes AWS sets, so a handler written for a DLQ queue works unchanged.
"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from typing import Any

from kiln.invoke.service import InvokeOutcome

#: AWS truncates a dead letter's ErrorMessage attribute to 1 KB.
ERROR_MESSAGE_LIMIT = 1024


def invocation_record(condition: str, request_id: str, function_arn: str, invoke_count: int,
                      payload: bytes, outcome: InvokeOutcome | None) -> dict[str, Any]:
    """The record AWS sends to a destination.  ``condition`` is Success, RetriesExhausted or
    EventAgeExceeded; ``outcome`` is the last run's (None when the event never ran to an end,
    and the record then has no response part)."""
    record: dict[str, Any] = {
        "version": "1.0",
        "timestamp": iso_now(),
        "requestContext": {
            "requestId": request_id,
            "functionArn": function_arn,
            "condition": condition,
            "approximateInvokeCount": invoke_count,
        },
        "requestPayload": _json_or_text(payload),
    }
    if outcome is not None:
        context: dict[str, Any] = {"statusCode": 200,
                                   "executedVersion": outcome.executed_version}
        if outcome.result.error_type is not None:
            context["functionError"] = "Unhandled"
        record["responseContext"] = context
        record["responsePayload"] = _json_or_text(outcome.result.body)
    return record


def dead_letter_event(payload: bytes, request_id: str, error_code: str, error_message: str,
                      target_arn: str, region: str) -> dict[str, Any]:
    """The failed event's original payload as one SQS message with AWS's DLQ attributes."""
    body = payload.decode("utf-8", errors="replace")
    now_ms = str(int(time.time() * 1000))
    return {"Records": [{
        "messageId": str(uuid.uuid4()),
        "receiptHandle": "",
        "body": body,
        "attributes": {"ApproximateReceiveCount": "1", "SentTimestamp": now_ms,
                       "ApproximateFirstReceiveTimestamp": now_ms},
        "messageAttributes": {
            "RequestID": _attribute(request_id, "String"),
            "ErrorCode": _attribute(error_code, "Number"),
            "ErrorMessage": _attribute(error_message[:ERROR_MESSAGE_LIMIT], "String"),
        },
        "md5OfBody": hashlib.md5(body.encode()).hexdigest(),
        "eventSource": "aws:sqs",
        "eventSourceARN": target_arn,
        "awsRegion": region,
    }]}


def error_message(outcome: InvokeOutcome) -> str:
    """The ``errorMessage`` of a failed run's error JSON (or its raw body)."""
    message = outcome.result.error_json().get("errorMessage")
    return str(message) if message is not None else outcome.result.body.decode(errors="replace")


def _attribute(value: str, data_type: str) -> dict[str, Any]:
    return {"stringValue": value, "stringListValues": [], "binaryListValues": [],
            "dataType": data_type}


def _json_or_text(data: bytes) -> Any:
    if not data.strip():
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return data.decode("utf-8", errors="replace")


def iso_now() -> str:
    now = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
