"""``python -m kiln.vmm --api-sock PATH --id ID``: one microVM monitor (kiln/vmm/monitor.py)."""

from __future__ import annotations

import sys

from kiln.vmm.monitor import main

if __name__ == "__main__":
    sys.exit(main())
