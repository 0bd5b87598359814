"""Start-time and idle-overhead benchmark of the isolated backend (not collected by pytest).

    python tests/sandbox/bench_isolated_start.py [N]

For each interpreter: the median time from "decide to start" to the runtime's first output byte,
for a plain ``Popen`` (no isolation), the ``process`` backend and the ``isolated`` backend
(create + start), as a ratio to ``<interpreter> -c pass`` run to completion; then the idle
environment's overhead: the init's unique memory (USS) and PSS, and the cgroup's charge beyond
the runtime's own RSS.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from kiln.sandbox.isolated import IsolatedBackend
from kiln.sandbox.types import SandboxSpec
from kiln.sandbox.unisolated import UnisolatedBackend

PRINT = "import sys; sys.stdout.write('x'); sys.stdout.flush()"


def pass_time(python: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True)
    return time.perf_counter() - t0


def popen_first_byte(python: str) -> float:
    t0 = time.perf_counter()
    proc = subprocess.Popen([python, "-c", PRINT], stdout=subprocess.PIPE)
    assert proc.stdout is not None
    proc.stdout.read(1)
    elapsed = time.perf_counter() - t0
    proc.wait()
    return elapsed


async def backend_first_byte(backend: object, python: str, task: Path) -> tuple[float, float]:
    loop = asyncio.get_running_loop()
    first: asyncio.Future[float] = loop.create_future()

    def on_output(_chunk: bytes) -> None:
        if not first.done():
            first.set_result(time.perf_counter())

    spec = SandboxSpec(
        env_id=f"bench{time.perf_counter_ns()}",
        argv=[python, "-c", PRINT],
        env={"PATH": "/usr/bin:/bin"},
        task_root=task,
        on_output=on_output,
    )
    t0 = time.perf_counter()
    sandbox = await backend.create(spec)  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    await sandbox.start()
    t_first = await asyncio.wait_for(first, 10)
    await sandbox.wait()
    await sandbox.destroy()
    return t_first - t0, t1 - t0


def _kb(path: str, key: str) -> int:
    for line in Path(path).read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


async def idle_overhead(backend: IsolatedBackend, python: str, task: Path) -> dict[str, float]:
    out: list[bytes] = []
    spec = SandboxSpec(
        env_id="idle",
        argv=[python, "-c", "import sys, time; print('up', flush=True); time.sleep(60)"],
        env={"PATH": "/usr/bin:/bin"},
        task_root=task,
        on_output=out.append,
    )
    sandbox = await backend.create(spec)
    await sandbox.start()
    while b"up" not in b"".join(out):
        await asyncio.sleep(0.005)
    await sandbox.freeze()
    assert sandbox.init_pid is not None
    init = f"/proc/{sandbox.init_pid}/smaps_rollup"
    uss = _kb(init, "Private_Clean") + _kb(init, "Private_Dirty")
    pss = _kb(init, "Pss")
    pids = [p for p in sandbox.cgroup.pids() if p != sandbox.init_pid]
    runtime_rss = sum(_kb(f"/proc/{p}/status", "VmRSS") for p in pids)
    usage = 0
    if sandbox.cgroup.version == 1:
        mem = sandbox.cgroup.dirs["memory"]  # type: ignore[union-attr]
        stat = dict(
            (line.split()[0], int(line.split()[1]))
            for line in (mem / "memory.stat").read_text().splitlines()
        )
        usage = (stat["rss"] + stat.get("shmem", 0)) // 1024
    await sandbox.destroy()
    return {
        "init_uss_mib": uss / 1024,
        "init_pss_mib": pss / 1024,
        "runtime_rss_mib": runtime_rss / 1024,
        "cgroup_anon_mib": usage / 1024,
    }


async def main(n: int) -> None:
    pythons = ["/usr/bin/python3", os.path.realpath(sys.executable)]
    with tempfile.TemporaryDirectory() as tmp:
        task = Path(tmp) / "task"
        task.mkdir()
        os.chmod(tmp, 0o755)
        isolated = IsolatedBackend(Path(tmp) / "iso")
        process = UnisolatedBackend(Path(tmp) / "proc")
        try:
            for python in pythons:
                rows: dict[str, list[float]] = {
                    "pass": [],
                    "popen": [],
                    "process": [],
                    "isolated": [],
                    "iso_create": [],
                }
                for i in range(n + 2):
                    sample = {
                        "pass": pass_time(python),
                        "popen": popen_first_byte(python),
                        "process": (await backend_first_byte(process, python, task))[0],
                    }
                    iso, create = await backend_first_byte(isolated, python, task)
                    sample["isolated"], sample["iso_create"] = iso, create
                    if i >= 2:  # warm-up
                        for key, value in sample.items():
                            rows[key].append(value)
                base = statistics.median(rows["pass"])
                print(f"\n{python}  (median of {n}; ratio to `-c pass` = {base * 1e3:.1f} ms)")
                for key, values in rows.items():
                    med = statistics.median(values)
                    print(
                        f"  {key:<11} {med * 1e3:7.1f} ms   x{med / base:4.2f}   "
                        f"(min {min(values) * 1e3:.1f}, max {max(values) * 1e3:.1f})"
                    )
            print("\nidle environment overhead:", await idle_overhead(isolated, pythons[0], task))
        finally:
            await isolated.close()
            await process.close()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20))
