"""A small client of a monitor's API socket (Firecracker's API over HTTP/1.1 on a Unix socket).

    client = VmmClient("/run/kiln/vm1.sock")
    await client.put("/machine-config", {"vcpu_count": 1, "mem_size_mib": 256})
    info = await client.get("/")

``put``/``patch``/``get`` raise :class:`VmmError` (status and ``fault_message``) on an error
answer; ``request`` returns the raw status and body.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

MAX_HEAD = 64 * 1024


class VmmError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class VmmClient:
    def __init__(self, api_sock: str) -> None:
        self.api_sock = api_sock

    async def request(self, method: str, path: str, body: bytes | None = None,
                      headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, lower-case headers, body)."""
        reader, writer = await asyncio.open_unix_connection(self.api_sock)
        try:
            head = {"Host": "localhost", "Accept": "application/json", **(headers or {})}
            if body is not None:
                head.setdefault("Content-Type", "application/json")
                head["Content-Length"] = str(len(body))
            lines = [f"{method} {path} HTTP/1.1", *(f"{k}: {v}" for k, v in head.items())]
            writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b""))
            await writer.drain()
            return await read_response(reader)
        finally:
            writer.close()

    async def call(self, method: str, path: str, payload: Any = None) -> Any:
        body = None if payload is None else json.dumps(payload).encode()
        status, _headers, data = await self.request(method, path, body)
        if status >= 300:
            try:
                message = json.loads(data)["fault_message"]
            except (ValueError, KeyError, TypeError):
                message = data.decode(errors="replace")
            raise VmmError(status, message)
        return json.loads(data) if data else None

    async def get(self, path: str) -> Any:
        return await self.call("GET", path)

    async def put(self, path: str, payload: Any) -> None:
        await self.call("PUT", path, payload)

    async def patch(self, path: str, payload: Any) -> None:
        await self.call("PATCH", path, payload)


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """Read one HTTP/1.1 response with a Content-Length (or none: an empty body)."""
    head = await reader.readuntil(b"\r\n\r\n")
    if len(head) > MAX_HEAD:
        raise ValueError("response head too large")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    status = int(status_line.split()[1])
    length = int(headers.get("content-length", "0"))
    body = await reader.readexactly(length) if length else b""
    return status, headers, body
