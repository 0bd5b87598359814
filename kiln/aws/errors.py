"""AWS error shapes as botocore parses them.

botocore picks the exception class from the ``x-amzn-ErrorType`` header and the message from
the body's ``message``/``Message``; the status code must be the one the service model gives.

    raise AwsError.not_found("Function not found: arn:...")
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from starlette.responses import Response


class AwsError(Exception):
    """An error answered to the client in AWS's rest-json / json-1.0 shape."""

    def __init__(self, code: str, message: str, status: int = 400, **fields: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status
        self.fields = fields
        self.headers: dict[str, str] = {}

    # The Lambda errors every front door needs, with their modeled status codes.
    @classmethod
    def invalid_parameter(cls, message: str) -> AwsError:
        return cls("InvalidParameterValueException", message, 400)

    @classmethod
    def invalid_content(cls, message: str) -> AwsError:
        return cls("InvalidRequestContentException", message, 400)

    @classmethod
    def not_found(cls, message: str) -> AwsError:
        return cls("ResourceNotFoundException", message, 404)

    @classmethod
    def conflict(cls, message: str) -> AwsError:
        return cls("ResourceConflictException", message, 409)

    @classmethod
    def precondition_failed(cls, message: str) -> AwsError:
        return cls("PreconditionFailedException", message, 412)

    @classmethod
    def too_large(cls, message: str) -> AwsError:
        return cls("RequestEntityTooLargeException", message, 413)

    @classmethod
    def too_many_requests(cls, message: str, reason: str, retry_after: int = 1) -> AwsError:
        error = cls("TooManyRequestsException", message, 429, Reason=reason)
        error.headers["Retry-After"] = str(retry_after)
        return error

    @classmethod
    def service(cls, message: str) -> AwsError:
        return cls("ServiceException", message, 500)

    def body(self) -> dict[str, Any]:
        kind = "User" if self.status < 500 else "Service"
        return {"Type": kind, "message": self.message, "Message": self.message, **self.fields}

    def to_response(self, request_id: str | None = None) -> Response:
        status, headers, body = self.wire(request_id)
        response = Response(body, status_code=status)
        response.raw_headers.extend(headers)
        return response

    def wire(self, request_id: str | None = None) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """Status, headers (with Content-Type, without Content-Length) and body, for front
        doors that write the response themselves."""
        headers = [
            (b"content-type", b"application/json"),
            (b"x-amzn-errortype", self.code.encode("latin-1")),
            (b"x-amzn-requestid", (request_id or str(uuid.uuid4())).encode("latin-1")),
            *((name.lower().encode("latin-1"), value.encode("latin-1"))
              for name, value in self.headers.items()),
        ]
        return self.status, headers, json.dumps(self.body()).encode()
