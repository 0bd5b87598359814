"""The monitor process: parse the command line, jail itself if asked, serve the API socket.

Its per-VM directory is ``<base dir>/<id>``: ``launch.json`` (written by
:func:`kiln.vmm.launch.start_monitor` before the monitor exists), ``monitor.json`` (pid, API
socket, jailed; written once the socket listens), ``run/`` (QMP and channel sockets) unjailed, or
``root/`` (the jail root, with ``root/run``) jailed.  :func:`kiln.vmm.launch.sweep` reads both
after a ``kill -9``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys

from kiln.config import Settings
from kiln.vmm import jail
from kiln.vmm.api import Monitor
from kiln.vmm.firecracker import FirecrackerProxy
from kiln.vmm.http import HttpRequest, HttpResponse, serve
from kiln.vmm.qemu import detect_accelerator, listen_unix

#: As Firecracker's jailer: alphanumerics and hyphens, 1 to 64 characters.
VM_ID = re.compile(r"[A-Za-z0-9-]{1,64}")
STATE_FILE = "monitor.json"


def write_json(path: str, value: object) -> None:
    """Write ``path`` whole or not at all: a sweep may read it at any moment, and a ``kill -9``
    may come in the middle (a partial file would hide what it records)."""
    staging = f"{path}.{os.getpid()}.tmp"
    with open(staging, "w") as f:
        json.dump(value, f)
    os.replace(staging, path)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(
        prog="python -m kiln.vmm", description="A microVM monitor speaking Firecracker's API.")
    settings = Settings.from_env()
    parser.add_argument("--api-sock", required=True, help="Unix socket to serve the API on")
    parser.add_argument("--id", required=True, help="microVM id (letters, digits, hyphens)")
    parser.add_argument("--base-dir", default=None,
                        help="where <id>/ lives (default: the API socket's directory)")
    parser.add_argument("--engine", choices=("auto", "qemu", "firecracker"), default="auto",
                        help="auto: firecracker when a binary is configured, else QEMU")
    parser.add_argument("--firecracker-bin", default=settings.vmm_firecracker or None,
                        help="the firecracker binary (default: setting vmm_firecracker)")
    parser.add_argument("--qemu-bin", default=settings.vmm_qemu,
                        help="the QEMU binary (default: setting vmm_qemu)")
    parser.add_argument("--jail", action="store_true",
                        help="jail the monitor (namespaces, cgroup, pivot_root, --uid/--gid)")
    parser.add_argument("--uid", type=int, default=65534, help="jailed uid (default 65534)")
    parser.add_argument("--gid", type=int, default=65534, help="jailed gid (default 65534)")
    parser.add_argument("--cgroup-mem-mb", type=int, default=2048,
                        help="jailed cgroup's memory limit (default 2048)")
    parser.add_argument("--cgroup-cpus", type=float, default=None,
                        help="jailed cgroup's CPU quota in CPUs (default none)")
    parser.add_argument("--jail-bind", action="append", default=[], metavar="PATH",
                        help="host path bound read-only at the same path in the jail")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run(args)


def run(args: argparse.Namespace) -> int:
    if not VM_ID.fullmatch(args.id):
        print(f"kiln.vmm: invalid --id {args.id!r}", file=sys.stderr)
        return 2
    api_sock = os.path.abspath(args.api_sock)
    base_dir = os.path.abspath(args.base_dir or os.path.dirname(api_sock))
    vm_dir = os.path.join(base_dir, args.id)
    engine = args.engine
    if engine == "auto":
        engine = "firecracker" if args.firecracker_bin else "qemu"
    binary = args.firecracker_bin if engine == "firecracker" else args.qemu_bin
    resolved = shutil.which(binary) if binary else None
    if resolved is None:
        print(f"kiln.vmm: {engine} binary {binary!r} not found"
              + (" (scripts/ensure-qemu installs QEMU)" if engine == "qemu" else ""),
              file=sys.stderr)
        return 1
    accelerator = "kvm" if engine == "firecracker" else detect_accelerator()
    if os.getsid(0) != os.getpid():
        os.setsid()  # the sweep kills the monitor's process group
    os.makedirs(vm_dir, exist_ok=True)
    listener = listen_unix(api_sock, backlog=64)
    write_json(os.path.join(vm_dir, STATE_FILE),
               {"pid": os.getpid(), "api_sock": api_sock, "jailed": args.jail})
    if args.jail:
        # The engine's binary too: an operator's firecracker may live outside the system
        # directories the jail binds (Firecracker's jailer copies it in).
        binds = [os.path.realpath(p) for p in [*args.jail_bind, resolved]]
        spec = jail.JailSpec(args.id, vm_dir, args.uid, args.gid, args.cgroup_mem_mb,
                             args.cgroup_cpus, binds, kvm=accelerator == "kvm")
        jail.enter(spec, api_sock)
        workdir = "/run"
    else:
        workdir = os.path.join(vm_dir, "run")
        os.makedirs(workdir, exist_ok=True)
    try:
        return asyncio.run(_serve(listener, args.id, engine, resolved, accelerator, workdir))
    finally:
        if not args.jail:
            with contextlib.suppress(OSError):
                os.unlink(api_sock)


async def _serve(listener: socket.socket, vm_id: str, engine: str, binary: str,
                 accelerator: str, workdir: str) -> int:
    backend: Monitor | FirecrackerProxy
    if engine == "firecracker":
        backend = FirecrackerProxy(vm_id, binary, workdir)
        await backend.start()
    else:
        backend = Monitor(vm_id, accelerator, workdir, binary)
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    async def handle(request: HttpRequest) -> HttpResponse:
        return await backend.handle(request)

    server = await serve(listener, handle)
    waiters = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(backend.done.wait())}
    await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    for waiter in waiters:
        waiter.cancel()
    server.close()
    await backend.close()
    return backend.exit_code if backend.done.is_set() else 0
