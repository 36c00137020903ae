"""A small kdump-compressed writer, for tests: re-packs a real dump's pages.

Writes what makedumpfile writes for an x86_64/aarch64 host (64-bit
little-endian structs, header_version 6): disk_dump_header in block 0,
kdump_sub_header + the source's ELF notes from block 1, both bitmaps, one
page_desc_t per dumped page, then the page data compressed with one codec
(zlib, lzo, snappy, zstd) or stored raw when compression does not shrink
it. All-zero pages share one stored zero page, as makedumpfile does.
Optionally wraps the result in makedumpfile's flattened stream.

Field layout facts: makedumpfile diskdump_mod.h / makedumpfile.h.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cramjam
import lzallright

from kvmcore.errors import PageExcludedError
from kvmcore.formats.base import PhysicalMemory
from kvmcore.notes import NT_PRSTATUS, Note

FLAGS = {"zlib": 0x1, "lzo": 0x2, "snappy": 0x4, "zstd": 0x20}
INCOMPLETE = 0x8
HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")  # 464 bytes, LP64 layout
SUB_HEADER = struct.Struct("<QiiQQqQqQqQQQQ")  # 104 bytes, LP64 layout
PAGE_DESC = struct.Struct("<qIIQ")
FLAT_HEADER = struct.Struct(">16sqq")
FLAT_RECORD = struct.Struct(">qq")
FLAT_CHUNK = 1 << 20


def compressor(codec: str) -> Callable[[bytes], bytes]:
    if codec == "zlib":
        return lambda page: zlib.compress(page, 1)
    if codec == "lzo":
        lzo = lzallright.LZOCompressor()
        return lambda page: lzo.compress(page)
    if codec == "snappy":
        return lambda page: bytes(cramjam.snappy.compress_raw(page))
    if codec == "zstd":
        return lambda page: bytes(cramjam.zstd.compress(page, level=1))
    raise ValueError(f"unknown codec {codec!r}")


def pack_notes(notes: list[Note]) -> tuple[bytes, int | None, int]:
    """ELF note blob; also (offset, size) of the VMCOREINFO descriptor inside it."""
    out = bytearray()
    vmcoreinfo_at, vmcoreinfo_size = None, 0
    for n in notes:
        name = n.name.encode() + b"\0"
        out += struct.pack("<III", len(name), len(n.desc), n.type)
        out += name + bytes(-len(name) % 4)
        if n.name == "VMCOREINFO":
            vmcoreinfo_at, vmcoreinfo_size = len(out), len(n.desc)
        out += n.desc + bytes(-len(n.desc) % 4)
    return bytes(out), vmcoreinfo_at, vmcoreinfo_size


def _uts(uts: dict[str, str]) -> bytes:
    fields = ("sysname", "nodename", "release", "version", "machine", "domainname")
    return b"".join(uts.get(f, "").encode()[:64].ljust(65, b"\0") for f in fields)


def kdump_image(
    src: PhysicalMemory, codec: str, uts: dict[str, str], current_cpu: int = 0
) -> list[tuple[int, bytes]]:
    """The kdump file as (offset, bytes) pieces in write order."""
    bs = src.facts.page_size
    compress, flag = compressor(codec), FLAGS[codec]
    max_mapnr = max(r.end for r in src.ranges()) // bs
    half = -(-max_mapnr // 8)
    half_blocks = -(-half // bs)
    ram, dumped = bytearray(half_blocks * bs), bytearray(half_blocks * bs)
    pages: list[tuple[int, bytes | None]] = []  # (pfn, page; None = the shared zero page)
    zero = bytes(bs)
    for r in src.ranges():
        for pfn in range(r.start // bs, r.end // bs):
            ram[pfn >> 3] |= 1 << (pfn & 7)
            try:
                page = src.read_phys(pfn * bs, bs)
            except PageExcludedError:
                continue
            dumped[pfn >> 3] |= 1 << (pfn & 7)
            pages.append((pfn, None if page == zero else page))

    notes_blob, vmci_at, vmci_size = pack_notes(src.notes)
    sub_size = SUB_HEADER.size + len(notes_blob)
    sub_blocks = -(-sub_size // bs)
    bitmap_blocks = 2 * half_blocks
    desc_base = (1 + sub_blocks + bitmap_blocks) * bs
    data_off = desc_base + len(pages) * PAGE_DESC.size

    zero_desc = PAGE_DESC.pack(data_off, bs, 0, 0)
    descs, data = bytearray(), [zero]
    pos = data_off + bs
    for _pfn, page in pages:
        if page is None:
            descs += zero_desc
            continue
        packed = compress(page)
        if len(packed) < bs:
            descs += PAGE_DESC.pack(pos, len(packed), flag, 0)
        else:
            packed = page
            descs += PAGE_DESC.pack(pos, bs, 0, 0)
        data.append(packed)
        pos += len(packed)

    info = src.vmcoreinfo
    phys_base = (info.number("phys_base") or 0) if info else 0
    nr_cpus = sum(1 for n in src.notes if n.type == NT_PRSTATUS and n.name == "CORE")
    crashtime = (info.crashtime or 0) if info else 0
    note_off = bs + SUB_HEADER.size

    def header(status: int) -> bytes:
        return HEADER.pack(
            b"KDUMP   ",
            6,
            _uts(uts),
            crashtime,
            0,
            status,
            bs,
            sub_blocks,
            bitmap_blocks,
            min(max_mapnr, 0xFFFFFFFF),
            len(pages),
            0,
            0,
            current_cpu,
            nr_cpus,
        )

    sub = SUB_HEADER.pack(
        phys_base & (2**64 - 1),
        0,
        0,
        0,
        0,
        note_off + vmci_at if vmci_at is not None else 0,
        vmci_size,
        note_off,
        len(notes_blob),
        0,
        0,
        0,
        0,
        max_mapnr,
    )
    return [
        (0, header(flag | INCOMPLETE)),  # rewritten complete at the end, as a dumper might
        (bs, sub + notes_blob),
        ((1 + sub_blocks) * bs, bytes(ram) + bytes(dumped)),
        (desc_base, bytes(descs)),
        (data_off, b"".join(data)),
        (0, header(flag)),
    ]


def write_kdump(
    src: PhysicalMemory,
    out: Path,
    codec: str = "zlib",
    *,
    uts: dict[str, str],
    flattened: bool = False,
    current_cpu: int = 0,
) -> Path:
    """Write `src`'s pages as a kdump-compressed file (or flattened stream) at `out`."""
    pieces = kdump_image(src, codec, uts, current_cpu)
    with open(out, "wb") as f:
        if not flattened:
            for off, blob in pieces:
                f.seek(off)
                f.write(blob)
            return out
        f.write(FLAT_HEADER.pack(b"makedumpfile", 1, 1).ljust(4096, b"\0"))
        for off, blob in pieces:
            for i in range(0, len(blob), FLAT_CHUNK):
                chunk = blob[i : i + FLAT_CHUNK]
                f.write(FLAT_RECORD.pack(off + i, len(chunk)))
                f.write(chunk)
        f.write(FLAT_RECORD.pack(-1, -1))  # END_FLAG_FLAT_HEADER in both fields
    return out
