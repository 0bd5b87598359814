"""The Runtime API of one environment (``kiln.runtime.api.RuntimeApi``), driven with raw HTTP
on a loopback socket: status codes, bodies and headers as the Lambda Runtime API defines them."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from kiln.runtime.api import MAX_RESPONSE_BYTES, PREFIX, RuntimeApi
from kiln.runtime.types import Invocation

RAW = tuple[int, dict[str, str], bytes]


async def request(port: int, method: str, path: str, body: bytes = b"",
                  headers: dict[str, str] | None = None) -> RAW:
    """One HTTP/1.1 request on a fresh connection; (status, lower-case headers, body)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = [f"{method} {path} HTTP/1.1", "Host: runtime", f"Content-Length: {len(body)}"]
        head.extend(f"{k}: {v}" for k, v in (headers or {}).items())
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)
        await writer.drain()
        status_line = (await reader.readline()).decode("latin-1")
        status = int(status_line.split(" ", 2)[1])
        response_headers: dict[str, str] = {}
        while True:
            line = (await reader.readline()).decode("latin-1").rstrip("\r\n")
            if not line:
                break
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
        payload = await reader.readexactly(int(response_headers.get("content-length", "0")))
        return status, response_headers, payload
    finally:
        writer.close()


def run(scenario: Callable[[RuntimeApi, int], Awaitable[None]]) -> None:
    """Serve a fresh RuntimeApi on a loopback listener and run ``scenario(api, port)``."""

    async def main() -> None:
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        listener.setblocking(False)
        api = RuntimeApi("env-test")
        await api.serve(listener)
        try:
            await asyncio.wait_for(scenario(api, listener.getsockname()[1]), 30)
        finally:
            api.close()
            listener.close()

    asyncio.run(main())


def invocation(request_id: str = "req-1", payload: bytes = b'{"a": 1}', **kwargs: Any) \
        -> Invocation:
    return Invocation(request_id=request_id, payload=payload, deadline_ms=1_700_000_000_000,
                      invoked_function_arn="arn:aws:lambda:us-east-1:000000000000:function:f",
                      trace_id="Root=1-00000000-000000000000000000000000;Sampled=0", **kwargs)


async def next_event(api: RuntimeApi, port: int, inv: Invocation) -> RAW:
    pending = asyncio.ensure_future(request(port, "GET", f"{PREFIX}/runtime/invocation/next"))
    await api.ready.wait()
    api.submit(inv)
    return await pending


def assert_json(raw: RAW, status: int, body: dict[str, Any] | None = None) -> dict[str, Any]:
    assert raw[0] == status, raw
    assert raw[1]["content-type"] == "application/json"
    parsed = json.loads(raw[2])
    if body is not None:
        assert parsed == body
    return dict(parsed)


def test_next_blocks_until_an_event_and_carries_every_header() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        pending = asyncio.ensure_future(
            request(port, "GET", f"{PREFIX}/runtime/invocation/next"))
        await api.ready.wait()
        await asyncio.sleep(0.05)
        assert not pending.done()  # long-poll: nothing to hand out yet
        api.submit(invocation(client_context='{"custom":{"k":"v"}}',
                              cognito_identity='{"cognitoIdentityId":"id"}'))
        status, headers, body = await pending
        assert status == 200
        assert body == b'{"a": 1}'
        assert headers["content-type"] == "application/json"
        assert headers["lambda-runtime-aws-request-id"] == "req-1"
        assert headers["lambda-runtime-deadline-ms"] == "1700000000000"
        assert headers["lambda-runtime-invoked-function-arn"].endswith(":function:f")
        assert headers["lambda-runtime-trace-id"].startswith("Root=1-")
        assert headers["lambda-runtime-client-context"] == '{"custom":{"k":"v"}}'
        assert headers["lambda-runtime-cognito-identity"] == '{"cognitoIdentityId":"id"}'

    run(scenario)


def test_next_without_client_context_omits_the_header() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        _, headers, _ = await next_event(api, port, invocation())
        assert "lambda-runtime-client-context" not in headers
        assert "lambda-runtime-cognito-identity" not in headers

    run(scenario)


def test_response_is_202_ok_and_settles_the_invocation() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        inv = invocation()
        await next_event(api, port, inv)
        raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/response",
                            b'"result"', {"Content-Type": "text/plain"})
        assert_json(raw, 202, {"status": "OK"})
        result = await inv.result
        assert result.body == b'"result"'
        assert result.content_type == "text/plain"
        assert result.error_type is None

    run(scenario)


def test_stale_or_unknown_request_id_is_400() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        # Before any invocation.
        raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/nope/response", b"{}")
        assert assert_json(raw, 400)["errorType"] == "InvalidRequestID"
        first = invocation("req-1")
        await next_event(api, port, first)
        await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/response", b"1")
        second = invocation("req-2")
        await next_event(api, port, second)
        # req-1 is over: its id is stale now.
        for kind in ("response", "error"):
            raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/{kind}", b"2")
            body = assert_json(raw, 400)
            assert body == {"errorType": "InvalidRequestID", "errorMessage": "Invalid request ID"}
        assert not second.result.done()

    run(scenario)


def test_second_response_is_403() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        inv = invocation()
        await next_event(api, port, inv)
        path = f"{PREFIX}/runtime/invocation/req-1/response"
        assert (await request(port, "POST", path, b"1"))[0] == 202
        body = assert_json(await request(port, "POST", path, b"2"), 403)
        assert body["errorType"] == "InvalidStateTransition"
        error = f"{PREFIX}/runtime/invocation/req-1/error"
        assert assert_json(await request(port, "POST", error, b"{}"), 403)
        assert (await inv.result).body == b"1"

    run(scenario)


def test_next_before_responding_is_403() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        inv = invocation()
        await next_event(api, port, inv)
        raw = await request(port, "GET", f"{PREFIX}/runtime/invocation/next")
        assert assert_json(raw, 403)["errorType"] == "InvalidStateTransition"
        assert not inv.result.done()

    run(scenario)


def test_response_over_6mb_is_413_and_fails_the_invocation() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        assert MAX_RESPONSE_BYTES == 6 * 1024 * 1024 + 100
        inv = invocation()
        await next_event(api, port, inv)
        raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/response",
                            b"x" * (MAX_RESPONSE_BYTES + 1))
        body = assert_json(raw, 413)
        assert body["errorType"] == "RequestEntityTooLarge"
        assert "6291556" in body["errorMessage"]
        result = await inv.result
        assert result.error_type == "Function.ResponseSizeTooLarge"
        assert json.loads(result.body) == {
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size exceeded maximum allowed payload size "
                            "(6291556 bytes).",
        }

    run(scenario)


def test_response_of_exactly_the_limit_is_accepted() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        inv = invocation()
        await next_event(api, port, inv)
        raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/response",
                            b"x" * MAX_RESPONSE_BYTES)
        assert_json(raw, 202, {"status": "OK"})
        assert len((await inv.result).body) == MAX_RESPONSE_BYTES

    run(scenario)


def test_error_without_type_header_is_unhandled() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        inv = invocation()
        await next_event(api, port, inv)
        error = {"errorMessage": "boom", "errorType": "ValueError", "requestId": "req-1",
                 "stackTrace": []}
        # What awslambdaric sends: no Lambda-Runtime-Function-Error-Type header.
        raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-1/error",
                            json.dumps(error).encode(),
                            {"Content-Type": "application/json",
                             "Lambda-Runtime-Function-XRay-Error-Cause": "{}"})
        assert_json(raw, 202, {"status": "OK"})
        result = await inv.result
        assert result.error_type == "Unhandled"
        assert json.loads(result.body) == error

    run(scenario)


def test_error_type_header_is_kept_or_normalised() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        cases = [("Function.MyError", "Function.MyError"), ("Runtime.NoSuchHandler",
                                                            "Runtime.NoSuchHandler"),
                 ("Function.bad type", "Function.Unknown"), ("weird", "Runtime.Unknown")]
        for number, (header, expected) in enumerate(cases):
            inv = invocation(f"req-{number}")
            await next_event(api, port, inv)
            raw = await request(port, "POST", f"{PREFIX}/runtime/invocation/req-{number}/error",
                                b"", {"Lambda-Runtime-Function-Error-Type": header})
            assert raw[0] == 202
            result = await inv.result
            assert result.error_type == expected
            # No body: the error is built from the header.
            assert json.loads(result.body)["errorType"] == expected

    run(scenario)


def test_init_error_is_cached_and_only_accepted_once() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        body = {"errorMessage": "Unable to import module 'x'", "errorType":
                "Runtime.ImportModuleError", "requestId": "", "stackTrace": []}
        raw = await request(port, "POST", f"{PREFIX}/runtime/init/error",
                            json.dumps(body).encode(),
                            {"Lambda-Runtime-Function-Error-Type": "Runtime.ImportModuleError"})
        assert_json(raw, 202, {"status": "OK"})
        assert api.init_error_posted.is_set()
        assert api.init_error is not None
        assert api.init_error.error_type == "Runtime.ImportModuleError"
        assert json.loads(api.init_error.body) == body
        raw = await request(port, "POST", f"{PREFIX}/runtime/init/error", b"{}")
        assert assert_json(raw, 403)["errorType"] == "InvalidStateTransition"
        assert api.init_error.error_type == "Runtime.ImportModuleError"

    run(scenario)


def test_init_error_after_init_is_403() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        await next_event(api, port, invocation())
        raw = await request(port, "POST", f"{PREFIX}/runtime/init/error", b"{}",
                            {"Lambda-Runtime-Function-Error-Type": "Runtime.Unknown"})
        assert assert_json(raw, 403)["errorType"] == "InvalidStateTransition"
        assert api.init_error is None

    run(scenario)


def test_every_response_has_a_content_type() -> None:
    async def scenario(api: RuntimeApi, port: int) -> None:
        raws = [
            await request(port, "GET", "/2018-06-01/ping"),
            await request(port, "GET", "/nowhere"),
            await request(port, "PUT", "/2020-08-15/logs", b"{}"),
            await request(port, "PUT", "/2022-07-01/telemetry", b"{}"),
            await request(port, "POST", f"{PREFIX}/runtime/invocation/x/response", b"{}"),
            await request(port, "POST", f"{PREFIX}/runtime/invocation/next", b""),
        ]
        statuses = [raw[0] for raw in raws]
        assert statuses == [200, 404, 202, 202, 400, 404]
        assert all(raw[1].get("content-type") for raw in raws)
        assert json.loads(raws[2][2])["errorType"] == "Logs.NotSupported"
        assert json.loads(raws[3][2])["errorType"] == "Telemetry.NotSupported"

    run(scenario)


def test_keep_alive_connection_serves_a_whole_invoke_cycle() -> None:
    """awslambdaric and Kiln's bootstrap reuse one connection for /next and /response."""

    async def scenario(api: RuntimeApi, port: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            for number in range(3):
                writer.write(f"GET {PREFIX}/runtime/invocation/next HTTP/1.1\r\nHost: r\r\n\r\n"
                             .encode())
                await writer.drain()
                await api.ready.wait()
                inv = invocation(f"req-{number}")
                api.submit(inv)
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                assert head.startswith("HTTP/1.1 200")
                assert f"Lambda-Runtime-Aws-Request-Id: req-{number}" in head
                length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
                await reader.readexactly(length)
                body = f"{number}".encode()
                writer.write(f"POST {PREFIX}/runtime/invocation/req-{number}/response "
                             f"HTTP/1.1\r\nHost: r\r\nContent-Length: {len(body)}\r\n\r\n"
                             .encode() + body)
                await writer.drain()
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
                assert head.startswith("HTTP/1.1 202")
                length = int(head.lower().split("content-length:")[1].split("\r\n")[0])
                assert await reader.readexactly(length) == b'{"status": "OK"}'
                assert (await inv.result).body == body
        finally:
            writer.close()

    run(scenario)
