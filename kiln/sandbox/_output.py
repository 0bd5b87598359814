"""The runtime's output pipe, shared by the backends that run real processes."""

from __future__ import annotations

import os
from collections.abc import Callable


def drain(fd: int, deliver: Callable[[bytes], object]) -> bool:
    """Deliver everything already written to the non-blocking ``fd``; True at end of file
    (the caller then stops watching and closes it)."""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return False
        except InterruptedError:
            continue
        except OSError:
            return True
        if not chunk:
            return True
        deliver(chunk)
