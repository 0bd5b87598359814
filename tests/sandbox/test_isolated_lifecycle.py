"""The isolated backend's protocol behaviour and its clean-up guarantees."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from kiln.sandbox.isolated import IsolatedBackend, SandboxError, runtime_paths
from kiln.sandbox.types import SandboxSpec
from tests.conftest import wait_for
from tests.sandbox.conftest import PYTHON, invoke_once, run, run_program, spec_for

pytestmark = pytest.mark.usefixtures("isolation_features")
REPO = Path(__file__).resolve().parents[2]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is gone for our purposes
        return Path(f"/proc/{pid}/stat").read_text().split(")")[1].split()[0] != "Z"
    except OSError:
        return False


def _mounts_under(path: Path) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == str(path) or p.startswith(str(path) + "/")]


def test_exit_codes_signals_and_exec_failure(sandbox_root: Path, task_root: Path) -> None:
    async def go() -> None:
        backend = IsolatedBackend(sandbox_root)
        try:
            assert (await run_program(backend, task_root, "raise SystemExit(7)"))[0] == 7
            rc, _ = await run_program(backend, task_root, "import os; os.kill(os.getpid(), 15)")
            assert rc == -signal.SIGTERM
            rc, out = await run_program(
                backend, task_root, "print('hi'); import sys; sys.stderr.write('err\\n')"
            )
            assert rc == 0 and "hi\n" in out and "err\n" in out
            spec = spec_for(task_root, "pass")
            sandbox = await backend.create(replace(spec, argv=["/nonexistent/python"]))
            with pytest.raises(FileNotFoundError) as info:
                await sandbox.start()
            assert info.value.filename == "/nonexistent/python"
            assert await sandbox.wait() == 127
            await sandbox.destroy()
            await sandbox.destroy()  # idempotent
        finally:
            await backend.close()

    run(go)


def test_runtime_api_listener_serves_runtime_api(sandbox_root: Path, task_root: Path) -> None:
    """The real Runtime API served on the listener made inside the namespace."""
    code = textwrap.dedent(
        """
        import http.client, json, os
        host, port = os.environ["AWS_LAMBDA_RUNTIME_API"].split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("GET", "/2018-06-01/runtime/invocation/next")
        r = c.getresponse()
        rid = r.getheader("Lambda-Runtime-Aws-Request-Id")
        event = json.loads(r.read())
        c.request("POST", f"/2018-06-01/runtime/invocation/{rid}/response",
                  body=json.dumps({"echo": event, "uid": os.getuid()}))
        print("posted", c.getresponse().status, flush=True)
        """
    )

    async def go() -> tuple[bytes, str]:
        backend = IsolatedBackend(sandbox_root)
        out: list[bytes] = []
        try:
            sandbox = await backend.create(spec_for(task_root, code, out=out))
            api, result = await invoke_once(sandbox, b'{"n": 1}')
            assert await asyncio.wait_for(sandbox.wait(), 10) == 0
            api.close()
            await sandbox.destroy()
            return result.body, b"".join(out).decode()
        finally:
            await backend.close()

    body, out = run(go)
    assert json.loads(body) == {"echo": {"n": 1}, "uid": 993}
    assert "posted 202" in out


def test_layers_tmp_size_and_interpreter_discovery(
    sandbox_root: Path, task_root: Path, tmp_path: Path
) -> None:
    layers = []
    for i, files in enumerate([{"a.txt": "1", "b.txt": "1"}, {"b.txt": "2", "c/d.txt": "2"}]):
        layer = tmp_path / f"layer{i}"
        for name, text in files.items():
            (layer / name).parent.mkdir(parents=True, exist_ok=True)
            (layer / name).write_text(text)
        layers.append(layer)
    code = (
        "import os, sys\n"
        "print('OPT', sorted(os.listdir('/opt')), open('/opt/a.txt').read(),"
        " open('/opt/b.txt').read(), open('/opt/c/d.txt').read())\n"
        "st = os.statvfs('/tmp'); print('TMPMB', st.f_blocks * st.f_frsize // 2**20)\n"
    )

    async def go() -> tuple[str, str]:
        backend = IsolatedBackend(sandbox_root)
        try:
            _, out = await run_program(backend, task_root, code, layers=layers, ephemeral_mb=40)
            # The test's own interpreter (a venv over a pyenv build) is found from argv[0].
            out2: list[bytes] = []
            spec = spec_for(task_root, "import sys; print('PREFIX', sys.prefix)", out=out2)
            spec = replace(spec, argv=[sys.executable, *spec.argv[2:]])  # with site
            sandbox = await backend.create(spec)
            await sandbox.start()
            assert await sandbox.wait() == 0, b"".join(out2)
            await sandbox.destroy()
            return out, b"".join(out2).decode()
        finally:
            await backend.close()

    out, out2 = run(go)
    assert "OPT ['a.txt', 'b.txt', 'c'] 1 2 2" in out
    assert "TMPMB 40" in out
    assert f"PREFIX {sys.prefix}" in out2
    assert runtime_paths(["/usr/bin/python3", "-c", "pass"]) == []


def test_freeze_thaw_and_cpu_limits(sandbox_root: Path, task_root: Path) -> None:
    code = "import time\nwhile True:\n    print('tick', flush=True)\n    time.sleep(0.005)\n"

    async def go() -> None:
        backend = IsolatedBackend(sandbox_root)
        out: list[bytes] = []
        try:
            sandbox = await backend.create(spec_for(task_root, code, out=out, memory_mb=256))
            cg = sandbox.cgroup
            if cg.version == 1:
                cpu = cg.dirs["cpu"]  # type: ignore[union-attr]
                assert (cpu / "cpu.shares").read_text().strip() == str(round(1024 * 256 / 1769))
                assert (cpu / "cpu.cfs_quota_us").read_text().strip() == "100000"  # INIT boost
                mem = cg.dirs["memory"]  # type: ignore[union-attr]
                assert int((mem / "memory.limit_in_bytes").read_text()) == 256 * 2**20
                assert (cg.dirs["pids"] / "pids.max").read_text().strip() == "1024"  # type: ignore[union-attr]
            await sandbox.start()
            await asyncio.sleep(0.1)
            await sandbox.freeze()
            assert cg.is_frozen()
            if cg.version == 1:
                quota = int((cg.dirs["cpu"] / "cpu.cfs_quota_us").read_text())  # type: ignore[union-attr]
                assert quota == round(100000 * 256 / 1769)
            sandbox.drain_output()
            frozen_at = len(b"".join(out))
            await asyncio.sleep(0.2)
            sandbox.drain_output()
            assert len(b"".join(out)) == frozen_at
            await sandbox.thaw()
            await asyncio.sleep(0.1)
            sandbox.drain_output()
            assert len(b"".join(out)) > frozen_at
            await sandbox.freeze()  # destroy must also kill a frozen environment
            await sandbox.destroy()
            assert not cg.exists()
        finally:
            await backend.close()

    run(go)


def test_destroy_leaves_nothing(sandbox_root: Path, task_root: Path) -> None:
    async def go() -> None:
        backend = IsolatedBackend(sandbox_root)
        parents = list(backend.cgroups.parents.values())
        try:
            boxes = []
            for i in range(3):
                sandbox = await backend.create(
                    spec_for(task_root, "import os, time\nos.fork()\ntime.sleep(60)\n")
                )
                if i < 2:
                    await sandbox.start()
                boxes.append(sandbox)
            deadline = time.monotonic() + 10  # until both runtimes have forked
            while sum(len(b.cgroup.pids()) for b in boxes) < 2 * 3 + 1:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            pids = [b.init_pid for b in boxes]
            assert all(p is not None and _alive(p) for p in pids)
            assert sum(len(b.cgroup.pids()) for b in boxes) == 2 * 3 + 1
            for b in boxes:
                await b.destroy()
            assert not any(_alive(p) for p in pids if p is not None)
            assert not any(b.cgroup.exists() for b in boxes)
            # Only the pre-warmed blank environments are left until close().
            await backend.prepare()  # a refill may be under way
            blank = sorted(Path(b.cgroup.procs_files()[0]).parent.name for b in backend._pool)
            assert backend.cgroups.children() == blank
            assert _mounts_under(sandbox_root) == []
            assert sorted(p.name for p in sandbox_root.iterdir()) == [
                "backend.lock",
                "launcher.pid",
                "newroot",
            ]
            assert list((sandbox_root / "newroot").iterdir()) == []
            launcher = backend._launcher
            assert launcher is not None
        finally:
            await backend.close()
        assert launcher.poll() is not None
        assert not any(p.exists() for p in parents)

    run(go)


def test_second_backend_on_same_root_is_refused(sandbox_root: Path) -> None:
    async def go() -> None:
        backend = IsolatedBackend(sandbox_root)
        try:
            with pytest.raises(SandboxError):
                IsolatedBackend(sandbox_root)
        finally:
            await backend.close()

    run(go)


HOLDER = """
import asyncio, json, sys
sys.path.insert(0, {repo!r})
from pathlib import Path
from kiln.sandbox.isolated import IsolatedBackend
from kiln.sandbox.types import SandboxSpec

async def main():
    backend = IsolatedBackend({root!r})
    info = []
    for i in range(3):
        spec = SandboxSpec(env_id=f"held{{i}}", argv=[{python!r}, "-S", "-c",
                           "import os, time; os.fork(); time.sleep(120)"],
                           env={{}}, task_root=Path({task!r}))
        sb = await backend.create(spec)
        if i < 2:
            await sb.start()
        if i == 0:
            await asyncio.sleep(0.05)
            await sb.freeze()   # a frozen environment cannot notice its server died
        info.append({{"init": sb.init_pid, "cgroup": sb.cgroup.procs_files()}})
    print(json.dumps({{"envs": info, "launcher": backend._launcher.pid}}), flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


@dataclass
class Held:
    inits: list[int]
    cgroup_dirs: list[Path]
    launcher: int


def _hold_then_kill(sandbox_root: Path, task_root: Path, kill_launcher: bool) -> Held:
    """Run HOLDER's server in a process, then SIGKILL it (and its launcher if asked): what
    its environments left behind."""
    script = HOLDER.format(
        repo=str(REPO), root=str(sandbox_root), python=PYTHON, task=str(task_root)
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL
    )
    try:
        assert holder.stdout is not None
        line = holder.stdout.readline()
        assert line, "holder died"
        info = json.loads(line)
        if kill_launcher:
            os.kill(info["launcher"], signal.SIGKILL)
    finally:
        holder.kill()
        holder.wait()
    return Held([env["init"] for env in info["envs"]],
                [Path(p).parent for env in info["envs"] for p in env["cgroup"]],
                info["launcher"])


def test_kill_9_of_the_server_then_sweep(sandbox_root: Path, task_root: Path) -> None:
    # The launcher too (it would otherwise clean up by itself): only the sweep is left.
    held = _hold_then_kill(sandbox_root, task_root, kill_launcher=True)
    inits, cgroup_dirs = held.inits, held.cgroup_dirs
    assert any(_alive(p) for p in inits)  # the frozen one at least

    async def go() -> list[str]:
        backend = IsolatedBackend(sandbox_root)  # sweeps in its constructor
        try:
            return backend.swept
        finally:
            await backend.close()

    swept = run(go)
    # the three environments, plus the blank pre-warmed ones
    assert len([s for s in swept if s.startswith("cgroup ")]) >= 3, swept
    wait_for(lambda: not any(_alive(p) for p in inits), 5)
    assert not any(_alive(p) for p in inits)
    assert not any(d.exists() for d in cgroup_dirs)
    assert not _alive(held.launcher)
    assert _mounts_under(sandbox_root) == []


def test_environments_die_with_their_server(sandbox_root: Path, task_root: Path) -> None:
    """Without any sweep: inits and the launcher see the server's sockets close."""
    held = _hold_then_kill(sandbox_root, task_root, kill_launcher=False)
    # Running ones take themselves down; the launcher kills the frozen one and the cgroups.
    inits, cgroup_dirs = held.inits, held.cgroup_dirs
    wait_for(lambda: not any(_alive(p) for p in [*inits, held.launcher])
             and not any(d.exists() for d in cgroup_dirs), 10)
    assert not any(_alive(p) for p in inits)
    assert not any(d.exists() for d in cgroup_dirs)
    assert not _alive(held.launcher)

    async def go() -> None:
        backend = IsolatedBackend(sandbox_root)
        await backend.close()

    run(go)


def test_egress_opt_in_shares_the_host_network(sandbox_root: Path, task_root: Path) -> None:
    code = (
        "import os, socket\n"
        "host, port = os.environ['AWS_LAMBDA_RUNTIME_API'].split(':')\n"
        "s = socket.create_connection((host, int(port)), 5); s.sendall(b'ping')\n"
        "print('API', host, port, s.recv(4), flush=True)\n"
        "print('IFACES', len(socket.if_nameindex()) >= 1)\n"
    )

    async def go() -> str:
        backend = IsolatedBackend(sandbox_root, prewarm=0)
        out: list[bytes] = []
        try:
            base = spec_for(task_root, code, out=out)
            sandbox = await backend.create(replace(base, egress=True))

            async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
                w.write(await r.read(4))
                await w.drain()
                w.close()

            server = await asyncio.start_server(echo, sock=sandbox.listener)
            await sandbox.start()
            assert await asyncio.wait_for(sandbox.wait(), 10) == 0, b"".join(out)
            server.close()
            await sandbox.destroy()
            return b"".join(out).decode()
        finally:
            await backend.close()

    out = run(go)
    assert "API 127.0.0.1" in out and "b'ping'" in out
    assert "API 127.0.0.1 9001" not in out  # an ephemeral port: 9001 is not ours to take


def test_many_environments_at_once(sandbox_root: Path, task_root: Path) -> None:
    async def go() -> list[tuple[int, str]]:
        backend = IsolatedBackend(sandbox_root, prewarm=2)
        try:
            await backend.prepare()
            return list(
                await asyncio.gather(
                    *(
                        run_program(
                            backend, task_root, f"import os; print('env', {i}, os.getpid())"
                        )
                        for i in range(8)
                    )
                )
            )
        finally:
            await backend.close()

    results = run(go)
    assert [rc for rc, _ in results] == [0] * 8
    assert [out.strip() for _, out in results] == [f"env {i} 2" for i in range(8)]


def test_kiln_python_runtime_and_provided_bootstrap(sandbox_root: Path, task_root: Path) -> None:
    """Kiln's own runtimes, with the host paths the invoke layer passes (task root, runtime dir)."""
    bootstrap_dir = REPO / "kiln" / "runtime" / "bootstrap"
    (task_root / "app.py").write_text(
        "import os\n"
        "def handler(event, context):\n"
        "    return {'event': event, 'cwd': os.getcwd(), 'uid': os.getuid(),\n"
        "            'root': os.environ['LAMBDA_TASK_ROOT'], 'file': __file__}\n"
    )
    (task_root / "bootstrap").write_text(
        "#!/bin/sh\n"
        'echo "bootstrap at $0 in $(pwd) root=$LAMBDA_TASK_ROOT"\n'
        'api="$AWS_LAMBDA_RUNTIME_API"; echo "api=$api"\n'
    )
    os.chmod(task_root / "app.py", 0o644)
    os.chmod(task_root / "bootstrap", 0o755)
    env = {
        "_HANDLER": "app.handler",
        "LAMBDA_TASK_ROOT": str(task_root),
        "LAMBDA_RUNTIME_DIR": str(bootstrap_dir),
        "PATH": "/usr/local/bin:/usr/bin/:/bin:/opt/bin",
        "LD_LIBRARY_PATH": f"/lib64:/usr/lib64:{task_root}:{task_root}/lib:/opt/lib",
    }

    async def go() -> tuple[bytes, str]:
        backend = IsolatedBackend(sandbox_root)
        out: list[bytes] = []
        try:
            spec = SandboxSpec(
                env_id="py",
                argv=[sys.executable, "-s", "-u", str(bootstrap_dir / "python_bootstrap.py")],
                env=env,
                task_root=task_root,
                on_output=out.append,
            )
            sandbox = await backend.create(spec)
            api, result = await invoke_once(sandbox, b'{"k": "v"}')
            api.close()
            await sandbox.destroy()

            sandbox = await backend.create(
                SandboxSpec(
                    env_id="provided",
                    argv=[str(task_root / "bootstrap")],
                    env=env,
                    task_root=task_root,
                    on_output=out.append,
                )
            )
            out.clear()
            await sandbox.start()
            assert await asyncio.wait_for(sandbox.wait(), 10) == 0
            await sandbox.destroy()
            return result.body, b"".join(out).decode()
        finally:
            await backend.close()

    body, provided = run(go)
    assert json.loads(body) == {
        "event": {"k": "v"},
        "cwd": "/var/task",
        "uid": 993,
        "root": "/var/task",
        "file": "/var/task/app.py",
    }
    assert "bootstrap at /var/task/bootstrap in /var/task root=/var/task" in provided
    assert "api=127.0.0.1:9001" in provided
