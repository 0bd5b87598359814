"""HTTP/1.1 on a listening socket for the monitor's API and the guest's MMDS: small requests,
``Content-Length`` bodies, keep-alive, answered in order.  Malformed input gets a 400 in
Firecracker's error shape and the connection is closed."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

MAX_HEAD = 16 * 1024
#: Firecracker's default ``--http-api-max-payload-size``.
MAX_BODY = 51200
_REASONS = {200: "OK", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 413: "Payload Too Large",
            500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable"}


@dataclass
class HttpRequest:
    method: str
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes


@dataclass
class HttpResponse:
    status: int
    body: bytes
    content_type: str

    def encode(self) -> bytes:
        head = f"HTTP/1.1 {self.status} {_REASONS.get(self.status, 'Unknown')}\r\n"
        if self.status != 204:
            head += f"Content-Type: {self.content_type}\r\nContent-Length: {len(self.body)}\r\n"
        return (head + "\r\n").encode("latin-1") + (self.body if self.status != 204 else b"")


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


class BadRequest(Exception):
    pass


async def serve(listener: socket.socket, handler: Handler) -> asyncio.Server:
    """Serve ``handler`` on an already-bound, listening (Unix or TCP) socket."""

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                try:
                    request = await read_request(reader)
                except BadRequest as exc:
                    fault = json.dumps({"fault_message": str(exc)}).encode()
                    writer.write(HttpResponse(400, fault, "application/json").encode())
                    return
                if request is None:
                    return
                writer.write((await handler(request)).encode())
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        except asyncio.CancelledError:
            # The monitor is shutting down (asyncio.run cancels idle keep-alive connections):
            # end quietly; Python 3.11's stream callback would log a cancelled handler.
            return
        finally:
            writer.close()

    return await asyncio.start_server(connection, sock=listener, limit=MAX_HEAD)


async def read_request(reader: asyncio.StreamReader) -> HttpRequest | None:
    """The next request, or None at a clean end of the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest("Incomplete HTTP request.") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest("The HTTP request head is too large.") from None
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest(f"Invalid HTTP request line: {lines[0][:80]}")
    headers = {}
    for line in lines[1:]:
        if line:
            name, sep, value = line.partition(":")
            if not sep:
                raise BadRequest("Invalid HTTP header.")
            headers[name.strip().lower()] = value.strip()
    if "transfer-encoding" in headers:
        raise BadRequest("Transfer-Encoding is not supported; send a Content-Length.")
    length_text = headers.get("content-length", "0")
    if not length_text.isdigit():
        raise BadRequest("Invalid Content-Length.")
    length = int(length_text)
    if length > MAX_BODY:
        raise BadRequest(f"Request payload with size {length} is larger than the limit of "
                         f"{MAX_BODY} allowed by server.")
    body = await reader.readexactly(length) if length else b""
    path = parts[1].split("?", 1)[0]
    return HttpRequest(parts[0], path, headers, body)
