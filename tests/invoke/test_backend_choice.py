"""Which sandbox backend a function's environments run on (the ``kiln:sandbox`` tag, else the
``sandbox_backend`` setting), over FakeBackends standing in for ``process`` and ``microvm``, and
through the real tagging routes (tests/e2e/test_backend_choice.py boots real microVMs)."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kiln.aws.errors import AwsError
from kiln.config import Settings
from kiln.sandbox.fake import FakeBackend
from kiln.server import Kiln, create_app
from tests.conftest import ROLE, make_zip
from tests.invoke.test_service import PROGRAMS, create, invoke

MICROVM = {"kiln:sandbox": "microvm"}


class Node:
    """A Kiln over fakes, and an HTTP client for its routes (the lifespan is ours)."""

    def __init__(self, kiln: Kiln) -> None:
        self.kiln = kiln
        self.http = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(kiln)),
                                      base_url="http://kiln")

    @property
    def process(self) -> FakeBackend:
        assert isinstance(self.kiln.backend, FakeBackend)
        return self.kiln.backend

    def backend(self, name: str) -> FakeBackend:
        backend = self.kiln.backends.get(name)
        assert isinstance(backend, FakeBackend)
        return backend

    async def tag(self, name: str, tags: dict[str, str]) -> httpx.Response:
        return await self.http.post(f"/2017-03-31/tags/{self.kiln.arns.function(name)}",
                                    json={"Tags": tags})

    async def untag(self, name: str, *keys: str) -> httpx.Response:
        return await self.http.delete(f"/2017-03-31/tags/{self.kiln.arns.function(name)}",
                                      params={"tagKeys": list(keys)})


async def started(tmp_path: Path, **others: FakeBackend) -> AsyncIterator[Node]:
    settings = Settings.from_env(environ={}, data_dir=tmp_path)
    kiln = Kiln(settings, backend=FakeBackend(PROGRAMS), others=others)
    await kiln.start()
    node = Node(kiln)
    try:
        yield node
    finally:
        await node.http.aclose()
        await kiln.stop()


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async for node in started(tmp_path, microvm=FakeBackend(PROGRAMS)):
        yield node


@pytest.fixture
async def bare(tmp_path: Path) -> AsyncIterator[Node]:
    """The real lazy ``microvm`` backend, on a data directory without a guest image."""
    async for node in started(tmp_path):
        yield node


def assert_aws_error(response: httpx.Response, code: str, status: int, message: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["x-amzn-errortype"] == code
    assert response.json()["message"] == message


async def test_the_tag_chooses_the_backend(node: Node) -> None:
    plain = create(node.kiln, "echo.h")
    node.kiln.functions.create({
        "FunctionName": "in-a-vm", "Runtime": "provided.al2023", "Role": ROLE,
        "Handler": "echo.h", "Tags": MICROVM,
        "Code": {"ZipFile": base64.b64encode(make_zip({"bootstrap": "#!/bin/sh\n"})).decode()},
    })
    assert (await invoke(node.kiln, plain)).result.body == b'{"a": 1}'
    assert (await invoke(node.kiln, "in-a-vm")).result.body == b'{"a": 1}'
    assert node.process.created == 1 and node.backend("microvm").created == 1
    assert [s.spec.env["AWS_LAMBDA_FUNCTION_NAME"]
            for s in node.backend("microvm").live.values()] == ["in-a-vm"]
    await invoke(node.kiln, "in-a-vm")  # warm, on its own backend
    assert node.backend("microvm").created == 1


async def test_changing_the_tag_retires_the_environments(node: Node) -> None:
    name = create(node.kiln, "echo.h")
    await invoke(node.kiln, name)
    (first,) = node.process.live.values()
    assert (await node.tag(name, {"team": "a"})).status_code == 204  # placement unchanged
    await invoke(node.kiln, name)
    assert node.process.created == 1 and not first.destroyed
    assert (await node.tag(name, MICROVM)).status_code == 204
    assert first.destroyed and not node.process.live
    await invoke(node.kiln, name)
    assert node.backend("microvm").created == 1 and len(node.kiln.assignment.environments) == 1
    (in_vm,) = node.backend("microvm").live.values()
    assert (await node.tag(name, {"kiln:sandbox": "process"})).status_code == 204
    assert in_vm.destroyed
    await invoke(node.kiln, name)
    assert node.process.created == 2
    assert (await node.tag(name, MICROVM)).status_code == 204
    await invoke(node.kiln, name)
    assert (await node.untag(name, "kiln:sandbox")).status_code == 204  # back to the default
    assert not node.backend("microvm").live
    await invoke(node.kiln, name)
    assert node.process.created == 3 and node.backend("microvm").created == 2


async def test_provisioned_environments_move_with_the_tag(node: Node) -> None:
    name = create(node.kiln, "echo.h")
    record = await node.kiln.functions.publish(name, {})
    node.kiln.assignment.provision(record, 2)

    async def ready() -> None:
        while node.kiln.assignment.provisioned_state(name, record.version) != (2, None):
            await asyncio.sleep(0.01)

    await asyncio.wait_for(ready(), 10)
    assert len(node.process.live) == 2
    assert (await node.tag(name, MICROVM)).status_code == 204
    await asyncio.wait_for(ready(), 10)
    assert not node.process.live and len(node.backend("microvm").live) == 2
    env, failure = await node.kiln.assignment.acquire(record, "r")  # a provisioned one
    assert failure is None and env.sandbox in node.backend("microvm").live.values()
    await node.kiln.assignment.release(env)
    assert node.backend("microvm").created == 2


@pytest.mark.parametrize("value", ["unisolated", "MicroVM", "", "firecracker"])
async def test_an_unknown_choice_is_refused(node: Node, value: str) -> None:
    message = (f"Invalid tag value {value} for key kiln:sandbox: the value must be one of "
               "process, microvm.")
    name = create(node.kiln, "echo.h")
    assert_aws_error(await node.tag(name, {"team": "a", "kiln:sandbox": value}),
                     "InvalidParameterValueException", 400, message)
    assert node.kiln.functions.tags.get(name) == {}  # nothing of the request was kept
    zipped = base64.b64encode(make_zip({"bootstrap": "#!/bin/sh\n"})).decode()
    response = await node.http.post("/2015-03-31/functions", json={
        "FunctionName": "refused", "Runtime": "provided.al2023", "Role": ROLE,
        "Handler": "echo.h", "Code": {"ZipFile": zipped}, "Tags": {"kiln:sandbox": value}})
    assert_aws_error(response, "InvalidParameterValueException", 400, message)
    assert (await node.http.get("/2015-03-31/functions/refused")).status_code == 404


async def test_microvm_without_a_guest_image_fails_only_its_invokes(bare: Node,
                                                                     tmp_path: Path) -> None:
    plain = create(bare.kiln, "echo.h")
    vm = create(bare.kiln, "fails.h")
    assert (await bare.tag(vm, MICROVM)).status_code == 204  # valid: the host is asked later
    images = tmp_path / "microvm" / "images"
    message = (f"Kiln could not make an execution environment for {vm}: the microvm sandbox "
               f"backend is not available on this host: no microVM guest image in {images}: "
               "run 'kiln microvm build-image' first")
    for _ in range(2):  # not made, and asked again each time (the image may be built since)
        with pytest.raises(AwsError) as raised:
            await invoke(bare.kiln, vm)
        assert (raised.value.code, raised.value.status, raised.value.message) == (
            "ResourceNotReadyException", 502, message)
    response = await bare.http.post(f"/2015-03-31/functions/{vm}/invocations", content=b"{}")
    assert_aws_error(response, "ResourceNotReadyException", 502, message)
    assert bare.kiln.assignment.environments == []
    assert (await invoke(bare.kiln, plain)).result.body == b'{"a": 1}'  # the default works

    record = await bare.kiln.functions.publish(vm, {})  # provisioning says why, as INIT would
    bare.kiln.assignment.provision(record, 1)
    for _ in range(500):
        failure = bare.kiln.assignment.provisioned_state(vm, record.version)[1]
        if failure is not None:
            break
        await asyncio.sleep(0.01)
    assert failure is not None and failure.startswith(
        "FUNCTION_ERROR_INIT_FAILURE: BackendUnavailable: the microvm sandbox backend is not "
        "available on this host: no microVM guest image")
    body: Any = json.loads((await bare.http.get(f"/2017-03-31/tags/"
                                                f"{bare.kiln.arns.function(vm)}")).text)
    assert body == {"Tags": MICROVM}
