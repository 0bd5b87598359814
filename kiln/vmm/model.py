"""A microVM's configuration as Firecracker's API describes it, parsed and checked as it does.

Bodies are parsed like Firecracker's serde structs (``deny_unknown_fields``, exact JSON types),
so a bad body gets Firecracker's kind of message, as :class:`ApiError` (HTTP 400).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from typing import Any

MAX_VCPUS = 32
MMDS_LIMIT_BYTES = 51200
DEFAULT_MMDS_IPV4 = "169.254.169.254"


class ApiError(Exception):
    """A request Firecracker would refuse: ``{"fault_message": message}`` with ``status``."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


#: field -> (JSON type name, required)
Shape = dict[str, tuple[str, bool]]

_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "boolean": (bool,),
    "integer": (int,),
    "object": (dict,),
    "array": (list,),
}


def parse_body(body: bytes) -> Any:
    if not body.strip():
        raise ApiError("The request body is empty.")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise deserialize_error(str(exc)) from None


def fields(body: bytes, shape: Shape) -> dict[str, Any]:
    """The body as an object with exactly the fields of ``shape``, each of its JSON type."""
    value = parse_body(body)
    if not isinstance(value, dict):
        raise deserialize_error("invalid type: expected a JSON object")
    for name, item in value.items():
        if name not in shape:
            expected = ", ".join(f"`{n}`" for n in shape)
            raise deserialize_error(f"unknown field `{name}`, expected one of {expected}")
        kind, _required = shape[name]
        ok = _JSON_TYPES[kind]
        if not isinstance(item, ok) or (kind == "integer" and isinstance(item, bool)):
            raise deserialize_error(f"invalid type for field `{name}`: expected {kind}")
        if kind == "integer" and isinstance(item, int) and item < 0:
            raise deserialize_error(f"invalid value for field `{name}`: "
                                    "expected a non-negative integer")
    for name, (_kind, required) in shape.items():
        if required and name not in value:
            raise deserialize_error(f"missing field `{name}`")
    return value


def enum(value: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    item = value.get(name)
    if item is not None and item not in allowed:
        variants = ", ".join(f"`{a}`" for a in allowed)
        raise deserialize_error(f"unknown variant `{item}`, expected one of {variants}")
    return item


def deserialize_error(detail: str) -> ApiError:
    """Firecracker's 400 for a body its serde structs refuse."""
    return ApiError(f"An error occurred when deserializing the json body of a request: {detail}.")


# -- the configuration ---------------------------------------------------------------------------


@dataclass
class MachineConfig:
    vcpu_count: int = 1
    mem_size_mib: int = 128
    smt: bool = False
    track_dirty_pages: bool = False
    huge_pages: str = "None"

    SHAPE = {
        "vcpu_count": ("integer", True), "mem_size_mib": ("integer", True),
        "smt": ("boolean", False), "track_dirty_pages": ("boolean", False),
        "cpu_template": ("string", False), "huge_pages": ("string", False),
    }

    @classmethod
    def parse(cls, body: bytes) -> MachineConfig:
        value = fields(body, cls.SHAPE)
        enum(value, "cpu_template", ("C3", "T2", "T2S", "T2CL", "T2A", "V1N1", "None"))
        huge = enum(value, "huge_pages", ("None", "Transparent", "2M")) or "None"
        config = cls(value["vcpu_count"], value["mem_size_mib"], value.get("smt", False),
                     value.get("track_dirty_pages", False), huge)
        if not 1 <= config.vcpu_count <= MAX_VCPUS or (
            config.smt and config.vcpu_count > 1 and config.vcpu_count % 2
        ):
            raise ApiError("The vCPU number is invalid! The vCPU number can only be 1 or an even "
                           "number when SMT is enabled.")
        if config.mem_size_mib == 0 or (huge == "2M" and config.mem_size_mib % 2):
            raise ApiError("The memory size (MiB) is invalid.")
        if value.get("cpu_template") not in (None, "None"):
            raise ApiError("CPU templates are not supported by this VMM engine.")
        return config

    def describe(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BootSource:
    kernel_image_path: str
    initrd_path: str | None = None
    boot_args: str | None = None

    SHAPE = {"kernel_image_path": ("string", True), "initrd_path": ("string", False),
             "boot_args": ("string", False)}

    @classmethod
    def parse(cls, body: bytes) -> BootSource:
        value = fields(body, cls.SHAPE)
        source = cls(value["kernel_image_path"], value.get("initrd_path"), value.get("boot_args"))
        _readable(source.kernel_image_path, "The kernel file cannot be opened")
        if source.initrd_path is not None:
            _readable(source.initrd_path, "The initrd file cannot be opened")
        return source


@dataclass
class Drive:
    drive_id: str
    path_on_host: str
    is_root_device: bool
    is_read_only: bool = False
    partuuid: str | None = None
    cache_type: str = "Unsafe"

    SHAPE = {
        "drive_id": ("string", True), "is_root_device": ("boolean", True),
        "partuuid": ("string", False), "cache_type": ("string", False),
        "is_read_only": ("boolean", False), "path_on_host": ("string", False),
        "rate_limiter": ("object", False), "io_engine": ("string", False),
        "socket": ("string", False),
    }

    @classmethod
    def parse(cls, drive_id: str, body: bytes, others: dict[str, Drive]) -> Drive:
        value = fields(body, cls.SHAPE)
        cache = enum(value, "cache_type", ("Unsafe", "Writeback")) or "Unsafe"
        enum(value, "io_engine", ("Sync", "Async"))
        if value["drive_id"] != drive_id:
            raise ApiError("The id from the path does not match the id from the body!")
        if "socket" in value:
            raise ApiError("vhost-user block devices are not supported by this VMM engine.")
        if "path_on_host" not in value:
            raise ApiError("Unable to create the virtio block device: path_on_host is required.")
        drive = cls(drive_id, value["path_on_host"], value["is_root_device"],
                    value.get("is_read_only", False), value.get("partuuid"), cache)
        flags = os.O_RDONLY if drive.is_read_only else os.O_RDWR
        try:
            os.close(os.open(drive.path_on_host, flags | os.O_CLOEXEC))
        except OSError as exc:
            raise ApiError(f"Unable to create the virtio block device: {_os_error(exc)}") from None
        if drive.is_root_device and any(
            d.is_root_device and d.drive_id != drive_id for d in others.values()
        ):
            raise ApiError("A root block device already exists!")
        return drive


@dataclass
class Vsock:
    guest_cid: int
    uds_path: str

    SHAPE = {"guest_cid": ("integer", True), "uds_path": ("string", True),
             "vsock_id": ("string", False)}

    @classmethod
    def parse(cls, body: bytes) -> Vsock:
        value = fields(body, cls.SHAPE)
        if value["guest_cid"] < 3:
            raise deserialize_error("invalid value for field `guest_cid`: expected at least 3")
        return cls(value["guest_cid"], value["uds_path"])


@dataclass
class MmdsConfig:
    network_interfaces: list[str]
    version: str = "V1"
    ipv4_address: str = DEFAULT_MMDS_IPV4
    imds_compat: bool = False

    SHAPE = {"version": ("string", False), "network_interfaces": ("array", True),
             "ipv4_address": ("string", False), "imds_compat": ("boolean", False)}

    @classmethod
    def parse(cls, body: bytes) -> MmdsConfig:
        value = fields(body, cls.SHAPE)
        version = enum(value, "version", ("V1", "V2")) or "V1"
        ifaces = value["network_interfaces"]
        if not ifaces or not all(isinstance(i, str) for i in ifaces):
            raise ApiError("The list of network interface IDs that allow forwarding MMDS "
                           "requests is empty.")
        address = value.get("ipv4_address", DEFAULT_MMDS_IPV4)
        parts = address.split(".")
        if not (len(parts) == 4 and parts[:2] == ["169", "254"]
                and all(p.isdigit() and int(p) <= 255 for p in parts[2:])
                and 1 <= int(parts[2]) <= 254):
            raise ApiError(f"The MMDS IPv4 address is not link local: {address}")
        return cls(ifaces, version, address, value.get("imds_compat", False))


@dataclass
class SnapshotCreate:
    snapshot_path: str
    mem_file_path: str

    SHAPE = {"mem_file_path": ("string", True), "snapshot_path": ("string", True),
             "snapshot_type": ("string", False)}

    @classmethod
    def parse(cls, body: bytes) -> SnapshotCreate:
        value = fields(body, cls.SHAPE)
        if enum(value, "snapshot_type", ("Full", "Diff")) == "Diff":
            raise ApiError("Diff snapshots are not supported by this VMM engine.")
        return cls(value["snapshot_path"], value["mem_file_path"])


@dataclass
class SnapshotLoad:
    snapshot_path: str
    mem_path: str
    resume_vm: bool = False
    uds_path: str | None = None

    SHAPE = {
        "enable_diff_snapshots": ("boolean", False), "track_dirty_pages": ("boolean", False),
        "mem_file_path": ("string", False), "mem_backend": ("object", False),
        "snapshot_path": ("string", True), "resume_vm": ("boolean", False),
        "network_overrides": ("array", False), "vsock_override": ("object", False),
        "clock_realtime": ("boolean", False), "huge_pages": ("string", False),
    }

    @classmethod
    def parse(cls, body: bytes) -> SnapshotLoad:
        value = fields(body, cls.SHAPE)
        enum(value, "huge_pages", ("Snapshot", "None", "Transparent", "2M"))
        backend = value.get("mem_backend")
        if ("mem_file_path" in value) == (backend is not None):
            raise ApiError("Exactly one of mem_file_path or mem_backend must be given.")
        if backend is not None:
            if set(backend) != {"backend_type", "backend_path"} or not isinstance(
                backend["backend_path"], str
            ):
                raise deserialize_error(
                    "mem_backend needs exactly `backend_type` and `backend_path`")
            kind = enum(backend, "backend_type", ("File", "Uffd"))
            if kind == "Uffd":
                raise ApiError("Uffd memory backends are not supported by this VMM engine.")
            mem_path: str = backend["backend_path"]
        else:
            mem_path = value["mem_file_path"]
        override = value.get("vsock_override")
        uds_path = None
        if override is not None:
            if set(override) != {"uds_path"} or not isinstance(override["uds_path"], str):
                raise deserialize_error("vsock_override needs exactly `uds_path`")
            uds_path = override["uds_path"]
        if value.get("network_overrides"):
            raise ApiError("Network interfaces are not supported by this VMM engine.")
        return cls(value["snapshot_path"], mem_path, value.get("resume_vm", False), uds_path)


@dataclass
class VmConfig:
    """Everything configured before boot; a snapshot carries it so a restore can rebuild it."""

    machine: MachineConfig = field(default_factory=MachineConfig)
    boot: BootSource | None = None
    drives: dict[str, Drive] = field(default_factory=dict)
    vsock: Vsock | None = None
    mmds: MmdsConfig | None = None
    serial_out_path: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> VmConfig:
        return cls(
            MachineConfig(**data["machine"]),
            BootSource(**data["boot"]) if data["boot"] else None,
            {k: Drive(**v) for k, v in data["drives"].items()},
            Vsock(**data["vsock"]) if data["vsock"] else None,
            MmdsConfig(**data["mmds"]) if data["mmds"] else None,
            data["serial_out_path"],
        )


def _readable(path: str, what: str) -> None:
    try:
        os.close(os.open(path, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as exc:
        raise ApiError(f"{what}: {_os_error(exc)}") from None


def _os_error(exc: OSError) -> str:
    return f"{exc.strerror} (os error {exc.errno})"
