"""The ELF vmlinux taken out of a bzImage (kiln/vmm/guest/vmlinux.py), on bzImages made here:
each compression Linux's build uses that this module decompresses, LZ4's block format
sequence by sequence, and the inputs it must refuse.  tests/e2e/test_microvm.py checks the one
taken from Debian's kernel and boots it."""

from __future__ import annotations

import bz2
import gzip
import lzma
import os
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.vmm.guest.vmlinux import ExtractError, extract, write_sparse

SETUP_SECTORS = 1
PAYLOAD_OFFSET = 0x40
LZ4_MAGIC = struct.pack("<I", 0x184C2102)


def elf_executable(segment: bytes) -> bytes:
    """A minimal ELF64 x86-64 executable: its header, one PT_LOAD and the segment's bytes."""
    header = b"\x7fELF\x02\x01\x01" + bytes(9) + struct.pack(
        "<HHIQQQIHHHHHH", 2, 62, 1, 0x1000000, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    program = struct.pack("<IIQQQQQQ", 1, 5, 120, 0xFFFFFFFF81000000, 0x1000000,
                          len(segment), len(segment), 0x200000)
    return header + program + segment


def bzimage(payload: bytes) -> bytes:
    """A bzImage (boot protocol 2.15) whose compressed payload is ``payload``."""
    setup = bytearray((SETUP_SECTORS + 1) * 512)
    setup[0x1F1] = SETUP_SECTORS
    setup[0x202:0x208] = b"HdrS" + struct.pack("<H", 0x20F)
    setup[0x248:0x250] = struct.pack("<II", PAYLOAD_OFFSET, len(payload))
    return bytes(setup) + b"\x90" * PAYLOAD_OFFSET + payload + b"\0" * 64


def size_appended(compressed: bytes, size: int) -> bytes:
    """What Linux's build stores: the stream, then the uncompressed size (``size_append``)."""
    return compressed + struct.pack("<I", size)


def lz4_literals(data: bytes) -> bytes:
    """One LZ4 block holding ``data`` as a single literal run."""
    length = len(data)
    if length < 15:
        return bytes([length << 4]) + data
    rest = length - 15
    return b"\xf0" + b"\xff" * (rest // 255) + bytes([rest % 255]) + data


SEGMENT = b"kernel text " * 40
#: The vmlinux inside carries the decompressor's relocations after its ELF end: cut off.
VMLINUX = elf_executable(SEGMENT)
INSIDE = VMLINUX + b"relocations"

STDLIB: dict[str, Callable[[bytes], bytes]] = {
    "gzip": lambda data: gzip.compress(data),  # its trailer ends with the size already
    "xz": lambda data: size_appended(lzma.compress(data, check=lzma.CHECK_CRC32), len(data)),
    "lzma": lambda data: size_appended(lzma.compress(data, format=lzma.FORMAT_ALONE), len(data)),
    "bzip2": lambda data: size_appended(bz2.compress(data), len(data)),
}


@pytest.mark.parametrize("compression", sorted(STDLIB))
def test_standard_library_compressions(compression: str) -> None:
    assert extract(bzimage(STDLIB[compression](INSIDE))) == (VMLINUX, compression)


def test_lz4_legacy_frame_of_several_blocks() -> None:
    """Linux's ``lz4 -l``: a magic, then blocks of at most 8 MiB each preceded by its size."""
    first, second = INSIDE[:300], INSIDE[300:]
    blocks = b"".join(struct.pack("<I", len(b)) + b
                      for b in (lz4_literals(first), lz4_literals(second)))
    assert extract(bzimage(size_appended(LZ4_MAGIC + blocks, len(INSIDE)))) == (VMLINUX, "lz4")


def test_lz4_sequences_overlapping_and_long_matches() -> None:
    """Each kind of LZ4 sequence, decoded within one block of an ELF's bytes."""
    head = VMLINUX[:270]  # 270 literals: a length of 15 + 255 + 0, then
    block = b"\xf0\xff\x00" + head + struct.pack("<H", 200)  # a 4-byte match from 200 back
    block += b"\x0f" + struct.pack("<H", 3) + b"\x0b"  # 4 + 15 + 11 = 30 bytes from 3 back
    expected = head + head[70:74]
    expected += (expected[-3:] * 10)[:30]  # overlapping: it repeats the last 3 bytes
    tail = VMLINUX[len(expected):]
    block += lz4_literals(tail)  # the last sequence: literals only
    expected += tail
    stream = LZ4_MAGIC + struct.pack("<I", len(block)) + block
    assert extract(bzimage(size_appended(stream, len(expected)))) == (expected, "lz4")


@pytest.mark.parametrize(("image", "message"), [
    (b"MZ" + bytes(1024), "not a Linux x86 bzImage"),
    (bzimage(b"\x28\xb5\x2f\xfd" + bytes(40)), "zstd-compressed, which Python's standard"),
    (bzimage(size_appended(gzip.compress(b"not an ELF file at all" * 4), 88)), "no little-endian"),
    (bzimage(size_appended(gzip.compress(elf_executable(b"x")[:100]), 100)), "truncated"),
    (bzimage(size_appended(bz2.compress(INSIDE), len(INSIDE) + 1)), "not the "),
    (bzimage(size_appended(LZ4_MAGIC + struct.pack("<I", 500) + b"\x50abc", 99)),
     "truncated LZ4 block"),
    (bzimage(size_appended(LZ4_MAGIC + struct.pack("<I", 4) + b"\x00\x09\x00\x00", 9)),
     "reaches before its start"),
    (bzimage(size_appended(b"\x1f\x8b" + bytes(30), 10)), "corrupt payload"),
])
def test_what_it_refuses(image: bytes, message: str) -> None:
    with pytest.raises(ExtractError, match=message):
        extract(image)


def test_a_payload_outside_the_file_is_refused() -> None:
    image = bytearray(bzimage(gzip.compress(INSIDE)))
    image[0x24C:0x250] = struct.pack("<I", len(image))
    with pytest.raises(ExtractError, match="outside the file"):
        extract(bytes(image))


def test_write_sparse_leaves_zero_blocks_as_holes(tmp_path: Path) -> None:
    data = os.urandom(5000) + bytes(1 << 20) + os.urandom(100) + bytes(8192)
    path = tmp_path / "vmlinux"
    write_sparse(path, data)
    assert path.read_bytes() == data
    assert path.stat().st_blocks * 512 < 64 * 1024  # the 1 MiB of zeros takes no blocks
