"""The runtime's output pipe, shared by the backends that run real processes and by the
microVM's guest agent (stdlib only: the guest image carries a copy)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable


def spawn(argv: list[str], env: dict[str, str], cwd: str) -> tuple[subprocess.Popen[bytes], int]:
    """Start ``argv`` in a new session, its stdout and stderr into one pipe: the process and
    the pipe's non-blocking read end."""
    read_fd, write_fd = os.pipe()
    try:
        process = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                   stdout=write_fd, stderr=write_fd, start_new_session=True,
                                   close_fds=True)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    os.set_blocking(read_fd, False)
    return process, read_fd


def drain(fd: int, deliver: Callable[[bytes], object]) -> bool:
    """Deliver everything already written to the non-blocking ``fd`` (a pipe, or a stream
    socket); True at end of file or on an error (the caller then stops watching it)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except OSError:
            return True
        if not chunk:
            return True
        deliver(chunk)
