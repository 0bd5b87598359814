"""The microVM monitor alone (kiln/vmm), with the VMM tests' small guest, in one run:

- monitor start to a live API socket (Firecracker publishes ~12 ms wall, 8 CPU-ms);
- cold boot: InstanceStart to the guest program's first answer over vsock;
- restore: a new monitor's snapshot/load to the first answer from the memory file (copied in)
  and from a shared memory image (mapped, as Kiln restores), and the former counting the
  monitor's start, beside the cold boot of the same run and Firecracker's published 125 ms boot;
- memory of one idle restored VM (monitor + QEMU: PSS, the guest RAM memfd by its contents).

    python bench/vmm.py [--boots 3] [--restores 5]

States the engine and accelerator (QEMU TCG on hosts without hardware KVM).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.microvm import tree_kb
from kiln.vmm.qemu import MemoryImageServer, seal_memory_image
from tests.vmm.conftest import (
    SPEC_PATH,
    Guest,
    Monitor,
    Snapshot,
    Spec,
    ask,
    guest_config,
    restore,
    start,
    wait_guest,
)
from tests.vmm.test_vm import _children

FIRECRACKER_BOOT_S = 0.125
FIRECRACKER_API_READY_S = 0.012


def _summary(name: str, values: list[float], baseline: float | None = None,
             baseline_name: str = "") -> None:
    ratio = f"  ({statistics.median(values) / baseline:.2f}x {baseline_name})" if baseline else ""
    print(f"{name:<42} median {statistics.median(values) * 1000:8.1f} ms   "
          f"min {min(values) * 1000:8.1f}   max {max(values) * 1000:8.1f}{ratio}")


async def _timed_start(base: Path, vm_id: str, spec: Spec) -> tuple[Monitor, float]:
    began = time.monotonic()
    m = start(base, vm_id, spec)
    while True:  # the socket file exists: now wait for the first answer
        try:
            await m.client.request("GET", "/")
            return m, time.monotonic() - began
        except OSError:
            await asyncio.sleep(0.001)


async def main(boots: int, restores: int) -> None:
    spec = Spec(SPEC_PATH)
    out = subprocess.run(["scripts/vmm-test-guest"], check=True, capture_output=True,
                         text=True).stdout.strip().splitlines()[-1]
    guest = Guest(f"{out}/vmlinuz", f"{out}/initrd.gz", f"{out}/rootfs.ext4")
    base = Path(tempfile.mkdtemp(prefix="kiln-bench-vmm-"))
    starts, cold, loads, restored, memory = [], [], [], [], []
    snap = Snapshot(str(base / "snap.json"), str(base / "snap.mem"), 0)
    for i in range(boots):
        m, ready = await _timed_start(base, f"boot{i}", spec)
        starts.append(ready)
        info = await m.client.get("/")
        uds = str(base / f"boot{i}.vsock")
        for path, body in guest_config(guest, uds):
            await m.client.put(path, body)
        began = time.monotonic()
        await m.client.put("/actions", {"action_type": "InstanceStart"})
        await wait_guest(uds, timeout=300)
        cold.append(time.monotonic() - began)
        if i == 0:
            await m.client.patch("/vm", {"state": "Paused"})
            await m.client.put("/snapshot/create",
                               {"snapshot_path": snap.state, "mem_file_path": snap.mem})
        m.stop()
    # The memory image served as a sealed memfd (what Kiln does): mapped, not copied.
    server = MemoryImageServer(seal_memory_image(snap.mem), str(base / "mem.sock"),
                               asyncio.get_running_loop())
    shared = Snapshot(snap.state, str(base / "mem.sock"), 0)
    mapped: list[float] = []
    for i in range(restores * 2):
        began = time.monotonic()
        m, ready = await _timed_start(base, f"restore{i}", spec)
        starts.append(ready)
        uds = str(base / f"restore{i}.vsock")
        loading = time.monotonic()
        await restore(m, shared if i % 2 else snap, uds)
        assert await ask(uds, "echo ready") == "ready"
        now = time.monotonic()
        (mapped if i % 2 else loads).append(now - loading)
        if not i % 2:
            restored.append(now - began)
            pids = [m.process.pid, *_children(m.process.pid)]
            memory.append(tree_kb(pids) / 1024)
        m.stop()
    server.close()
    kiln = info["kiln"]
    mem, state = Path(snap.mem).stat(), Path(snap.state).stat()
    print(f"engine {kiln['engine']}, accelerator {kiln['accelerator']}; guest: Debian cloud "
          f"kernel, 192 MiB, 1 vCPU; snapshot: memory {mem.st_blocks * 512 >> 20} MiB stored of "
          f"{mem.st_size >> 20} MiB (zero pages are holes), device state {state.st_size >> 10} KiB")
    _summary("monitor start -> API answers", starts, FIRECRACKER_API_READY_S,
             "Firecracker's ~12 ms")
    _summary("cold boot: InstanceStart -> first answer", cold, FIRECRACKER_BOOT_S,
             "Firecracker's 125 ms")
    _summary("restore: snapshot/load -> first answer", loads, statistics.median(cold),
             "this run's cold boot")
    _summary("  the same, memory image shared (mapped)", mapped, statistics.median(cold),
             "this run's cold boot")
    _summary("restore incl. monitor start", restored, FIRECRACKER_BOOT_S, "Firecracker's 125 ms")
    print(f"{'idle restored VM memory (monitor + QEMU)':<42} "
          f"median {statistics.median(memory):8.1f} "
          f"MiB   min {min(memory):8.1f}   max {max(memory):8.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--boots", type=int, default=3)
    parser.add_argument("--restores", type=int, default=5)
    options = parser.parse_args()
    asyncio.run(main(options.boots, options.restores))
