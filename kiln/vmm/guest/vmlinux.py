"""The uncompressed ELF ``vmlinux`` inside a Linux x86 bzImage, as Linux's
``scripts/extract-vmlinux`` finds it: what Firecracker loads on x86_64 (releases before its
bzImage support load only an ELF), while QEMU boots the bzImage itself.

    elf, compression = extract(Path("vmlinuz").read_bytes())   # ImageError if it cannot
    write_sparse(Path("vmlinux"), elf)

The boot protocol header (2.08 and later) says where the compressed payload is.  Debian's
kernels compress it with LZ4 (legacy frame), which the standard library lacks, so the small
block decoder below does it; gzip, xz, lzma and bzip2 go through the standard library.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

#: ELF e_type EXEC, e_machine x86-64, p_type PT_LOAD.
ET_EXEC, EM_X86_64, PT_LOAD = 2, 62, 1
_LZ4_LEGACY_MAGIC = 0x184C2102
_SPARSE_BLOCK = 4096


class ExtractError(Exception):
    """Not a bzImage holding an ELF vmlinux this module can decompress."""


def _long_length(src: memoryview, i: int, length: int) -> tuple[int, int]:
    """A length whose token nibble is 15: bytes follow at ``i``, added up to one below 255."""
    while True:
        extra = src[i]
        i += 1
        length += extra
        if extra != 255:
            return length, i


def _lz4_block(src: memoryview, out: bytearray) -> None:
    """Append one LZ4 block's decompressed bytes to ``out`` (matches reach back within it)."""
    i, end = 0, len(src)
    while True:
        token = src[i]
        i += 1
        literals = token >> 4
        if literals == 15:
            literals, i = _long_length(src, i, literals)
        out += src[i:i + literals]
        i += literals
        if i >= end:  # the last sequence has literals only
            return
        offset = src[i] | src[i + 1] << 8
        i += 2
        length = token & 15
        if length == 15:
            length, i = _long_length(src, i, length)
        length += 4
        start = len(out) - offset
        if offset == 0 or start < 0:
            raise ExtractError("corrupt LZ4 block: a match reaches before its start")
        if offset >= length:
            out += out[start:start + length]
        else:  # the match overlaps what it writes: the last ``offset`` bytes, repeated
            out += (out[start:] * (length // offset + 1))[:length]


def _lz4_legacy(data: memoryview) -> bytes:
    """An LZ4 legacy-frame stream (``lz4 -l``, as Linux's build makes it): its magic, then
    blocks each preceded by its compressed size (a repeated magic starts another stream)."""
    out = bytearray()
    i = 4
    while i < len(data):
        if i + 4 > len(data):
            raise ExtractError("truncated LZ4 stream")
        (size,) = struct.unpack_from("<I", data, i)
        i += 4
        if size == _LZ4_LEGACY_MAGIC:
            continue
        if i + size > len(data):
            raise ExtractError("truncated LZ4 block")
        try:
            _lz4_block(data[i:i + size], out)
        except IndexError as exc:
            raise ExtractError("corrupt LZ4 block: it ends inside a sequence") from exc
        i += size
    return bytes(out)


class _Decompressor(Protocol):
    def decompress(self, data: memoryview, /) -> bytes: ...


def _streaming(make: Callable[[], _Decompressor]) -> Callable[[memoryview], bytes]:
    """A standard-library decompressor of one stream (the payload's size field follows it)."""
    def decompress(data: memoryview) -> bytes:
        try:
            return make().decompress(data)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            raise ExtractError(f"corrupt payload: {exc}") from exc
    return decompress


#: The payload's first bytes, its compression's name and decompressor (None: not here).
_FORMATS: tuple[tuple[bytes, str, Callable[[memoryview], bytes] | None], ...] = (
    (struct.pack("<I", _LZ4_LEGACY_MAGIC), "lz4", _lz4_legacy),
    (b"\x1f\x8b", "gzip", _streaming(lambda: zlib.decompressobj(wbits=31))),
    (b"\xfd7zXZ\x00", "xz", _streaming(lambda: lzma.LZMADecompressor(lzma.FORMAT_XZ))),
    (b"\x5d\x00\x00", "lzma", _streaming(lambda: lzma.LZMADecompressor(lzma.FORMAT_ALONE))),
    (b"BZh", "bzip2", _streaming(bz2.BZ2Decompressor)),
    (b"\x28\xb5\x2f\xfd", "zstd", None),
    (b"\x89LZO", "lzo", None),
)


def payload(bzimage: bytes) -> memoryview:
    """The compressed kernel inside ``bzimage``, located by its boot protocol header."""
    if len(bzimage) < 0x250 or bzimage[0x202:0x206] != b"HdrS":
        raise ExtractError("not a Linux x86 bzImage (no boot protocol header)")
    (version,) = struct.unpack_from("<H", bzimage, 0x206)
    if version < 0x208:
        raise ExtractError(f"boot protocol {version >> 8}.{version & 0xff} predates "
                           "payload_offset (2.08)")
    setup_sectors = bzimage[0x1F1] or 4  # 0 means 4, for old bootloaders' sake
    offset, length = struct.unpack_from("<II", bzimage, 0x248)
    start = (setup_sectors + 1) * 512 + offset
    if length < 8 or start + length > len(bzimage):
        raise ExtractError("the bzImage's payload lies outside the file")
    return memoryview(bzimage)[start:start + length]


def elf_end(elf: bytes) -> int:
    """Where an ELF64 x86-64 executable's last program segment or section header ends
    (what follows is the decompressor's relocation table, which a direct ELF boot skips)."""
    if len(elf) < 64 or elf[:4] != b"\x7fELF" or elf[4:6] != b"\x02\x01":
        raise ExtractError("the payload is no little-endian ELF64 file")
    e_type, e_machine = struct.unpack_from("<HH", elf, 16)
    if (e_type, e_machine) != (ET_EXEC, EM_X86_64):
        raise ExtractError(f"the payload's ELF is no x86-64 executable "
                           f"(type {e_type}, machine {e_machine})")
    e_phoff, e_shoff = struct.unpack_from("<QQ", elf, 32)
    e_phentsize, e_phnum, e_shentsize, e_shnum = struct.unpack_from("<HHHH", elf, 54)
    end: int = e_shoff + e_shnum * e_shentsize
    loads = 0
    try:
        for index in range(e_phnum):
            header = e_phoff + index * e_phentsize
            p_type, _flags, p_offset = struct.unpack_from("<IIQ", elf, header)
            (p_filesz,) = struct.unpack_from("<Q", elf, header + 32)
            loads += p_type == PT_LOAD
            end = max(end, p_offset + p_filesz)
    except struct.error as exc:
        raise ExtractError("the payload's ELF program headers are truncated") from exc
    if not loads or end > len(elf):
        raise ExtractError("the payload's ELF has no loadable segment or is truncated")
    return end


def extract(bzimage: bytes) -> tuple[bytes, str]:
    """The ELF vmlinux in ``bzimage`` and the name of the compression it was stored with."""
    data = payload(bzimage)
    found = next((f for f in _FORMATS if bytes(data[:len(f[0])]) == f[0]), None)
    if found is None:
        raise ExtractError(f"unknown kernel compression (payload starts {bytes(data[:6])!r})")
    _magic, name, decompress = found
    if decompress is None:
        raise ExtractError(f"the kernel is {name}-compressed, which Python's standard library "
                           "cannot decompress")
    # Linux's build appends the uncompressed size (gzip's own trailer ends with it too).
    (size,) = struct.unpack_from("<I", data, len(data) - 4)
    elf = decompress(data if name == "gzip" else data[:-4])
    if len(elf) != size:
        raise ExtractError(f"the {name} payload decompressed to {len(elf)} bytes, "
                           f"not the {size} its size field says")
    return elf[:elf_end(elf)], name


def write_sparse(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, leaving its zero-filled blocks as holes (a vmlinux pads its
    segments to 2 MiB alignment: about 40% of Debian's is zeros)."""
    zero = bytes(_SPARSE_BLOCK)
    view = memoryview(data)
    with open(path, "wb") as f:
        run = 0  # where the pending run of non-zero blocks starts
        for block in range(0, len(data), _SPARSE_BLOCK):
            if view[block:block + _SPARSE_BLOCK] == zero:
                f.write(view[run:block])
                f.seek(block + _SPARSE_BLOCK)
                run = block + _SPARSE_BLOCK
        f.write(view[run:])
        f.truncate(len(data))
