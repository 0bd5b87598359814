"""The guest image: Debian's cloud kernel (its bzImage for QEMU, the ELF vmlinux inside it for
Firecracker), a busybox initramfs with its virtio modules, and a read-only ext4 root holding
Debian's Python, the host's Node.js and Kiln's guest agent.

    image = build_image(images_dir, progress=print, node="/usr/bin/node")   # cached: rebuilt
                                                                            # only if inputs change
    image = GuestImage.current(images_dir)             # what the microvm backend boots
    image.kernel_for(await monitor.client.get("/"))     # vmlinuz (QEMU) or vmlinux (Firecracker)

Everything comes from Debian packages fetched with ``apt-get download`` and unpacked with
``dpkg-deb -x`` (nothing is installed on the host); the filesystem is made by ``mkfs.ext4 -d``.
An image lives in ``images_dir/<hash>/`` where the hash covers every input: the exact package
versions apt resolves, the agent, Kiln's runtime bootstraps, this recipe and the node binary.
``current`` names the last one built.  Its manifest records them, and what the build made of
them beyond the package's files (the ``vmlinux``: its compression in the bzImage, size, sha256).

Node.js is the host's own binary (the one the ``process`` backend runs for nodejs*.x), copied to
``/usr/bin/node``, so both backends give a function the same ``process.version``; the build
fails unless the root's Debian libraries satisfy it.  Without a node on the host the image has
none (its manifest says ``"node": null``), as the host then refuses nodejs runtimes.
"""

from __future__ import annotations

import compileall
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from kiln.runtime.runtimes import BOOTSTRAP_DIR
from kiln.vmm.guest.vmlinux import ExtractError, extract, write_sparse

#: Bump when the recipe below changes in a way the other inputs do not show.
RECIPE_VERSION = "1"
KERNEL_PACKAGE = "linux-image-cloud-amd64"
#: The root's packages (libstdc++ as in Lambda's own images: native extensions need it);
#: apt adds their dependency closure (libc6, libssl3, ...).
ROOT_PACKAGES = ("python3.11", "busybox-static", "libstdc++6")
GUEST_PYTHON = "/usr/bin/python3.11"
GUEST_NODE = "/usr/bin/node"
#: Where the root's shared libraries are (Debian's multiarch layout), and its dynamic loader.
LIBRARY_DIRS = ("lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu", "lib", "usr/lib")
GUEST_LOADER = "/lib64/ld-linux-x86-64.so.2"
AGENT_DIR = "/usr/lib/kiln"
RUNTIME_DIR = "/var/runtime"
#: Modules the initramfs may load, in dependency order (the .debs carry no modules.dep).
MODULES = (
    "drivers/virtio/virtio.ko",
    "drivers/virtio/virtio_ring.ko",
    "drivers/virtio/virtio_mmio.ko",
    "drivers/block/virtio_blk.ko",
    "drivers/char/virtio_console.ko",
    "net/vmw_vsock/vsock.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
    "net/vmw_vsock/vmw_vsock_virtio_transport.ko",
)
#: Filesystem labels the initramfs mounts by (device order differs between engines).
ROOT_LABEL, CODE_LABEL, OPT_LABEL = "kiln-root", "kiln-code", "kiln-opt"
#: Trimmed from the root: documentation and translations nobody reads inside a microVM.
PRUNE = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale",
         "usr/share/lintian", "usr/share/bug", "var/cache", "var/lib/dpkg")

INIT = f"""#!/bin/sh
# Kiln guest /init: load virtio drivers, mount the read-only root, code and /tmp, start the agent.
PATH=/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
tmp_mb=512
for arg in $(cat /proc/cmdline); do
  case "$arg" in kiln.tmp_mb=*) tmp_mb="${{arg#*=}}";; esac
done
for m in virtio_ring virtio virtio_mmio virtio_blk virtio_console; do
  insmod /lib/modules/$m.ko
done
for d in /sys/bus/virtio/devices/*; do
  if [ "$(cat "$d/device" 2>/dev/null)" = 0x0013 ]; then
    for m in vsock vmw_vsock_virtio_transport_common vmw_vsock_virtio_transport; do
      insmod /lib/modules/$m.ko
    done
    break
  fi
done
n=0
until root=$(findfs LABEL={ROOT_LABEL} 2>/dev/null); do
  n=$((n + 1)); [ $n -gt 500 ] && {{ echo "kiln: no root device"; poweroff -f; }}; sleep 0.01
done
mount -t ext4 -o ro,noatime "$root" /root
code=$(findfs LABEL={CODE_LABEL} 2>/dev/null) && mount -t ext4 -o ro,noatime "$code" /root/var/task
opt=$(findfs LABEL={OPT_LABEL} 2>/dev/null) && mount -t ext4 -o ro,noatime "$opt" /root/opt
mount -t tmpfs -o "size=${{tmp_mb}}m,mode=1777" tmpfs /root/tmp
ip link set lo up
mount --move /dev /root/dev
mount --move /proc /root/proc
mount --move /sys /root/sys
exec switch_root /root {GUEST_PYTHON} -S {AGENT_DIR}/launch.py
"""

#: Firecracker describes the guest's virtio devices in ACPI tables from 1.8 on; before, only on
#: the kernel command line (``virtio_mmio.device=``), which Debian's kernel cannot read (no
#: CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES): its guest would find no disk.
FIRECRACKER_ACPI = (1, 8)

#: The agent's entry point: a script is compiled on every start, a module's .pyc is reused.
LAUNCH = "from kiln.vmm.guest.agent import main\n\nmain()\n"
KILN_DIR = Path(__file__).resolve().parent.parent.parent
#: Kiln's own modules in the guest (stdlib-only ones).
GUEST_MODULES = ("vmm/guest/agent.py", "vmm/guest/channel.py", "vmm/mux.py",
                 "sandbox/_output.py")
#: Kiln's modules that make the image (besides this one): a change in them is a new image.
RECIPE_MODULES = ("vmm/guest/vmlinux.py",)


def images_dir(data_dir: Path) -> Path:
    """Where a Kiln data directory keeps its guest images."""
    return data_dir / "microvm" / "images"


class ImageError(Exception):
    """The image cannot be built or used; the message says what to do."""


@dataclass(frozen=True)
class GuestImage:
    path: Path
    manifest: dict[str, object]

    @property
    def kernel(self) -> Path:
        """Debian's compressed bzImage, which QEMU boots."""
        return self.path / "vmlinuz"

    @property
    def vmlinux(self) -> Path:
        """The uncompressed ELF inside :attr:`kernel` (sparse on disk), which Firecracker boots:
        on x86_64 it loads only an ELF, before its bzImage support (PR #6037, 2026)."""
        return self.path / "vmlinux"

    def kernel_for(self, monitor: Mapping[str, object]) -> Path:
        """The kernel to put in ``PUT /boot-source`` of the monitor whose ``GET /`` answered
        ``monitor`` (its ``kiln.engine`` says which engine runs the VM)."""
        kiln = monitor.get("kiln")
        if not isinstance(kiln, dict) or kiln.get("engine") != "firecracker":
            return self.kernel
        version = re.match(r"v?(\d+)\.(\d+)", str(monitor.get("vmm_version", "")))
        if version is not None and (int(version[1]), int(version[2])) < FIRECRACKER_ACPI:
            raise ImageError(
                f"Firecracker {monitor['vmm_version']} describes the guest's devices only on the "
                "kernel command line, which the guest image's Debian kernel ignores: Kiln "
                f"needs Firecracker {'.'.join(map(str, FIRECRACKER_ACPI))} or newer")
        return self.vmlinux

    @property
    def initrd(self) -> Path:
        return self.path / "initrd.cpio"

    @property
    def rootfs(self) -> Path:
        return self.path / "rootfs.ext4"

    @property
    def digest(self) -> str:
        return self.path.name

    @classmethod
    def current(cls, images_dir: Path) -> GuestImage:
        """The image last built, checked against this Kiln's agent and runtime files."""
        link = images_dir / "current"
        manifest_path = link / "manifest.json"
        if not manifest_path.is_file():
            raise ImageError(f"no microVM guest image in {images_dir}: run "
                             "'kiln microvm build-image' first")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("files") != _file_digests():
            raise ImageError(f"the microVM guest image in {images_dir} was built by another "
                             "version of Kiln: run 'kiln microvm build-image'")
        node, source = manifest.get("node"), manifest.get("node_source")
        if node and source and os.path.exists(source) \
                and node_input(source) != {"path": source, **node}:
            # The host's node was upgraded: the guest's would no longer be the same.
            raise ImageError(f"{source} changed since the microVM guest image in {images_dir} "
                             f"was built with its Node.js {node['version']}: run "
                             "'kiln microvm build-image'")
        return cls(link.resolve(), manifest)


def _file_digests() -> dict[str, str]:
    """The Kiln files baked into the image, by name: a change in any of them is a new image."""
    files = {name: KILN_DIR / name for name in (*GUEST_MODULES, *RECIPE_MODULES)}
    files["vmm/guest/image.py"] = Path(__file__)
    files.update({f"runtime/{p.name}": p for p in sorted(BOOTSTRAP_DIR.iterdir()) if p.is_file()})
    return {name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in files.items()}


def _run(argv: list[str], cwd: Path | None = None) -> str:
    try:
        done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise ImageError(f"'{argv[0]}' is needed to build the guest image (Debian: "
                         "apt-get install apt dpkg e2fsprogs)") from exc
    if done.returncode != 0:
        raise ImageError(f"{' '.join(argv[:3])} ... failed: {done.stderr.strip()[-2000:]}")
    return done.stdout


def _resolve(packages: list[str], no_status: Path) -> list[tuple[str, str]]:
    """(name, version) of ``packages`` and everything they depend on, as apt would install
    them on an empty system (recommends excluded)."""
    out = _run(["apt-get", "-s", "-q", "-o", f"Dir::State::status={no_status}",
                "-o", "APT::Install-Recommends=false", "install", *packages])
    found = re.findall(r"^Inst (\S+) \((\S+)", out, re.MULTILINE)
    if not found:
        raise ImageError(f"apt resolved nothing for {packages}: run 'apt-get update'")
    return [(name, version) for name, version in found]


def resolve_packages(work: Path) -> tuple[tuple[str, str], list[tuple[str, str]]]:
    """The kernel package and the root's packages, each as (name, exact version)."""
    no_status = work / "empty-status"
    no_status.write_text("")
    depends = _run(["apt-cache", "depends", KERNEL_PACKAGE])
    match = re.search(r"Depends: (linux-image-\S+)", depends)
    if match is None:
        raise ImageError(f"apt knows no {KERNEL_PACKAGE}: run 'apt-get update'")
    kernel = next(p for p in _resolve([match.group(1)], no_status) if p[0] == match.group(1))
    return kernel, _resolve(list(ROOT_PACKAGES), no_status)


def node_input(node: str | None) -> dict[str, str] | None:
    """What the image takes of the host's node (None: no Node.js here): its resolved path,
    sha256 (an image input: a new node is a new image) and version."""
    if node is None:
        return None
    path = os.path.realpath(node)
    with open(path, "rb") as binary:
        sha256 = hashlib.file_digest(binary, "sha256").hexdigest()
    return {"path": path, "sha256": sha256, "version": _run([path, "--version"]).strip()}


def _in_root(root: Path, path: str) -> Path:
    """The guest's ``path`` in ``root`` on the host, its (absolute) symlinks followed there."""
    current = root / path.lstrip("/")
    for _ in range(8):
        if not current.is_symlink():
            break
        target = os.readlink(current)
        current = root / target.lstrip("/") if target.startswith("/") else current.parent / target
    return current


def check_libraries(root: Path, binary: str) -> None:
    """ImageError unless the root's own libraries satisfy the guest's ``binary``: the root's
    dynamic loader lists what it loads, searching the root's directories (no host cache);
    whatever it finds only outside the root (its fallback, the host's) the guest lacks."""
    root = root.resolve()
    done = subprocess.run(
        [str(_in_root(root, GUEST_LOADER)), "--inhibit-cache",
         "--library-path", ":".join(str(root / d) for d in LIBRARY_DIRS),
         "--list", str(root / binary.lstrip("/"))],
        capture_output=True, text=True, check=False)
    missing = []
    for line in done.stdout.splitlines():
        name, arrow, found = line.strip().partition(" => ")
        found = found.rsplit(" (", 1)[0]
        if arrow and (found == "not found" or not found.startswith(f"{root}/")):
            missing.append(name)
    if missing or done.returncode != 0:
        problem = f"needs {', '.join(missing)}" if missing else done.stderr.strip()[-500:]
        raise ImageError(
            f"{binary} cannot run in the guest: {problem}, which the guest root's Debian "
            f"packages ({', '.join(ROOT_PACKAGES)} and their dependencies) do not provide; "
            "point KILN_NODE_BINARY at a Node.js built for Debian 12's libraries")


def _digest(inputs: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()[:16]


def _download(packages: list[tuple[str, str]], debs: Path,
              progress: Callable[[str], None]) -> list[Path]:
    """The .deb of each (name, version), fetched once into ``debs``."""
    debs.mkdir(parents=True, exist_ok=True)

    def path_of(name: str, version: str) -> Path | None:
        quoted = version.replace(":", "%3a")  # apt-get download's name for an epoch
        return next(iter(sorted(debs.glob(f"{name}_{quoted}_*.deb"))), None)

    missing = [f"{n}={v}" for n, v in packages if path_of(n, v) is None]
    if missing:
        # One apt-get for all (one per package costs a second each); its "Get:" lines show
        # the progress.
        with subprocess.Popen(["apt-get", "download", *missing], cwd=debs, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) as fetch:
            assert fetch.stdout is not None
            tail: list[str] = []
            for line in fetch.stdout:
                fields = line.split()  # Get:N URL SUITE ARCH NAME ARCH VERSION [SIZE UNIT]
                if line.startswith("Get:") and len(fields) >= 9:
                    progress(f"      {fields[0][4:]}/{len(missing)} {fields[4]} "
                             f"{fields[-2].lstrip('[')} {fields[-1].rstrip(']')}")
                tail = [*tail[-20:], line]
        if fetch.returncode != 0:
            raise ImageError(f"apt-get download failed: {''.join(tail)}")
    paths = [path_of(n, v) for n, v in packages]
    absent = [n for (n, _), p in zip(packages, paths, strict=True) if p is None]
    if absent:
        raise ImageError(f"apt-get download did not fetch {absent}")
    return [p for p in paths if p is not None]


def _cpio(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """An uncompressed newc archive of (name, mode, data, rdev) entries: the kernel unpacks it
    faster than a compressed one, which matters under software emulation."""
    out = bytearray()
    for ino, (name, mode, data, rdev) in enumerate([*entries, ("TRAILER!!!", 0, b"", 0)], 1):
        encoded = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 1, 0, len(data), 0, 0, os.major(rdev), os.minor(rdev),
                  len(encoded), 0)
        out += b"070701" + b"".join(b"%08X" % f for f in fields) + encoded
        out += b"\0" * (-len(out) % 4) + data
        out += b"\0" * (-len(out) % 4)
    return bytes(out)


def _initramfs(busybox: Path, modules_dir: Path) -> bytes:
    entries: list[tuple[str, int, bytes, int]] = [
        (d, stat.S_IFDIR | 0o755, b"", 0)
        for d in ("bin", "dev", "proc", "sys", "root", "lib", "lib/modules")]
    entries.append(("dev/console", stat.S_IFCHR | 0o600, b"", os.makedev(5, 1)))
    entries.append(("bin/busybox", stat.S_IFREG | 0o755, busybox.read_bytes(), 0))
    for applet in ("sh", "mount", "insmod", "cat", "findfs", "sleep", "echo", "ip", "poweroff",
                   "switch_root"):
        entries.append((f"bin/{applet}", stat.S_IFLNK | 0o777, b"busybox", 0))
    for module in MODULES:
        source = modules_dir / module
        entries.append((f"lib/modules/{source.name}", stat.S_IFREG | 0o644,
                        source.read_bytes(), 0))
    entries.append(("init", stat.S_IFREG | 0o755, INIT.encode(), 0))
    return _cpio(entries)


def _populate_root(root: Path) -> None:
    """Kiln's parts of the root: agent, runtime bootstraps, mount points, minimal /etc."""
    for path in PRUNE:
        shutil.rmtree(root / path, ignore_errors=True)
    for mount_point in ("proc", "sys", "dev", "tmp", "var/task", "opt", "root"):
        (root / mount_point).mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python"):
        link = root / "usr/bin" / name
        if not link.exists():
            link.symlink_to("python3.11")
    busybox = root / "bin/busybox"
    for applet in _run([str(busybox), "--list"]).split():
        target = root / "bin" / applet
        if not target.exists() and not (root / "usr/bin" / applet).exists():
            target.symlink_to("busybox")
    agent_dir = root / AGENT_DIR.lstrip("/")
    for name in GUEST_MODULES:  # as a package, so the agent's imports read as they do here
        target = agent_dir / "kiln" / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(KILN_DIR / name, target)
        for package in target.relative_to(agent_dir).parents:
            (agent_dir / package / "__init__.py").touch()
    (agent_dir / "__init__.py").unlink()
    (agent_dir / "launch.py").write_text(LAUNCH)
    shutil.copytree(BOOTSTRAP_DIR, root / RUNTIME_DIR.lstrip("/"),
                    ignore=shutil.ignore_patterns("__pycache__"))
    etc = root / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n"
                                "sbx_user1051:x:993:990::/tmp:/sbin/nologin\n")
    (etc / "group").write_text("root:x:0:\nsbx_user1051:x:990:\n")
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    if sys.version_info[:2] == (3, 11):
        # Byte-compile with this same-version interpreter: a read-only root cannot cache them,
        # and compiling the stdlib inside an emulated guest on every cold boot costs seconds.
        for tree in ("usr/lib/python3.11", AGENT_DIR.lstrip("/")):
            compileall.compile_dir(root / tree, quiet=2, workers=0,
                                   stripdir=str(root), prependdir="/")


def _tree_bytes(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            total += os.lstat(os.path.join(dirpath, name)).st_size + 4096
    return total


def make_ext4(source: Path, target: Path, label: str) -> None:
    """A read-only-use ext4 image holding ``source``'s tree (``mkfs.ext4 -d``), sized to fit."""
    size_mb = _tree_bytes(source) * 5 // 4 // (1 << 20) + 16
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-m", "0", "-O", "^has_journal",
          "-E", "root_owner=0:0", "-d", str(source), str(target), f"{size_mb}M"])


def build_image(images_dir: Path, progress: Callable[[str], None],
                node: str | None = None) -> GuestImage:
    """Build the guest image unless one with the same inputs exists; point ``current`` at it.
    ``node`` is the host's Node.js binary the image carries (None: no Node.js)."""
    images_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=images_dir, prefix=".build-") as scratch:
        work = Path(scratch)
        progress("[1/6] resolving Debian packages")
        kernel, packages = resolve_packages(work)
        node_found = node_input(node)
        inputs = {"recipe": RECIPE_VERSION, "kernel": kernel, "packages": packages,
                  "files": _file_digests(),
                  "node": node_found and {k: node_found[k] for k in ("sha256", "version")}}
        target = images_dir / _digest(inputs)
        if not (target / "manifest.json").is_file():
            progress(f"[2/6] fetching {len(packages) + 1} packages (cached in "
                     f"{images_dir / 'debs'})")
            debs = _download([kernel, *packages], images_dir / "debs", progress)
            progress("[3/6] unpacking the kernel and the root")
            kernel_dir, root, staging = work / "kernel", work / "root", work / "image"
            _run(["dpkg-deb", "-x", str(debs[0]), str(kernel_dir)])
            for deb in debs[1:]:
                _run(["dpkg-deb", "-x", str(deb), str(root)])
            _populate_root(root)
            if node_found is not None:
                progress(f"      Node.js {node_found['version']} from {node_found['path']}")
                shutil.copy(node_found["path"], root / GUEST_NODE.lstrip("/"))
                check_libraries(root, GUEST_NODE)
            staging.mkdir()
            (vmlinuz,) = (kernel_dir / "boot").glob("vmlinuz-*")
            shutil.copy(vmlinuz, staging / "vmlinuz")
            progress("[4/6] extracting the ELF vmlinux (for Firecracker) from the kernel")
            try:
                elf, compression = extract(vmlinuz.read_bytes())
            except ExtractError as exc:
                raise ImageError(f"{vmlinuz.name}: {exc}") from exc
            write_sparse(staging / "vmlinux", elf)
            vmlinux = {"from": "vmlinuz", "compression": compression, "bytes": len(elf),
                       "sha256": hashlib.sha256(elf).hexdigest()}
            del elf  # 50 MB not needed while the root filesystem is made
            (modules_dir,) = (kernel_dir / "lib/modules").iterdir()
            progress("[5/6] making the initramfs")
            (staging / "initrd.cpio").write_bytes(
                _initramfs(root / "bin/busybox", modules_dir / "kernel"))
            progress("[6/6] making the read-only root filesystem")
            make_ext4(root, staging / "rootfs.ext4", ROOT_LABEL)
            (staging / "manifest.json").write_text(json.dumps(
                {**inputs, "kernel_release": modules_dir.name, "vmlinux": vmlinux,
                 "node_source": node_found and node_found["path"]}, indent=1))
            shutil.rmtree(target, ignore_errors=True)
            os.rename(staging, target)
        else:
            progress("up to date")
        link = images_dir / "current"
        temporary = images_dir / ".current"
        temporary.unlink(missing_ok=True)
        temporary.symlink_to(target.name)
        os.replace(temporary, link)
    return GuestImage.current(images_dir)
