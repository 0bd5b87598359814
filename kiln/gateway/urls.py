"""Lambda Function URLs: the configuration API (2021-10-31, beside Lambda's other routes) and
the store the data plane reads.

A URL is ``http://{url-id}.lambda-url.localhost:PORT/`` (see ``addressing``).  AuthType
``AWS_IAM`` requires a SigV4-shaped ``Authorization`` header for service ``lambda``; Kiln has
no IAM, so the signature itself is not verified.

    urls = FunctionUrls(db, functions, arns, endpoint="localhost:8900")
    config = urls.by_id(url_id)      # UrlConfig | None, cached
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from kiln.aws.arn import ArnBuilder
from kiln.aws.errors import AwsError
from kiln.aws.restjson import Fields, aws_endpoint, empty_response, json_body, json_response
from kiln.functions.api import function_id, max_items, page
from kiln.functions.service import FunctionService, timestamp
from kiln.functions.validation import field_error, null_error
from kiln.gateway.store import cors_from_wire, validate_cors
from kiln.gateway.types import Cors
from kiln.store import Database

if TYPE_CHECKING:
    from kiln.server import Kiln

SCHEMA = [
    """CREATE TABLE IF NOT EXISTS function_urls (
        url_id TEXT PRIMARY KEY,
        function_name TEXT NOT NULL,
        qualifier TEXT NOT NULL,
        body TEXT NOT NULL,
        UNIQUE (function_name, qualifier)
    )""",
]
MAX_BODY = 1 << 20
_QUALIFIER = re.compile(r"^(?!\d+$)[0-9a-zA-Z_-]{1,128}\Z")
_PASCAL_CORS = {k: k for k in ("AllowOrigins", "AllowMethods", "AllowHeaders", "ExposeHeaders",
                               "AllowCredentials", "MaxAge")}
# AWS4-HMAC-SHA256 Credential=AKID/20240101/us-east-1/lambda/aws4_request,
#   SignedHeaders=host;x-amz-date, Signature=<64 hex>
_SIGV4 = re.compile(
    r"^AWS4-HMAC-SHA256 Credential=(?P<key>[^/,\s]+)/\d{8}/[a-z0-9-]+/lambda/aws4_request,\s*"
    r"SignedHeaders=[a-z0-9;-]+,\s*Signature=[0-9a-f]{64}$")


@dataclass(frozen=True)
class UrlConfig:
    url_id: str
    function_arn: str  # qualified when the URL is for an alias
    auth_type: str  # NONE | AWS_IAM
    cors: Cors | None


def sigv4_access_key(authorization: str | None, amz_date: str | None) -> str | None:
    """The access key of a SigV4-shaped request for service ``lambda`` (None: not signed)."""
    if authorization is None or amz_date is None:
        return None
    match = _SIGV4.match(authorization.strip())
    return match["key"] if match else None


class FunctionUrls:
    def __init__(self, db: Database, functions: FunctionService, arns: ArnBuilder,
                 endpoint: str) -> None:
        self.db = db
        self.functions = functions
        self.arns = arns
        self.endpoint = endpoint
        db.migrate(SCHEMA)
        self._by_id: dict[str, UrlConfig] = {}
        functions.listeners.append(self._function_changed)

    def by_id(self, url_id: str) -> UrlConfig | None:
        config = self._by_id.get(url_id)
        if config is None:
            row = self.db.query_one("SELECT body FROM function_urls WHERE url_id = ?",
                                    (url_id,))
            if row is None:
                return None  # unknown ids are not remembered: requests choose them
            config = self._by_id[url_id] = _config(url_id, json.loads(row["body"]))
        return config

    def create(self, name: str, qualifier: str | None, body: dict[str, Any]) -> dict[str, Any]:
        arn = self._function_arn(name, qualifier)
        auth, cors, mode = self._fields(body, required=True)
        if self._row(name, qualifier) is not None:
            raise AwsError.conflict(
                f"Failed to create function url config for [functionArn = {arn}]. Error "
                "message:  FunctionUrlConfig exists for this Lambda function")
        url_id = "".join(secrets.choice(string.ascii_lowercase + string.digits)
                         for _ in range(32))
        now = timestamp()
        wire: dict[str, Any] = {
            "FunctionUrl": f"http://{url_id}.lambda-url.{self.endpoint}/",
            "FunctionArn": arn, "AuthType": auth, "CreationTime": now,
            "LastModifiedTime": now, "InvokeMode": mode or "BUFFERED"}
        if cors is not None:
            wire["Cors"] = cors
        self.db.execute("INSERT INTO function_urls (url_id, function_name, qualifier, body) "
                        "VALUES (?, ?, ?, ?)", (url_id, name, qualifier or "", json.dumps(wire)))
        self._by_id.pop(url_id, None)
        return {k: v for k, v in wire.items() if k != "LastModifiedTime"}

    def get(self, name: str, qualifier: str | None) -> dict[str, Any]:
        self._function_arn(name, qualifier)
        row = self._row(name, qualifier)
        if row is None:
            raise AwsError.not_found("The resource you requested does not exist.")
        body: dict[str, Any] = json.loads(row["body"])
        return body

    def update(self, name: str, qualifier: str | None, body: dict[str, Any]) -> dict[str, Any]:
        wire = self.get(name, qualifier)
        auth, cors, mode = self._fields(body, required=False)
        for key, value in (("AuthType", auth), ("Cors", cors), ("InvokeMode", mode)):
            if value is not None:
                wire[key] = value
        wire["LastModifiedTime"] = timestamp()
        url_id = wire["FunctionUrl"].split("//", 1)[1].split(".", 1)[0]
        self.db.execute("UPDATE function_urls SET body = ? WHERE url_id = ?",
                        (json.dumps(wire), url_id))
        self._by_id.pop(url_id, None)
        return wire

    def delete(self, name: str, qualifier: str | None) -> None:
        self.get(name, qualifier)
        self.db.execute("DELETE FROM function_urls WHERE function_name = ? AND qualifier = ?",
                        (name, qualifier or ""))
        self._by_id.clear()

    def list(self, name: str) -> list[dict[str, Any]]:
        self.functions.get(name)
        rows = self.db.query("SELECT body FROM function_urls WHERE function_name = ? "
                             "ORDER BY rowid", (name,))
        return [json.loads(r["body"]) for r in rows]

    def _function_arn(self, name: str, qualifier: str | None) -> str:
        """The URL's function ARN; ResourceNotFoundException for a missing function/alias."""
        if qualifier is not None:
            if not _QUALIFIER.match(qualifier):
                raise field_error(qualifier, "qualifier", "Member must satisfy regular "
                                  "expression pattern: ((?!^\\d+$)^[0-9a-zA-Z-_]+$)")
            self.functions.get_alias(name, qualifier)
        else:
            self.functions.get(name)
        return self.arns.function(name, qualifier)

    @staticmethod
    def _fields(body: dict[str, Any],
                required: bool) -> tuple[str | None, dict[str, Any] | None, str | None]:
        fields = Fields(body)
        auth = fields.string("AuthType")
        if auth is None and required:
            raise null_error("authType", "ValidationException")
        if auth is not None and auth not in ("NONE", "AWS_IAM"):
            raise field_error(auth, "authType", "Member must satisfy enum value set: "
                              "[AWS_IAM, NONE]", "ValidationException")
        mode = fields.string("InvokeMode")
        if mode is not None and mode not in ("BUFFERED", "RESPONSE_STREAM"):
            raise field_error(mode, "invokeMode", "Member must satisfy enum value set: "
                              "[BUFFERED, RESPONSE_STREAM]", "ValidationException")
        raw_cors = fields.mapping("Cors")
        cors = None if raw_cors is None else validate_cors(
            raw_cors, _PASCAL_CORS, 0, AwsError.invalid_parameter)
        return auth, cors, mode

    def _row(self, name: str, qualifier: str | None) -> Any:
        return self.db.query_one("SELECT body FROM function_urls WHERE function_name = ? AND "
                                 "qualifier = ?", (name, qualifier or ""))

    async def _function_changed(self, name: str) -> None:
        """A deleted function takes its URLs with it."""
        try:
            self.functions.get(name)
        except AwsError:
            self.db.execute("DELETE FROM function_urls WHERE function_name = ?", (name,))
            self._by_id.clear()


def _config(url_id: str, wire: dict[str, Any]) -> UrlConfig:
    return UrlConfig(url_id, wire["FunctionArn"], wire["AuthType"],
                     cors_from_wire(wire.get("Cors"), _PASCAL_CORS))


def routes(kiln: Kiln) -> list[Route]:
    urls: FunctionUrls = kiln.function_urls

    def target(request: Request) -> tuple[str, str | None]:
        fid = function_id(kiln, request)
        return fid.name, fid.qualifier

    @aws_endpoint("CreateFunctionUrlConfig")
    async def create(request: Request) -> Response:
        body = await json_body(request, MAX_BODY)
        return json_response(urls.create(*target(request), body), 201)

    @aws_endpoint("GetFunctionUrlConfig")
    async def get(request: Request) -> Response:
        return json_response(urls.get(*target(request)))

    @aws_endpoint("UpdateFunctionUrlConfig")
    async def update(request: Request) -> Response:
        body = await json_body(request, MAX_BODY)
        return json_response(urls.update(*target(request), body))

    @aws_endpoint("DeleteFunctionUrlConfig")
    async def delete(request: Request) -> Response:
        urls.delete(*target(request))
        return empty_response(204)

    @aws_endpoint("ListFunctionUrlConfigs")
    async def list_configs(request: Request) -> Response:
        name, qualifier = target(request)
        if qualifier is not None:
            raise AwsError.invalid_parameter("ListFunctionUrlConfigs takes an unqualified "
                                             "function name")
        configs = urls.list(name)
        marker = request.query_params.get("Marker")
        start = int(marker) if marker and marker.isdigit() else 0
        size = max_items(request)
        rest = configs[start:start + size]
        more = str(start + size) if start + size < len(configs) else None
        return page("FunctionUrlConfigs", rest, more)

    base = "/2021-10-31/functions/{name}"
    return [
        Route(f"{base}/url", create, methods=["POST"]),
        Route(f"{base}/url", get, methods=["GET"]),
        Route(f"{base}/url", update, methods=["PUT"]),
        Route(f"{base}/url", delete, methods=["DELETE"]),
        Route(f"{base}/urls", list_configs, methods=["GET"]),
    ]
