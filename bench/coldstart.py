"""Cold start of a new isolated execution environment, and memory per idle environment.

    python bench/coldstart.py [--n 15] [--idle 10]      (as root: namespaces, cgroups)

Prints, for a Python function whose module imports nothing heavy and one importing ``json,
decimal, asyncio, email``, the time of its first invoke (a new environment: create, start,
INIT, invoke; through Kiln's data plane in this process, no HTTP) with the zygote ("snapshot")
and without it (``execve`` of a fresh interpreter), and -- for a published version with
SnapStart -- forked from the version's post-INIT template (no INIT at all: "spare" takes the
fork made ahead, "forked" is the second of two at once, forked on demand), as ratios to
``<python> -c pass`` of the same interpreter measured in this run (and of
``/usr/bin/python3``).  Then the memory an idle, frozen environment costs beyond its
handler's own: the environment's init (PSS), what its cgroup is charged besides the processes'
anonymous memory (tmpfs, kernel memory), and the server's Python memory per environment
(tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gc
import os
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kiln.config import Settings
from kiln.invoke.service import InvokeRequest
from kiln.sandbox._cgroups import CgroupV1
from kiln.sandbox.isolated import ZYGOTE_PYTHON, IsolatedBackend, IsolatedSandbox
from kiln.server import Kiln
from tests.conftest import ROLE, make_zip

SOURCES = {
    "nothing heavy": "def handler(event, context):\n    return 1\n",
    "json, decimal, asyncio, email": (
        "import json, decimal, asyncio, email\n\n"
        "def handler(event, context):\n    return 1\n"),
}
MIB = 1024 * 1024
#: The SnapStart case's handler: a non-empty event ends its environment, so that the next
#: invoke needs a new fork of the template.
LEAVING = ("def handler(event, context):\n    if event:\n        import os\n"
           "        os._exit(0)\n    return 1\n")


def interpreter_start(python: str) -> float:
    """Seconds of ``python -c pass`` (fork, exec, interpreter start, exit)."""
    started = time.perf_counter()
    subprocess.run([python, "-c", "pass"], check=True, env={})
    return time.perf_counter() - started


def create(kiln: Kiln, source: str, memory: int = 128, **fields: object) -> object:
    return kiln.functions.create({
        "FunctionName": f"cold-{uuid.uuid4().hex[:10]}", "Runtime": "python3.11", "Role": ROLE,
        "Handler": "app.handler", "MemorySize": memory,
        "Code": {"ZipFile": base64.b64encode(make_zip({"app.py": source})).decode()}, **fields,
    })


async def first_invoke(kiln: Kiln, record: object) -> float:
    started = time.perf_counter()
    outcome = await kiln.invoker.invoke(
        record, InvokeRequest(payload=b"{}", invoked_arn=record.arn))  # type: ignore[attr-defined]
    elapsed = time.perf_counter() - started
    assert outcome.result.error_type is None, outcome.result.body
    return elapsed


async def snapstart_version(kiln: Kiln, source: str) -> object:
    """A published SnapStart version of ``source`` (with the leaving handler)."""
    head = source.split("def handler", 1)[0]
    record = create(kiln, head + LEAVING, SnapStart={"ApplyOn": "PublishedVersions"})
    return await kiln.functions.publish(record.name, {})  # type: ignore[attr-defined]


async def leave(kiln: Kiln, version: object, count: int) -> None:
    """End ``count`` idle environments of the version."""
    for _ in range(count):
        await kiln.invoker.invoke(version, InvokeRequest(
            payload=b'{"leave": 1}', invoked_arn=version.arn))  # type: ignore[attr-defined]
    await kiln.backend.prepare()  # type: ignore[attr-defined]  # no refill running meanwhile
    await asyncio.sleep(0.05)  # the template's spare fork is ready again


async def new_forks(kiln: Kiln, version: object) -> tuple[float, float]:
    """The first invoke of a new fork of the version's template: one alone (it takes the
    spare fork made ahead), and the slower of two at once (the second forks on demand)."""
    await leave(kiln, version, 1)
    alone = await first_invoke(kiln, version)
    await leave(kiln, version, 1)
    burst = max(await asyncio.gather(first_invoke(kiln, version), first_invoke(kiln, version)))
    await leave(kiln, version, 2)
    return alone, burst


async def cold_starts(n: int) -> dict[str, list[float]]:
    """Samples per case, interleaved (the load of a shared machine varies): a fresh
    interpreter, then a first invoke with the zygote and one without, for each function."""
    samples: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        kilns = {}
        for zygote in (True, False):
            data = Path(tmp) / str(zygote)
            backend = IsolatedBackend(data / "sandboxes", zygote=zygote)
            kilns[zygote] = Kiln(Settings.from_env(environ={}, data_dir=data), backend=backend)
            await kilns[zygote].start()
        snapped = {label: await snapstart_version(kilns[True], source)
                   for label, source in SOURCES.items()}
        try:
            for i in range(n + 1):  # the first round also compiles and caches
                for python in filter(os.path.exists, (ZYGOTE_PYTHON, "/usr/bin/python3")):
                    samples.setdefault(python, []).append(interpreter_start(python))
                for label, source in SOURCES.items():
                    for zygote, kiln in kilns.items():
                        record = create(kiln, source)
                        await kiln.backend.prepare()  # type: ignore[attr-defined]
                        elapsed = await first_invoke(kiln, record)
                        if i:
                            samples.setdefault(f"{label}/{zygote}", []).append(elapsed)
                        await kiln.functions.delete(record.name, None)  # type: ignore[attr-defined]
                    alone, burst = await new_forks(kilns[True], snapped[label])
                    if i:  # the first round made the template (INIT ran there, once)
                        samples.setdefault(f"{label}/snapstart", []).append(alone)
                        samples.setdefault(f"{label}/snapstart-burst", []).append(burst)
            return samples
        finally:
            for kiln in kilns.values():
                await kiln.stop()


def pss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    return 0


def charged_besides_processes(sandbox: IsolatedSandbox) -> int:
    """Bytes the environment's cgroup holds that are not its processes' anonymous memory."""
    group = sandbox.cgroup
    if isinstance(group, CgroupV1):
        memory = group.dirs["memory"]
        stat = dict(line.split() for line in (memory / "memory.stat").read_text().splitlines())
        return int((memory / "memory.usage_in_bytes").read_text()) - int(stat["rss"])
    stat = dict(line.split() for line in (group.path / "memory.stat").read_text().splitlines())
    return int((group.path / "memory.current").read_text()) - int(stat["anon"])


async def idle_overhead(count: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(environ={}, data_dir=Path(tmp), freeze_after_seconds=0.0)
        kiln = Kiln(settings)
        await kiln.start()
        try:
            records = [create(kiln, SOURCES["nothing heavy"]) for _ in range(count)]
            await first_invoke(kiln, records[0])  # imports and caches outside the measure
            gc.collect()
            tracemalloc.start()
            before = tracemalloc.get_traced_memory()[0]
            for record in records[1:]:
                await first_invoke(kiln, record)
            gc.collect()
            server = (tracemalloc.get_traced_memory()[0] - before) / (count - 1)
            tracemalloc.stop()
            await asyncio.sleep(0.2)  # all frozen
            inits, runtimes, cgroups = [], [], []
            for env in kiln.assignment.environments:
                sandbox = env.sandbox
                assert isinstance(sandbox, IsolatedSandbox) and sandbox.init_pid is not None
                (runtime,) = [p for p in sandbox.cgroup.pids() if p != sandbox.init_pid]
                inits.append(pss(sandbox.init_pid))
                runtimes.append(pss(runtime))
                cgroups.append(charged_besides_processes(sandbox))
            return {"init": statistics.median(inits), "cgroup": statistics.median(cgroups),
                    "server": server, "handler": statistics.median(runtimes)}
        finally:
            await kiln.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=15, help="cold starts per case")
    parser.add_argument("--idle", type=int, default=10, help="idle environments measured")
    args = parser.parse_args()

    samples = asyncio.run(cold_starts(args.n))
    fresh = statistics.median(samples[ZYGOTE_PYTHON][1:])
    print(f"{ZYGOTE_PYTHON} -c pass: {fresh * 1000:.1f} ms (the runtime's interpreter)")
    system = statistics.median(samples.get("/usr/bin/python3", [0.0])[1:] or [0.0])
    if system:
        print(f"/usr/bin/python3 -c pass: {system * 1000:.1f} ms")
    print(f"cold start of a new environment (first invoke), medians of {args.n}:")
    for label in SOURCES:
        for case, name in ((True, "with snapshot"), (False, "without"),
                           ("snapstart", "per-version snapshot, spare"),
                           ("snapstart-burst", "per-version snapshot, forked")):
            seconds = statistics.median(samples[f"{label}/{case}"])
            line = (f"  {label:<30} {name:<29} {seconds * 1000:7.1f} ms  "
                    f"x{seconds / fresh:.2f} of a fresh interpreter")
            if system:
                line += f"  (x{seconds / system:.2f} of /usr/bin/python3)"
            print(line)
    memory = asyncio.run(idle_overhead(args.idle))
    overhead = memory["init"] + memory["cgroup"] + memory["server"]
    print(f"idle environment (median of {args.idle}): overhead {overhead / MIB:.2f} MiB = "
          f"init PSS {memory['init'] / MIB:.2f} + cgroup besides processes "
          f"{memory['cgroup'] / MIB:.2f} + server {memory['server'] / MIB:.2f}; "
          f"the handler's own runtime PSS {memory['handler'] / MIB:.2f} MiB")


if __name__ == "__main__":
    main()
