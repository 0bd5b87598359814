"""The ``sandbox_egress`` setting over the FakeBackend: which environments are made with the
host's network (the tag itself is exercised end to end in tests/e2e/test_egress.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kiln.config import Settings
from kiln.functions.tags import EGRESS_TAG
from kiln.sandbox.fake import FakeBackend
from kiln.server import Kiln
from tests.invoke.test_service import PROGRAMS, create, invoke


@pytest.mark.parametrize(("mode", "untagged", "tagged"),
                         [("tagged", False, True), ("all", True, True), ("none", False, False)])
async def test_sandbox_egress_setting(tmp_path: Path, mode: str, untagged: bool,
                                      tagged: bool) -> None:
    settings = Settings.from_env(environ={"KILN_SANDBOX_EGRESS": mode}, data_dir=tmp_path)
    backend = FakeBackend(PROGRAMS)
    kiln = Kiln(settings, backend=backend)
    await kiln.start()
    try:
        name = create(kiln, "echo.h")
        await invoke(kiln, name)
        assert [s.spec.egress for s in backend.live.values()] == [untagged]
        kiln.functions.tags.add(name, {EGRESS_TAG: "allow"})
        await kiln.assignment.retire(name)
        await invoke(kiln, name)
        assert [s.spec.egress for s in backend.live.values()] == [tagged]
    finally:
        await kiln.stop()


def test_unknown_sandbox_egress_is_refused(tmp_path: Path) -> None:
    settings = Settings.from_env(environ={}, data_dir=tmp_path, sandbox_egress="some")
    with pytest.raises(ValueError, match="sandbox_egress must be one of tagged, all, none"):
        Kiln(settings, backend=FakeBackend(PROGRAMS))
