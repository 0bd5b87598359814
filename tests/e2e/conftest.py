"""Fixtures shared by the end-to-end suites."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, KilnServer, start_server

#: Where the microVM guest image is built once and kept between runs.
CACHE = Path(os.environ.get("KILN_MICROVM_TEST_CACHE",
                            Path.home() / ".cache" / "kiln" / "microvm-test"))


@pytest.fixture(scope="session")
def microvm_images() -> Path:
    """The guest image, built (or found up to date) once per test session."""
    subprocess.run([str(REPO / "scripts" / "ensure-qemu")], check=True)
    subprocess.run([sys.executable, "-m", "kiln.cli", "microvm", "build-image",
                    "--data-dir", str(CACHE)], check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return CACHE / "microvm" / "images"


def start_with_images(data_dir: Path, images: Path, **env: str) -> KilnServer:
    """A server whose data directory holds the session's guest image (linked, not copied)."""
    (data_dir / "microvm").mkdir(parents=True, exist_ok=True)
    link = data_dir / "microvm" / "images"
    if not link.exists():
        link.symlink_to(images)
    return start_server(data_dir, **env)
