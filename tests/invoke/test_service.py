"""The data plane over the in-memory FakeBackend: lifecycle, timeouts, crashes, leases, logs."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from kiln.aws.errors import AwsError
from kiln.config import Settings
from kiln.invoke.service import InvokeRequest
from kiln.sandbox.fake import FakeBackend, FakeRuntime
from kiln.server import Kiln
from tests.conftest import ROLE, make_zip

Program = Callable[[FakeRuntime], Coroutine[Any, Any, int]]


async def echo(runtime: FakeRuntime) -> int:
    while True:
        event = await runtime.next()
        runtime.print(f"echo {event.payload.decode()}")
        await runtime.respond(event.request_id, event.payload)


async def fails(runtime: FakeRuntime) -> int:
    while True:
        event = await runtime.next()
        await runtime.fail(event.request_id, b'{"errorType":"ValueError","errorMessage":"no"}')


async def hangs(runtime: FakeRuntime) -> int:
    await runtime.next()
    await asyncio.sleep(3600)
    return 0


async def exits(runtime: FakeRuntime) -> int:
    await runtime.next()
    return 7


async def init_fails(runtime: FakeRuntime) -> int:
    await runtime.init_error("Runtime.ImportModuleError",
                             b'{"errorType":"Runtime.ImportModuleError","errorMessage":"x"}')
    return 1


async def slow(runtime: FakeRuntime) -> int:
    while True:
        event = await runtime.next()
        await asyncio.sleep(0.2)
        await runtime.respond(event.request_id, b"{}")


PROGRAMS: dict[str, Program] = {
    "echo.h": echo, "fails.h": fails, "hangs.h": hangs, "exits.h": exits,
    "init_fails.h": init_fails, "slow.h": slow,
}


@pytest.fixture
async def kiln(tmp_path: Path) -> AsyncIterator[Kiln]:
    settings = Settings.from_env(environ={}, data_dir=tmp_path, account_concurrency=3)
    app = Kiln(settings, backend=FakeBackend(PROGRAMS))
    await app.start()
    yield app
    await app.stop()


def create(kiln: Kiln, handler: str, timeout: int = 3) -> str:
    name = handler.split(".")[0].replace("_", "-")
    kiln.functions.create({
        "FunctionName": name, "Runtime": "provided.al2023", "Role": ROLE, "Handler": handler,
        "Timeout": timeout,
        "Code": {"ZipFile": base64.b64encode(make_zip({"bootstrap": "#!/bin/sh\n"})).decode()},
    })
    return name


async def invoke(kiln: Kiln, name: str, payload: bytes = b'{"a": 1}', **kwargs: Any) -> Any:
    record = kiln.functions.get(name)
    request = InvokeRequest(payload=payload, invoked_arn=record.arn, **kwargs)
    return await kiln.invoker.invoke(record, request)


async def test_warm_environment_is_reused(kiln: Kiln) -> None:
    name = create(kiln, "echo.h")
    first = await invoke(kiln, name, tail=True)
    second = await invoke(kiln, name, tail=True)
    assert first.result.body == b'{"a": 1}' and first.result.error_type is None
    assert len(kiln.assignment.environments) == 1
    assert isinstance(kiln.backend, FakeBackend) and kiln.backend.created == 1
    cold = base64.b64decode(first.log_tail).decode()
    warm = base64.b64decode(second.log_tail).decode()
    assert "Init Duration" in cold and "Init Duration" not in warm
    assert f"START RequestId: {second.request_id} Version: $LATEST" in warm
    assert 'echo {"a": 1}' in warm


async def test_function_error_is_unhandled(kiln: Kiln) -> None:
    outcome = await invoke(kiln, create(kiln, "fails.h"))
    assert outcome.result.error_type == "Unhandled"
    assert json.loads(outcome.result.body)["errorType"] == "ValueError"


async def test_timeout_kills_the_environment(kiln: Kiln) -> None:
    outcome = await invoke(kiln, create(kiln, "hangs.h", timeout=1))
    assert outcome.status == "timeout"
    error = json.loads(outcome.result.body)
    assert error["errorType"] == "Sandbox.Timedout"
    assert error["errorMessage"] == (
        f"RequestId: {outcome.request_id} Error: Task timed out after 1.00 seconds")
    assert kiln.assignment.environments == []
    await asyncio.sleep(0)  # logs are written just after the caller is answered
    text, _ = kiln.logs.read("hangs")
    assert "Status: timeout" in text


async def test_crash_answers_exit_error(kiln: Kiln) -> None:
    outcome = await invoke(kiln, create(kiln, "exits.h"))
    error = json.loads(outcome.result.body)
    assert error["errorType"] == "Runtime.ExitError"
    assert error["errorMessage"].endswith("Runtime exited with error: exit status 7")
    assert kiln.counting.in_use == 0


async def test_init_error_is_served_to_the_first_invoke(kiln: Kiln) -> None:
    outcome = await invoke(kiln, create(kiln, "init_fails.h"))
    assert outcome.result.error_type == "Runtime.ImportModuleError"
    assert json.loads(outcome.result.body)["errorMessage"] == "x"


async def test_concurrent_invokes_get_their_own_environments(kiln: Kiln) -> None:
    name = create(kiln, "slow.h")
    outcomes = await asyncio.gather(*(invoke(kiln, name) for _ in range(3)))
    assert all(o.status == "ok" for o in outcomes)
    assert len(kiln.assignment.environments) == 3


async def test_account_limit_throttles_before_running(kiln: Kiln) -> None:
    name = create(kiln, "slow.h")
    results = await asyncio.gather(*(invoke(kiln, name) for _ in range(5)),
                                   return_exceptions=True)
    throttled = [r for r in results if isinstance(r, AwsError)]
    assert len(throttled) == 2
    assert {e.fields["Reason"] for e in throttled} == {"ConcurrentInvocationLimitExceeded"}
    assert kiln.counting.in_use == 0


async def test_same_invocation_id_runs_once(kiln: Kiln) -> None:
    name = create(kiln, "slow.h")
    first, second = await asyncio.gather(invoke(kiln, name, dedupe_key="k1"),
                                         invoke(kiln, name, dedupe_key="k1"))
    assert first.request_id == second.request_id
    await asyncio.sleep(0)  # logs are written just after the caller is answered
    text, _ = kiln.logs.read(name)
    assert text.count("START RequestId") == 1


async def test_update_retires_environments(kiln: Kiln) -> None:
    name = create(kiln, "echo.h")
    await invoke(kiln, name)
    await kiln.functions.update_configuration(name, {"Timeout": 5})
    assert kiln.assignment.environments == []
    await invoke(kiln, name)
    assert isinstance(kiln.backend, FakeBackend) and kiln.backend.created == 2


async def test_idle_environment_is_frozen_and_thawed(kiln: Kiln) -> None:
    name = create(kiln, "echo.h")
    await invoke(kiln, name)
    assert isinstance(kiln.backend, FakeBackend)
    sandbox = next(iter(kiln.backend.live.values()))
    await asyncio.sleep(kiln.settings.freeze_after_seconds * 4)
    assert sandbox.frozen
    await invoke(kiln, name)
    assert not sandbox.frozen
