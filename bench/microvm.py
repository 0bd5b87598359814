"""microVM environments against the ``process`` backend, measured in the same run, and against
Firecracker's published 125 ms (InstanceStart to guest init).

    python bench/microvm.py [--cold 3] [--restores 5]

For each backend, through a started ``kiln serve`` and its Invoke API:
- cold: the first invoke of a new function (microvm: boot, INIT, snapshot) to its response;
- new environment: an invoke after the idle environment was reaped (microvm: restored from the
  function's snapshot) to its response;
- memory (PSS) of one idle environment (microvm: the monitor and its QEMU; process: the
  runtime).

Target on hosts without hardware KVM (QEMU in TCG): restore <= 0.25 s to first response.
Needs a built guest image: ``kiln microvm build-image --data-dir DIR`` (pass ``--images``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._http import Connection
from bench.invoke import cold_starts, create_function
from kiln.vmm.client import VmmClient
from kiln.vmm.guest.image import images_dir
from tests.conftest import KilnServer, start_server

FIRECRACKER_BOOT_MS = 125.0
KEEP_ALIVE = 1.0


def rss_kb(pid: int) -> int:
    """Proportional set size: memory shared between processes (a forked monitor, libraries)
    counts once in total."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


#: A booted microVM's RAM (a memfd the monitor holds, partly mapped by QEMU) and a snapshot's
#: sealed memory image (held by Kiln, mapped copy-on-write by every VM restored from it).
VM_RAM, MEMORY_IMAGE = "/memfd:kiln-vm-ram", "/memfd:kiln-memory-image"


def memfds_kb(pids: list[int], name: str) -> list[int]:
    """What each memfd called ``name`` that ``pids`` hold takes."""
    files = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    if os.readlink(f"/proc/{pid}/fd/{fd}").startswith(name):
                        info = os.stat(f"/proc/{pid}/fd/{fd}")
                        files[info.st_ino] = info.st_blocks // 2
    return list(files.values())


def tree_kb(pids: list[int]) -> int:
    """Memory of a microVM's process tree: PSS (a restored VM's share of its snapshot's
    memory image included), with a booted VM's RAM memfd counted by all it holds, not only
    by what is mapped."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            mapping = ""
            for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
                if not line[:1].isupper():  # a mapping's header: "start-end perms ... path"
                    mapping = line.split(maxsplit=5)[-1] if len(line.split()) > 5 else ""
                elif line.startswith("Pss:") and not mapping.startswith(VM_RAM):
                    total += int(line.split()[1])
    return total + sum(memfds_kb(pids, VM_RAM))


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


async def invoke(port: int, name: str) -> float:
    conn = await Connection.open(port)
    started = time.perf_counter()
    status, body = await conn.post(f"/2015-03-31/functions/{name}/invocations", b"{}")
    elapsed = (time.perf_counter() - started) * 1000
    conn.close()
    assert status == 200 and b"errorType" not in body, body
    return elapsed


def environment_kb(server: KilnServer) -> int:
    """Memory of the one live environment: for microvm the largest monitor process tree (the
    spare monitor, started ahead for the next restore, runs no VM), else the server's children."""
    vms = server.data_dir / "sandboxes" / "microvm" / "vms"
    if not vms.exists():
        return sum(rss_kb(p) for p in descendants(server.process.pid))
    trees = []
    for state in vms.glob("*/monitor.json"):
        pid = int(json.loads(state.read_text())["pid"])
        trees.append(tree_kb([pid, *descendants(pid)]))
    return max(trees, default=0)


async def new_environments(server: KilnServer, count: int) -> tuple[list[float], int]:
    """Invokes that each meet a new environment (every earlier one reaped while idle), and the
    largest memory (kB) of the one idle environment after such an invoke."""
    name = f"fresh-{os.getpid()}"
    await create_function(server.port, name)
    await invoke(server.port, name)  # the cold one: boots and (microvm) snapshots
    samples, memory = [], 0
    for _ in range(count):
        await asyncio.sleep(KEEP_ALIVE * 2.5)  # the reaper destroys the idle environments
        samples.append(await invoke(server.port, name))
        memory = max(memory, environment_kb(server))
    return samples, memory


async def engine(data_dir: Path) -> str:
    for vm_dir in (data_dir / "sandboxes" / "microvm" / "vms").iterdir():
        info = await VmmClient(str(vm_dir / "api.sock")).get("/")
        kiln = info.get("kiln", {})
        jailed = json.loads((vm_dir / "monitor.json").read_text()).get("jailed")
        return (f"{kiln.get('engine', '?')} ({kiln.get('accelerator', '?')}), monitor "
                f"{'jailed' if jailed else 'not jailed'}")
    return "?"


def stats(samples: list[float]) -> str:
    return (f"median {statistics.median(samples):8.1f} ms  min {min(samples):8.1f}  "
            f"max {max(samples):8.1f}  (n={len(samples)})")


@dataclass
class Result:
    cold: list[float]
    fresh: list[float]
    memory_kb: int
    images_kb: list[int]
    engine: str


async def measure(backend: str, images: Path, cold: int, restores: int, work: Path) -> Result:
    work.mkdir(parents=True, exist_ok=True)
    data_dir = Path(tempfile.mkdtemp(prefix=f"bench-{backend}-", dir=work)) / "data"
    (data_dir / "microvm").mkdir(parents=True)
    (data_dir / "microvm" / "images").symlink_to(images)
    server = start_server(data_dir, KILN_SANDBOX_BACKEND=backend,
                          KILN_KEEP_ALIVE_SECONDS=str(KEEP_ALIVE))
    try:
        cold_samples = await cold_starts(server.port, cold)
        fresh, memory = await new_environments(server, restores)
        images = memfds_kb([server.process.pid], MEMORY_IMAGE)
        name = await engine(data_dir) if backend == "microvm" else "host processes"
    finally:
        server.stop()
        shutil.rmtree(data_dir.parent, ignore_errors=True)
    return Result(cold_samples, fresh, memory, images, name)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cold", type=int, default=3)
    parser.add_argument("--restores", type=int, default=5)
    parser.add_argument("--images", type=Path,
                        default=images_dir(Path.home() / ".cache" / "kiln" / "microvm-test"))
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "kiln" / "bench",
                        help="where the servers' data directories go (outside /tmp, so the "
                             "monitors run jailed as in production)")
    args = parser.parse_args()
    vm = await measure("microvm", args.images, args.cold, args.restores, args.work)
    process = await measure("process", args.images, args.cold, args.restores, args.work)
    print(f"microvm engine: {vm.engine}; baseline: the process backend, same run")
    for label, vm_samples, base in (
            ("cold: boot+INIT to first response", vm.cold, process.cold),
            ("new environment (microvm: snapshot restore) to first response", vm.fresh,
             process.fresh)):
        print(f"{label}")
        print(f"  microvm  {stats(vm_samples)}")
        print(f"  process  {stats(base)}")
        ratio = statistics.median(vm_samples) / statistics.median(base)
        firecracker = statistics.median(vm_samples) / FIRECRACKER_BOOT_MS
        print(f"  microvm/process {ratio:6.1f}x   microvm/Firecracker's 125 ms {firecracker:6.2f}x")
    restore = statistics.median(vm.fresh)
    print(f"restore target <= 250 ms: {'met' if restore <= 250 else 'NOT met'} "
          f"({restore:.0f} ms median)")
    print(f"memory of one idle environment: microvm {vm.memory_kb // 1024} MB (monitor + QEMU), "
          f"process {process.memory_kb // 1024} MB (runtime); Firecracker publishes <= 5 MB "
          "of VMM overhead")
    print(f"plus each snapshot's memory image, held once by Kiln and shared copy-on-write by "
          f"every environment restored from it: "
          f"{', '.join(f'{kb // 1024} MB' for kb in vm.images_kb) or 'none'}")
    print(json.dumps({"microvm": asdict(vm), "process": asdict(process)}))


if __name__ == "__main__":
    asyncio.run(main())
