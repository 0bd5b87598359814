"""Hostile functions through the public API (boto3 against a started ``kiln serve`` with its
default sandbox): each attempt is refused, and afterwards the platform keeps serving -- the
server is up, a bystander function answers, and a victim's warm environment is untouched.

The hostile function answers each attempt's outcome: ``"ok"`` or the errno's name."""

from __future__ import annotations

import base64
import json
import re
import socket
import statistics
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import (
    KilnServer,
    create_python_function,
    environment_gone,
    environment_pids,
    start_server,
    wait_for,
)

HOSTILE = r'''
import ctypes, errno, os, signal, socket, time

libc = ctypes.CDLL(None, use_errno=True)


def outcome(fn):
    try:
        value = fn()
        return "ok" if value is None else value
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def libc_outcome(fn):
    ctypes.set_errno(0)
    return "ok" if fn() == 0 else errno.errorcode.get(ctypes.get_errno(), "?")


def read(path):
    with open(path, "rb") as f:
        return "read:" + f.read(200).decode(errors="replace")


def write(path):
    with open(path, "w") as f:
        f.write("pwned")


def connect(host, port):
    with socket.create_connection((host, port), timeout=2):
        pass


def sleeper():
    pid = os.fork()
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    return pid


def ptrace(pid):
    return libc_outcome(lambda: libc.ptrace(ctypes.c_long(16), ctypes.c_long(pid), None, None))


def fork_bomb():
    forks = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:
            return {"forks": forks, "error": errno.errorcode.get(exc.errno)}
        if pid == 0:
            while True:  # every child is a bomb too
                try:
                    os.fork()
                except OSError:
                    time.sleep(0.05)
        forks += 1


def spin(seconds):
    end = time.monotonic() + seconds
    children = [os.fork() for _ in range(3)]
    while time.monotonic() < end:
        pass
    if 0 in children:
        os._exit(0)
    for child in children:
        os.waitpid(child, 0)


def handler(event, context):
    print(context.log_stream_name, flush=True)
    result = {"env": context.log_stream_name}
    for path in event.get("read", []):
        result["read " + path] = outcome(lambda: read(path))
    for path in event.get("listdir", []):
        result["listdir " + path] = outcome(lambda: sorted(os.listdir(path)))
    for path in event.get("write", []):
        result["write " + path] = outcome(lambda: write(path))
    for host, port in event.get("connect", []):
        result[f"connect {host}:{port}"] = outcome(lambda: connect(host, port))
    for pid in event.get("kill", []):
        result[f"kill {pid}"] = outcome(lambda: os.kill(pid, signal.SIGKILL))
    if event.get("ptrace"):
        child = sleeper()
        result["ptrace child"] = ptrace(child)
        result["ptrace init"] = ptrace(1)
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)
    if event.get("mount"):
        result["mount"] = libc_outcome(lambda: libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
        result["umount"] = libc_outcome(lambda: libc.umount2(b"/proc", 2))
        result["unshare"] = libc_outcome(lambda: libc.unshare(0x10000000 | 0x20000))
        result["chroot"] = libc_outcome(lambda: libc.chroot(b"/tmp"))
    if "alloc_mb" in event:
        held = bytearray(event["alloc_mb"] * 2**20)  # zero-filled: every page is touched
        result["allocated"] = len(held) // 2**20
    if event.get("fork_bomb"):
        result["fork_bomb"] = fork_bomb()
    if "spin" in event:
        spin(event["spin"])
    return result
'''

VICTIM = """
import os

def handler(event, context):
    if "secret" in event:
        with open("/tmp/secret", "w") as f:
            f.write(event["secret"])
    with open("/tmp/secret") as f:
        return {"env": context.log_stream_name, "secret": f.read()}
"""

ECHO = "def handler(event, context):\n    return event\n"
SECRET = "victim-secret-4f1c"
DENIED = {"ENOENT", "EACCES", "EPERM", "EROFS"}


@dataclass
class Battery:
    server: KilnServer
    client: Any
    hostile: str
    victim: str
    victim_env: str
    bystander: str

    def attack(self, event: dict[str, Any], function: str | None = None,
               **kwargs: Any) -> tuple[dict[str, Any], Any]:
        response = self.client.invoke(FunctionName=function or self.hostile,
                                      Payload=json.dumps(event).encode(), **kwargs)
        return response, json.loads(response["Payload"].read())

    def assert_serving(self) -> None:
        """The server is up, a bystander answers, and the victim's warm environment still
        holds its secret (same environment, /tmp intact)."""
        assert self.server.process.poll() is None, self.server.output()
        response, body = self.attack({"ping": 1}, self.bystander)
        assert "FunctionError" not in response and body == {"ping": 1}
        response, body = self.attack({}, self.victim)
        assert "FunctionError" not in response, body
        assert body == {"env": self.victim_env, "secret": SECRET}


@pytest.fixture(scope="module")
def battery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Battery]:
    server = start_server(tmp_path_factory.mktemp("hostile") / "data")
    try:
        client = server.client()
        hostile = create_python_function(client, HOSTILE, Timeout=10)
        victim = create_python_function(client, VICTIM)
        bystander = create_python_function(client, ECHO)
        response = client.invoke(FunctionName=victim,
                                 Payload=json.dumps({"secret": SECRET}).encode())
        victim_env = json.loads(response["Payload"].read())["env"]
        yield Battery(server, client, hostile, victim, victim_env, bystander)
    finally:
        server.stop()


def code_path(battery: Battery, function: str) -> Path:
    """Where the server keeps ``function``'s unpacked code on the host."""
    digest = base64.b64decode(battery.client.get_function_configuration(
        FunctionName=function)["CodeSha256"]).hex()
    return battery.server.data_dir / "code" / "tasks" / digest


def test_reading_secrets_other_code_and_other_tmp_is_refused(battery: Battery) -> None:
    victim_code = code_path(battery, battery.victim)
    assert (victim_code / "app.py").read_text() == VICTIM  # the host has it there
    _, body = battery.attack({"read": [
        "/etc/shadow", "/etc/gshadow", str(victim_code / "app.py"),
        str(battery.server.data_dir / "kiln.sqlite3"), "/tmp/secret",
        "/var/task/app.py"]})
    assert body["read /etc/shadow"] in DENIED
    assert body["read /etc/gshadow"] in DENIED
    assert body[f"read {victim_code / 'app.py'}"] in DENIED
    assert body[f"read {battery.server.data_dir / 'kiln.sqlite3'}"] in DENIED
    assert body["read /tmp/secret"] == "ENOENT"  # its own /tmp is not the victim's
    assert body["read /var/task/app.py"].startswith("read:")  # its own code it can read
    battery.assert_serving()


def test_writing_the_code_and_the_root_is_refused(battery: Battery) -> None:
    _, body = battery.attack({"write": ["/var/task/app.py", "/var/task/new.py", "/etc/passwd",
                                        "/usr/lib/evil.py", "/opt/evil", "/tmp/fine"]})
    for path in ("/var/task/app.py", "/var/task/new.py", "/etc/passwd", "/usr/lib/evil.py",
                 "/opt/evil"):
        assert body[f"write {path}"] in DENIED, (path, body)
    assert body["write /tmp/fine"] == "ok"  # /tmp is its own and writable
    assert (code_path(battery, battery.hostile) / "app.py").read_text() == HOSTILE
    battery.assert_serving()


def test_escape_through_proc_is_refused(battery: Battery) -> None:
    _, body = battery.attack({
        "read": ["/proc/1/root/etc/shadow", "/proc/1/environ", "/proc/self/root/etc/shadow"],
        "listdir": ["/proc/1/root", "/proc/1/cwd", "/proc"]})
    for key in ("read /proc/1/root/etc/shadow", "read /proc/1/environ",
                "read /proc/self/root/etc/shadow", "listdir /proc/1/root", "listdir /proc/1/cwd"):
        assert body[key] in DENIED, (key, body)
    # Only its own processes are visible: no host pid, not even the environment's init.
    assert [p for p in body["listdir /proc"] if p.isdigit()] == ["2"]
    battery.assert_serving()


def test_connecting_to_the_server_or_any_host_port_is_refused(battery: Battery) -> None:
    with socket.socket() as listener:  # a host service on every address
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        port = listener.getsockname()[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.connect(("10.255.255.255", 1))  # no packet is sent: picks the host's address
            host_ip = probe.getsockname()[0]
        targets = [["127.0.0.1", battery.server.port], ["127.0.0.1", port], [host_ip, port],
                   [host_ip, battery.server.port], ["127.0.0.1", 9001]]
        _, body = battery.attack({"connect": targets})
    for host, target_port in targets[:-1]:
        assert body[f"connect {host}:{target_port}"] in {
            "ECONNREFUSED", "ENETUNREACH", "EHOSTUNREACH", "EPERM"}, body
    assert body["connect 127.0.0.1:9001"] == "ok"  # its own Runtime API, inside
    battery.assert_serving()


def test_ptrace_mount_and_namespace_escapes_are_refused(battery: Battery) -> None:
    _, body = battery.attack({"ptrace": True, "mount": True})
    assert body["ptrace child"] == "EPERM"
    assert body["ptrace init"] in {"EPERM", "ESRCH"}
    assert body["mount"] == body["umount"] == body["unshare"] == body["chroot"] == "EPERM"
    battery.assert_serving()


def test_signals_cannot_leave_the_environment(battery: Battery) -> None:
    victim_pids = environment_pids(battery.victim_env)
    targets = [battery.server.process.pid, *victim_pids, 1, -1]
    _, body = battery.attack({"kill": targets})
    for pid in [battery.server.process.pid, *victim_pids]:
        assert body[f"kill {pid}"] == "ESRCH", body  # no such process in its namespace
    assert body["kill 1"] == "EPERM"  # the environment's own init is not its to kill
    assert body["kill -1"] == "ESRCH"  # nothing else it may signal
    assert environment_pids(battery.victim_env) == victim_pids
    battery.assert_serving()


def test_fork_bomb_dies_inside(battery: Battery) -> None:
    name = create_python_function(battery.client, HOSTILE, Timeout=3)
    env = battery.attack({}, name)[1]["env"]  # warm: the bomb goes off in this environment
    counts: list[int] = []
    with ThreadPoolExecutor(1) as pool:
        bombing = pool.submit(battery.attack, {"fork_bomb": True}, name)
        assert wait_for(lambda: counts.append(len(environment_pids(env))) or counts[-1] > 200
                        or bombing.done(), 30)
        battery.assert_serving()  # while it is going off
        response, body = bombing.result(timeout=60)
    assert max(counts) <= 1024  # the environment's pids limit
    if "FunctionError" in response:  # its share of the CPU is small: it may run out of time
        assert body["errorType"] == "Sandbox.Timedout", body
    else:
        assert body["fork_bomb"]["error"] in {"EAGAIN", "ENOMEM"}  # pids or memory limit
        assert body["fork_bomb"]["forks"] < 1024
    battery.client.delete_function(FunctionName=name)
    assert wait_for(lambda: environment_gone(env), 30), "the bomb outlived its function"
    battery.assert_serving()


def test_allocating_past_memory_size_is_out_of_memory(battery: Battery) -> None:
    name = create_python_function(battery.client, HOSTILE, MemorySize=128, Timeout=10)
    response, body = battery.attack({"alloc_mb": 256}, name, LogType="Tail")
    request_id = response["ResponseMetadata"]["RequestId"]
    assert response["FunctionError"] == "Unhandled"
    assert body == {"errorType": "Runtime.OutOfMemory",
                    "errorMessage": f"RequestId: {request_id} Error: Runtime exited with error: "
                                    "signal: killed"}
    log = base64.b64decode(response["LogResult"]).decode()
    assert "Runtime.OutOfMemory" in log.splitlines()
    report = log.splitlines()[-1]
    assert report.endswith("\tStatus: error\tError Type: Runtime.OutOfMemory\t"), report
    used = re.search(r"Memory Size: 128 MB\tMax Memory Used: (\d+) MB", report)
    assert used and int(used[1]) >= 120, report  # the cgroup's peak: it hit the limit
    env = log.splitlines()[1]
    assert wait_for(lambda: environment_gone(env), 10)
    # A new environment serves the next, modest invoke.
    response, body = battery.attack({"alloc_mb": 16}, name)
    assert "FunctionError" not in response and body["allocated"] == 16
    battery.assert_serving()


def test_cpu_spinner_does_not_stop_others(battery: Battery) -> None:
    """Four processes spin in a 128 MB function (CPU capped to its share) while a bystander's
    latency is measured; the ratio is printed, only completion is asserted."""
    def latencies(count: int) -> list[float]:
        found = []
        for _ in range(count):
            started = time.perf_counter()
            response, body = battery.attack({"n": 1}, battery.bystander)
            found.append(time.perf_counter() - started)
            assert "FunctionError" not in response and body == {"n": 1}
        return found

    name = create_python_function(battery.client, HOSTILE, MemorySize=128, Timeout=10)
    battery.attack({}, name)  # warm, so the spin starts at once
    quiet = latencies(20)
    with ThreadPoolExecutor(1) as pool:
        spinning = pool.submit(battery.attack, {"spin": 2}, name)
        busy = latencies(20)
        response, body = spinning.result(timeout=60)
    assert "FunctionError" not in response, body
    print(f"bystander median latency: quiet {statistics.median(quiet) * 1000:.1f} ms, "
          f"beside a spinner {statistics.median(busy) * 1000:.1f} ms "
          f"(x{statistics.median(busy) / statistics.median(quiet):.2f})")
    battery.assert_serving()
