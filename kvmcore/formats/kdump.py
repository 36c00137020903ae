"""Linux kdump-compressed dumps ("diskdump"): makedumpfile -c/-l/-p/-z, QEMU kdump-*.

Layout, in blocks of `block_size` (the dumped kernel's page size):

    block 0          struct disk_dump_header (signature "KDUMP   " or "DISKDUMP")
    block 1..        struct kdump_sub_header, then the ELF notes (sub_hdr_size blocks)
    then             bitmap 1 (pfns that are RAM) and bitmap 2 (pfns dumped),
                     bitmap_blocks blocks for both, one half each
    then             page_desc_t per set bit of bitmap 2, in pfn order
    then             page data, each page raw or compressed as its descriptor says

The C structs are not packed and follow the ABI of the dumping host, so the
header and sub-header have 64-bit and 32-bit layouts (and two 32-bit
sub-header layouts: i386 aligns 64-bit fields to 4, ARM to 8). Field facts:
makedumpfile diskdump_mod.h, QEMU include/sysemu/dump.h.

A page's descriptor index is its rank among the dumped pfns; a prefix count
per bitmap chunk makes that O(chunk) instead of a scan from pfn 0.
"""

from __future__ import annotations

import bisect
import os
import re
import struct
import zlib
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..errors import (
    DecompressionError,
    DumpFormatError,
    NotInDumpError,
    TruncatedDumpError,
    UnsupportedError,
)
from ..fileio import ByteSource, DumpFile
from ..notes import ByteOrder, Note, parse_notes
from . import register_format
from .base import PhysicalMemory, PhysRange, excluded

SIGNATURES = (b"KDUMP   ", b"DISKDUMP")

# page_desc_t.flags / disk_dump_header.status bits
COMPRESSED_ZLIB = 0x1
COMPRESSED_LZO = 0x2
COMPRESSED_SNAPPY = 0x4
INCOMPLETE = 0x8
EXCLUDED_VMEMMAP = 0x10
COMPRESSED_ZSTD = 0x20
KNOWN_DESC_FLAGS = 0x3F
CODEC_NAMES = {
    COMPRESSED_ZLIB: "zlib",
    COMPRESSED_LZO: "lzo",
    COMPRESSED_SNAPPY: "snappy",
    COMPRESSED_ZSTD: "zstd",
}

UTS_LEN = 65
UTS_FIELDS = ("sysname", "nodename", "release", "version", "machine", "domainname")
# after signature[8], header_version, utsname[6*65]: timeval then 10 x 32-bit
_HDR_TAIL = {8: (408, "qq"), 4: (404, "ii")}
_HDR_INTS = "IiiIIIIIIi"  # status block_size sub_hdr_size bitmap_blocks max_mapnr
#                           total_ram_blocks device_blocks written_blocks current_cpu nr_cpus

# kdump_sub_header field offsets per host ABI: (name, offset, size)
_SUB_FIELDS = {
    "lp64": (
        ("phys_base", 0, 8),
        ("dump_level", 8, 4),
        ("split", 12, 4),
        ("start_pfn", 16, 8),
        ("end_pfn", 24, 8),
        ("offset_vmcoreinfo", 32, 8),
        ("size_vmcoreinfo", 40, 8),
        ("offset_note", 48, 8),
        ("size_note", 56, 8),
        ("offset_eraseinfo", 64, 8),
        ("size_eraseinfo", 72, 8),
        ("start_pfn_64", 80, 8),
        ("end_pfn_64", 88, 8),
        ("max_mapnr_64", 96, 8),
    ),
    "ilp32_pack4": (
        ("phys_base", 0, 4),
        ("dump_level", 4, 4),
        ("split", 8, 4),
        ("start_pfn", 12, 4),
        ("end_pfn", 16, 4),
        ("offset_vmcoreinfo", 20, 8),
        ("size_vmcoreinfo", 28, 4),
        ("offset_note", 32, 8),
        ("size_note", 40, 4),
        ("offset_eraseinfo", 44, 8),
        ("size_eraseinfo", 52, 4),
        ("start_pfn_64", 56, 8),
        ("end_pfn_64", 64, 8),
        ("max_mapnr_64", 72, 8),
    ),
    "ilp32_pad8": (
        ("phys_base", 0, 4),
        ("dump_level", 4, 4),
        ("split", 8, 4),
        ("start_pfn", 12, 4),
        ("end_pfn", 16, 4),
        ("offset_vmcoreinfo", 24, 8),
        ("size_vmcoreinfo", 32, 4),
        ("offset_note", 40, 8),
        ("size_note", 48, 4),
        ("offset_eraseinfo", 56, 8),
        ("size_eraseinfo", 64, 4),
        ("start_pfn_64", 72, 8),
        ("end_pfn_64", 80, 8),
        ("max_mapnr_64", 88, 8),
    ),
}
# header_version that introduced each sub-header field (phys_base: always)
_SUB_SINCE = {
    "dump_level": 1,
    "split": 2,
    "start_pfn": 2,
    "end_pfn": 2,
    "offset_vmcoreinfo": 3,
    "size_vmcoreinfo": 3,
    "offset_note": 4,
    "size_note": 4,
    "offset_eraseinfo": 5,
    "size_eraseinfo": 5,
    "start_pfn_64": 6,
    "end_pfn_64": 6,
    "max_mapnr_64": 6,
}
_SIGNED = {"dump_level", "split", "offset_vmcoreinfo", "offset_note", "offset_eraseinfo"}

PAGE_DESC_SIZE = 24  # off_t offset; u32 size; u32 flags; u64 page_flags (all ABIs)
RANK_CHUNK_BITS = 4096  # bits per rank-index chunk (512 bitmap bytes)
PAGE_CACHE_PAGES = 512
MAX_NOTES_BYTES = 64 << 20
MAX_BLOCK_SIZE = 1 << 20


#: utsname.machine -> (normalized arch, word size, byte order)
def _machine(name: str) -> tuple[str | None, int | None, ByteOrder | None]:
    n = name.strip().lower()
    if n in ("x86_64", "amd64"):
        return "x86_64", 8, "little"
    if n in ("aarch64", "arm64"):
        return "aarch64", 8, "little"
    if re.fullmatch(r"i[3-6]86", n) or n == "x86":
        return "i386", 4, "little"
    if n in ("ppc64le",):
        return "ppc64le", 8, "little"
    if n in ("ppc64",):
        return "ppc64", 8, "big"
    if n in ("ppc", "powerpc"):
        return "ppc", 4, "big"
    if n == "s390x":
        return "s390x", 8, "big"
    if n == "s390":
        return "s390", 4, "big"
    if n in ("riscv64",):
        return "riscv64", 8, "little"
    if n.startswith("arm"):
        return "arm", 4, "little"
    if n.startswith("mips64"):
        return "mips64", 8, None
    if n.startswith("mips"):
        return "mips", 4, None
    if n in ("loongarch64", "sparc64", "ia64", "alpha"):
        return n, 8, "big" if n == "sparc64" else "little"
    return None, None, None


@dataclass(frozen=True)
class PageDesc:
    """One page_desc_t: where a dumped page's bytes are and how they are stored."""

    offset: int
    size: int
    flags: int
    page_flags: int


def _codec(flags: int) -> tuple[str, Callable[[bytes, int], bytes]]:
    """The codec of a descriptor's flags (name, inflate(data, page size)),
    found once per distinct flags."""
    codec = _CODECS.get(flags)
    if codec is None:
        codec = _CODECS[flags] = _find_codec(flags)
    return codec


_CODECS: dict[int, tuple[str, Callable[[bytes, int], bytes]]] = {}


def _find_codec(flags: int) -> tuple[str, Callable[[bytes, int], bytes]]:
    if flags & COMPRESSED_ZLIB:
        return "zlib", lambda data, n: zlib.decompress(data, zlib.MAX_WBITS, n)
    if flags & COMPRESSED_LZO:
        import lzallright

        return "lzo", lambda data, n: lzallright.LZOCompressor.decompress(data, output_size_hint=n)
    if flags & COMPRESSED_SNAPPY:
        import cramjam

        return "snappy", lambda data, n: bytes(cramjam.snappy.decompress_raw(data))
    if flags & COMPRESSED_ZSTD:
        import cramjam

        return "zstd", lambda data, n: bytes(cramjam.zstd.decompress(data))
    raise UnsupportedError(f"unknown page compression flags {flags:#x}")


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


class _Header:
    """disk_dump_header + kdump_sub_header, in whichever layout fits."""

    def __init__(self, source: ByteSource) -> None:
        path = source.path
        if source.size < 512:
            raise TruncatedDumpError(
                f"kdump header needs at least 512 bytes, the file has {source.size}", path
            )
        raw = source.pread(0, min(source.size, 4096))
        self.signature = raw[:8]
        uts = raw[12 : 12 + 6 * UTS_LEN]
        self.utsname = {
            f: _cstr(uts[i * UTS_LEN : (i + 1) * UTS_LEN]) for i, f in enumerate(UTS_FIELDS)
        }
        machine, word, order = _machine(self.utsname["machine"])
        self.machine = machine
        # candidate (word size, byte order) layouts, the utsname's guess first
        both: list[ByteOrder] = ["little", "big"]
        orders = [order] if order else both
        words = [word] if word else [8, 4]
        candidates = [(w, o) for w in words for o in orders]
        candidates += [(w, o) for w in (8, 4) for o in both if (w, o) not in candidates]
        for w, o in candidates:
            fields = self._try(raw, w, o)
            if fields is not None:
                break
        else:
            bs = int.from_bytes(raw[428:432], "little")
            raise DumpFormatError(
                f"corrupt kdump header: no plausible block_size/bitmap fields "
                f"(block_size reads {bs})",
                path,
            )
        self.word_size, self.byteorder = w, o
        self.e = "<" if o == "little" else ">"
        self.header_version = int.from_bytes(raw[8:12], o, signed=True)
        (
            self.timestamp_sec,
            self.timestamp_usec,
            self.status,
            self.block_size,
            self.sub_hdr_size,
            self.bitmap_blocks,
            self.max_mapnr_32,
            self.total_ram_blocks,
            self.device_blocks,
            self.written_blocks,
            self.current_cpu,
            self.nr_cpus,
        ) = fields
        self.sub = self._read_sub(source)
        self.max_mapnr = self.sub.get("max_mapnr_64") or self.max_mapnr_32

    @staticmethod
    def _try(raw: bytes, word: int, order: str) -> tuple | None:
        off, tv = _HDR_TAIL[word]
        e = "<" if order == "little" else ">"
        fmt = e + tv + _HDR_INTS
        if off + struct.calcsize(fmt) > len(raw):
            return None
        fields = struct.unpack_from(fmt, raw, off)
        bs, sub_blocks, bitmap_blocks = fields[3], fields[4], fields[5]
        if bs < 512 or bs > MAX_BLOCK_SIZE or bs & (bs - 1):
            return None
        if sub_blocks < 0 or sub_blocks > 1 << 16 or bitmap_blocks == 0:
            return None
        return fields

    def _read_sub(self, source: ByteSource) -> dict[str, int]:
        if self.header_version < 0 or self.header_version > 100:
            raise DumpFormatError(
                f"implausible kdump header_version {self.header_version}", source.path
            )
        if self.signature == b"DISKDUMP" and self.header_version < 1:
            return {}  # old diskdump: arch-specific sub-header without kdump fields
        if self.word_size == 8:
            abi = "lp64"
        else:
            abi = "ilp32_pad8" if self.machine == "arm" else "ilp32_pack4"
        layout = _SUB_FIELDS[abi]
        size = max(o + n for _, o, n in layout)
        if self.block_size + size > source.size:
            raise TruncatedDumpError(
                f"kdump sub-header at {self.block_size:#x} lies past the end of the file",
                source.path,
            )
        raw = source.pread(self.block_size, size)
        out: dict[str, int] = {}
        for name, off, n in layout:
            if self.header_version < _SUB_SINCE.get(name, 0):
                continue
            out[name] = int.from_bytes(raw[off : off + n], self.byteorder, signed=name in _SIGNED)
        return out


class _Bitmap:
    """A pfn bitmap (bit pfn%8 of byte pfn//8) with a rank index per chunk."""

    def __init__(self, data: bytes, nbits: int) -> None:
        self.data = data
        self.nbits = nbits
        chunk = RANK_CHUNK_BITS // 8
        prefix = [0]
        total = 0
        for i in range(0, len(data), chunk):
            total += int.from_bytes(data[i : i + chunk], "little").bit_count()
            prefix.append(total)
        self.prefix = prefix
        self.count = total

    def test(self, pfn: int) -> bool:
        return 0 <= pfn < self.nbits and bool(self.data[pfn >> 3] >> (pfn & 7) & 1)

    def rank(self, pfn: int) -> int:
        """Number of set bits below `pfn`."""
        chunk = pfn // RANK_CHUNK_BITS
        base = chunk * (RANK_CHUNK_BITS // 8)
        byte = pfn >> 3
        n = self.prefix[chunk] + int.from_bytes(self.data[base:byte], "little").bit_count()
        return n + (self.data[byte] & ((1 << (pfn & 7)) - 1)).bit_count()

    def runs(self) -> list[tuple[int, int]]:
        """[start, end) pfn runs of set bits."""
        out: list[tuple[int, int]] = []
        for m in re.finditer(rb"[^\x00]+", self.data):
            base = m.start() * 8
            value = int.from_bytes(m.group(), "little")
            pos = 0
            while value:
                low = (value & -value).bit_length() - 1  # first set bit
                value >>= low
                ones = (~value & (value + 1)).bit_length() - 1  # length of the run
                start = base + pos + low
                end = min(start + ones, self.nbits)
                if start < end:
                    if out and out[-1][1] == start:
                        out[-1] = (out[-1][0], end)
                    else:
                        out.append((start, end))
                value >>= ones
                pos += low + ones
        return out


@register_format(priority=20)
class KdumpDump(PhysicalMemory):
    """A kdump-compressed (diskdump) file, or one part of a split dump."""

    format_name = "kdump"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return source.size >= 8 and source.pread(0, 8) in SIGNATURES

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source)
        path = source.path
        if source.pread(0, 8) not in SIGNATURES:
            raise DumpFormatError("no KDUMP/DISKDUMP signature", path)
        h = _Header(source)
        self.header = h
        bs = self.block_size = h.block_size
        if h.max_mapnr <= 0:
            raise DumpFormatError(f"kdump header gives max_mapnr {h.max_mapnr}", path)
        self._read_bitmaps(source)
        self.split = bool(h.sub.get("split"))
        if self.split:
            self.start_pfn = h.sub.get("start_pfn_64") or h.sub.get("start_pfn", 0)
            self.end_pfn = h.sub.get("end_pfn_64") or h.sub.get("end_pfn", 0)
            if not 0 <= self.start_pfn <= self.end_pfn <= h.max_mapnr:  # empty parts happen
                raise DumpFormatError(
                    f"split dump part claims pfns [{self.start_pfn:#x}, {self.end_pfn:#x}) "
                    f"outside max_mapnr {h.max_mapnr:#x}",
                    path,
                )
        else:
            self.start_pfn, self.end_pfn = 0, h.max_mapnr
        self._rank_base = self.dumped.rank(self.start_pfn) if self.start_pfn else 0
        ndesc = (
            self.dumped.rank(self.end_pfn)
            if self.end_pfn < self.dumped.nbits
            else self.dumped.count
        ) - self._rank_base
        self.desc_base = (1 + h.sub_hdr_size + h.bitmap_blocks) * bs
        desc_end = self.desc_base + ndesc * PAGE_DESC_SIZE
        if desc_end > source.size:
            raise TruncatedDumpError(
                f"bitmap 2 claims {ndesc} dumped pages, whose descriptors "
                f"({self.desc_base:#x}..{desc_end:#x}) run past the end of the file "
                f"({source.size:#x} bytes)",
                path,
            )
        self.dumped_pages = ndesc
        self.desc_end = desc_end
        self._check_descriptor_table(source, ndesc)
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._desc_blocks: dict[int, bytes] = {}  # the descriptor table by 4 KiB block
        self._desc = struct.Struct(h.e + "qIIQ")  # one page_desc_t
        self._read_notes(source)
        self._fill_facts()
        self._check_length(source, ndesc)

    def _plausible_desc(self, off: int, size: int, flags: int) -> bool:
        return (
            off >= self.desc_end
            and 0 < size <= self.block_size
            and off + size <= self.source.size
            and not flags & ~KNOWN_DESC_FLAGS
        )

    def _check_descriptor_table(self, source: ByteSource, ndesc: int) -> None:
        """Bitmap 2 against the descriptor table, in a bounded look.

        Both writers (makedumpfile, QEMU) put the page data right after the
        descriptor table: a shared zero page at the table's end (referenced or
        not), then the pages in pfn order. The table holds one descriptor per
        dumped bit, so its end is known from the bitmap alone; a bit set or
        cleared by corruption moves that end, and every page after the bit
        would be read through its neighbour's descriptor. So: no descriptor
        may point below the table's end, and the bytes right after the end
        must not be one more descriptor (the bitmap has fewer bits than the
        table has entries). Reads the first and last 4096 descriptors and one
        after them."""
        if ndesc <= 0:
            return
        e, path, end = self.header.e + "qIIQ", source.path, self.desc_end
        k = min(ndesc, 4096)
        sample = list(struct.iter_unpack(e, source.pread(self.desc_base, k * PAGE_DESC_SIZE)))
        if ndesc > k:
            sample += struct.iter_unpack(
                e, source.pread(end - k * PAGE_DESC_SIZE, k * PAGE_DESC_SIZE)
            )
        offsets = [off for off, size, _f, _p in sample if off > 0]  # 0: not written (incomplete)
        if not offsets:
            return
        low = min(offsets)
        if low < end:
            raise DumpFormatError(
                f"bitmap 2 disagrees with the page descriptor table: its {ndesc} dumped pages "
                f"need descriptors up to {end:#x}, but page data starts at {low:#x} "
                f"({(end - low) / PAGE_DESC_SIZE:g} descriptors fewer): corrupt bitmap",
                path,
            )
        if low > end and end + PAGE_DESC_SIZE <= source.size:
            nxt = struct.unpack(e, source.pread(end, PAGE_DESC_SIZE))
            if self._plausible_desc(*nxt[:3]):
                raise DumpFormatError(
                    f"bitmap 2 disagrees with the page descriptor table: its {ndesc} dumped "
                    f"pages end the table at {end:#x}, but more descriptors follow (page data "
                    f"starts at {low:#x}): corrupt bitmap",
                    path,
                )

    def _check_length(self, source: ByteSource, ndesc: int) -> None:
        """Page data is written in pfn order (zero pages share one block near the
        start), so the last descriptors end the file; a shorter file was cut (an
        interrupted copy, a full disk). Reads the last 4096 descriptors at most."""
        tail = min(ndesc, 4096)
        if tail <= 0:
            return
        raw = source.pread(self.desc_base + (ndesc - tail) * PAGE_DESC_SIZE, tail * PAGE_DESC_SIZE)
        end = max(
            (
                off + size
                for off, size, _f, _p in struct.iter_unpack(self.header.e + "qIIQ", raw)
                if off > 0 and 0 < size <= self.block_size
            ),
            default=0,
        )
        if end:
            self.metadata["expected_size"] = end
            self.metadata["truncated"] = end > source.size

    # -- structure ---------------------------------------------------------
    def _read_bitmaps(self, source: ByteSource) -> None:
        h, bs, path = self.header, self.header.block_size, source.path
        start = (1 + h.sub_hdr_size) * bs
        length = h.bitmap_blocks * bs
        if start + length > source.size:
            raise TruncatedDumpError(
                f"bitmaps ({h.bitmap_blocks} blocks at {start:#x}) run past the end of the "
                f"file ({source.size:#x} bytes)",
                path,
            )
        stored = getattr(source, "stored_size", source.size)
        if length > stored:  # a flattened file's holes would read as gigabytes of zeros
            raise DumpFormatError(
                f"bitmaps ({h.bitmap_blocks} blocks, {length} bytes) are larger than all the "
                f"data the file holds ({stored} bytes): corrupt header",
                path,
            )
        data = source.pread(start, length)
        half = length // 2
        if h.max_mapnr <= half * 8:
            first, second = data[:half], data[half:]
        elif h.max_mapnr <= length * 8:
            first = second = data  # old diskdump: one bitmap serves both
        else:
            raise DumpFormatError(
                f"bitmap of {h.bitmap_blocks} blocks covers {length * 8} pfns but max_mapnr "
                f"is {h.max_mapnr}",
                path,
            )
        nbits = h.max_mapnr
        self.ram = _Bitmap(first[: (nbits + 7) // 8], nbits)
        self.dumped = _Bitmap(second[: (nbits + 7) // 8], nbits)
        self.single_bitmap = first is second

    def _read_notes(self, source: ByteSource) -> None:
        sub, path = self.header.sub, source.path
        off, size = sub.get("offset_note", 0), sub.get("size_note", 0)
        if off and size:
            if size > MAX_NOTES_BYTES or off < 0 or off + size > source.size:
                raise TruncatedDumpError(
                    f"ELF notes at {off:#x}+{size:#x} lie past the end of the file", path
                )
            self.notes = parse_notes(source.pread(off, size), self.header.byteorder)
        if "offset_note" not in sub:
            where = (
                f"the kdump header (version {self.header.header_version}) has no ELF notes field"
            )
        elif not (off and size):
            where = f"the kdump sub-header gives no ELF notes (offset_note {off}, size_note {size})"
        else:
            where = f"the kdump ELF notes ({size} bytes at {off:#x}) hold no NT_PRSTATUS"
        if not self.prstatus_notes():  # the report must say so: see PhysicalMemory.notes_problem
            self.metadata["notes_problem"] = f"CPU registers missing: {where}"
        voff, vsize = sub.get("offset_vmcoreinfo", 0), sub.get("size_vmcoreinfo", 0)
        if voff and vsize:
            if vsize > MAX_NOTES_BYTES or voff < 0 or voff + vsize > source.size:
                raise TruncatedDumpError(
                    f"VMCOREINFO at {voff:#x}+{vsize:#x} lies past the end of the file", path
                )
            raw = source.pread(voff, vsize)
            self.metadata["vmcoreinfo_raw"] = raw
            if not any(n.name == "VMCOREINFO" for n in self.notes):
                self.notes.append(Note("VMCOREINFO", 0, raw))

    def _fill_facts(self) -> None:
        h, f = self.header, self.facts
        # QEMU writes utsname.machine "Unknown" for some targets (aarch64): then the
        # arch backends' probes decide from VMCOREINFO and the notes
        f.machine = h.machine
        self.metadata["machine_source"] = "utsname" if h.machine else "unknown"
        f.os = "linux"
        f.word_size = h.word_size
        f.byteorder = h.byteorder
        f.kind = "full"
        # block_size is the dumper's page size: makedumpfile uses the kernel's, but QEMU
        # uses its own target page (64 KiB for aarch64 guests running 4 KiB kernels)
        info = self.vmcoreinfo
        f.page_size = (info.page_size if info and info.page_size else None) or h.block_size
        codecs = {name for bit, name in CODEC_NAMES.items() if h.status & bit}
        self.metadata.update(
            {
                "signature": h.signature.decode("latin-1").strip(),
                "header_version": h.header_version,
                "utsname": dict(h.utsname),
                "timestamp": h.timestamp_sec,
                "status": h.status,
                "incomplete": bool(h.status & INCOMPLETE),
                "block_size": h.block_size,
                "max_mapnr": h.max_mapnr,
                "nr_cpus": h.nr_cpus,
                "current_cpu": h.current_cpu,
                "phys_base": h.sub.get("phys_base"),
                "dump_level": h.sub.get("dump_level"),
                "compression": sorted(codecs),
                "compressions_seen": sorted(codecs | self._sample_codecs()),
                "dumped_pages": self.dumped_pages,
                "ram_pages": self.ram.count,
                "split": (
                    {"start_pfn": self.start_pfn, "end_pfn": self.end_pfn} if self.split else None
                ),
                "eraseinfo": (
                    (h.sub["offset_eraseinfo"], h.sub["size_eraseinfo"])
                    if h.sub.get("size_eraseinfo")
                    else None
                ),
            }
        )

    def _sample_codecs(self, limit: int = 4096) -> set[str]:
        """Codecs named by the first descriptors (a bounded look, not a scan)."""
        n = min(self.dumped_pages, limit)
        raw = self.source.pread(self.desc_base, n * PAGE_DESC_SIZE) if n else b""
        seen = set()
        for i in range(n):
            flags = int.from_bytes(raw[i * 24 + 12 : i * 24 + 16], self.header.byteorder)
            seen |= {name for bit, name in CODEC_NAMES.items() if flags & bit}
        return seen

    # -- pages -------------------------------------------------------------
    def has_page(self, pfn: int) -> bool:
        """True when this file holds pfn's data (within its split range)."""
        return self.start_pfn <= pfn < self.end_pfn and self.dumped.test(pfn)

    def page_descriptor(self, pfn: int) -> PageDesc:
        if not self.has_page(pfn):
            raise NotInDumpError(
                f"pfn {pfn:#x} has no page descriptor in this file",
                pfn * self.block_size,
                self.path,
            )
        return PageDesc(*self._checked(pfn, *self._raw_descs(pfn, 1)[0]))

    def _raw_descs(self, pfn: int, count: int) -> list[tuple[int, int, int, int]]:
        """The page_desc_t of `count` pages from `pfn`, all dumped (the caller
        checked): their descriptors are consecutive in the table, one read."""
        index = self.dumped.rank(pfn) - self._rank_base
        start = self.desc_base + index * PAGE_DESC_SIZE
        end = start + count * PAGE_DESC_SIZE
        block = start & ~0xFFF
        if end <= block + 0x1000:  # within one 4 KiB block of the table: read it once
            data = self._desc_blocks.get(block)
            if data is None:
                data = self.source.pread(block, min(0x1000, self.source.size - block))
                if len(self._desc_blocks) >= 4096:
                    self._desc_blocks.clear()
                self._desc_blocks[block] = data
            if end - block <= len(data):
                if count == 1:
                    return [self._desc.unpack_from(data, start - block)]
                return list(self._desc.iter_unpack(data[start - block : end - block]))
        return list(self._desc.iter_unpack(self.source.pread(start, end - start)))

    def _checked(
        self, pfn: int, off: int, size: int, flags: int, page_flags: int
    ) -> tuple[int, int, int, int]:
        """A descriptor whose page data lies where page data can be."""
        if off <= 0 or size == 0 or size > self.block_size:
            raise DumpFormatError(
                f"bad page descriptor for pfn {pfn:#x}: {size} bytes at offset {off:#x}", self.path
            )
        if off < self.desc_end:
            raise DumpFormatError(
                f"bad page descriptor for pfn {pfn:#x}: its data at {off:#x} lies inside the "
                f"descriptor table (which ends at {self.desc_end:#x}): corrupt bitmap or table",
                self.path,
            )
        if off + size > self.source.size:
            raise TruncatedDumpError(
                f"pfn {pfn:#x}: page data at {off:#x}+{size:#x} lies past the end of the file "
                f"({self.source.size:#x} bytes): the dump is truncated",
                self.path,
            )
        return off, size, flags, page_flags

    def read_page(self, pfn: int) -> bytes:
        """The whole page `pfn`, decompressed; raises if not dumped."""
        page = self._cache.get(pfn)
        if page is not None:
            self._cache.move_to_end(pfn)
            return page
        if not self.has_page(pfn):
            raise self._absent(pfn)
        return self._inflate(pfn, *self._raw_descs(pfn, 1)[0])

    def _read_run(self, pfn: int, count: int) -> list[bytes]:
        """Pages pfn..pfn+count-1 in order, as read_page would give them one by
        one (the same error at the same page), with one descriptor read per
        run of dumped pages not in the cache (a 64 KiB read is 16 pages)."""
        out: list[bytes] = []
        cache, end = self._cache, pfn + count
        while pfn < end:
            page = cache.get(pfn)
            if page is not None:
                cache.move_to_end(pfn)
                out.append(page)
                pfn += 1
                continue
            if not self.has_page(pfn):
                raise self._absent(pfn)
            stop = pfn + 1
            while stop < end and stop not in cache and self.has_page(stop):
                stop += 1
            out += self._inflate_run(pfn, stop - pfn)
            pfn = stop
        return out

    def _inflate_run(self, pfn: int, count: int) -> list[bytes]:
        """Pages pfn..pfn+count-1, all dumped in this part and none cached (the
        caller checked), decompressed and cached: one descriptor read, and one
        file read for their data when it lies together (makedumpfile and QEMU
        write the pages of a run back to back)."""
        descs = [self._checked(pfn + i, *d) for i, d in enumerate(self._raw_descs(pfn, count))]
        pread, decode = self.source.pread, self._decode
        if count > 1:
            lo = min(d[0] for d in descs)
            hi = max(d[0] + d[1] for d in descs)
            if hi - lo <= count * self.block_size:  # together: one read
                blob = pread(lo, hi - lo)
                return [
                    decode(pfn + i, off, size, flags, blob[off - lo : off - lo + size])
                    for i, (off, size, flags, _) in enumerate(descs)
                ]
        return [
            decode(pfn + i, off, size, flags, pread(off, size))
            for i, (off, size, flags, _) in enumerate(descs)
        ]

    def _inflate(self, pfn: int, off: int, size: int, flags: int, page_flags: int) -> bytes:
        """Page `pfn`'s bytes from its descriptor, decompressed, and cached."""
        self._checked(pfn, off, size, flags, page_flags)
        return self._decode(pfn, off, size, flags, self.source.pread(off, size))

    def _decode(self, pfn: int, off: int, size: int, flags: int, data: bytes) -> bytes:
        """Page `pfn` from the `size` bytes its checked descriptor stores at
        `off` (`data`), decompressed, and cached."""
        bs = self.block_size
        if size == bs:
            page = data  # stored raw
        elif not flags & (COMPRESSED_ZLIB | COMPRESSED_LZO | COMPRESSED_SNAPPY | COMPRESSED_ZSTD):
            raise DumpFormatError(
                f"pfn {pfn:#x}: {size}-byte page stored uncompressed (flags "
                f"{flags:#x}) but pages are {bs} bytes",
                self.path,
            )
        else:
            try:
                name, inflate = _codec(flags)
            except UnsupportedError as exc:
                raise UnsupportedError(f"pfn {pfn:#x}: {exc.message}", self.path) from None
            try:
                page = bytes(inflate(data, bs))
            except Exception as exc:  # each codec library raises its own error type
                raise DecompressionError(
                    f"pfn {pfn:#x}: {name} page ({size} bytes at {off:#x}) "
                    f"failed to inflate: {exc}",
                    self.path,
                ) from None
            if len(page) != bs:
                raise DecompressionError(
                    f"pfn {pfn:#x}: {name} page inflated to {len(page)} bytes, expected {bs}",
                    self.path,
                )
        self._cache[pfn] = page
        if len(self._cache) > PAGE_CACHE_PAGES:
            self._cache.popitem(last=False)
        return page

    def _absent(self, pfn: int) -> NotInDumpError:
        pa = pfn * self.block_size
        if self.ram.test(pfn) and not self.dumped.test(pfn):
            return excluded(pa, self.path)
        if self.dumped.test(pfn):
            return NotInDumpError(
                f"physical address {pa:#x} is in another part of this split dump "
                f"(this part holds pfns {self.start_pfn:#x}-{self.end_pfn:#x})",
                pa,
                self.path,
            )
        return NotInDumpError(f"physical address {pa:#x} is not in the dump", pa, self.path)

    # -- PhysicalMemory ----------------------------------------------------
    def ranges(self) -> list[PhysRange]:
        bs = self.block_size
        return [PhysRange(s * bs, e * bs) for s, e in self.ram.runs()]

    def is_excluded(self, pa: int) -> bool:
        pfn = pa // self.block_size
        return self.ram.test(pfn) and not self.dumped.test(pfn)

    def read_phys(self, pa: int, length: int) -> bytes:
        if length <= 0:
            return b""
        bs = self.block_size
        pfn, off = divmod(pa, bs)
        if off + length <= bs:
            return self.read_page(pfn)[off : off + length]
        pages = self._read_run(pfn, (off + length + bs - 1) // bs)
        return b"".join(pages)[off : off + length]

    def read_phys_filled(self, pa: int, length: int, filtered: list[tuple[int, int]]) -> bytes:
        """read_phys, with pages makedumpfile filtered out (in the RAM bitmap,
        not dumped) read as zeros and each such span appended to `filtered`
        as (pa, length), without an exception per page. A run of dumped pages
        is inflated together (_inflate_run), a run of filtered ones is one span."""
        bs, cache, ram, dumped = self.block_size, self._cache, self.ram, self.dumped
        out: list[bytes] = []
        while length > 0:
            pfn, off = divmod(pa, bs)
            last = (pa + length - 1) // bs  # the read's last page
            page = cache.get(pfn)
            pages: list[bytes]
            if page is not None:
                cache.move_to_end(pfn)
                pages = [page]
            elif self.start_pfn <= pfn < self.end_pfn and dumped.test(pfn):
                stop = pfn + 1
                end = min(last + 1, self.end_pfn)
                while stop < end and stop not in cache and dumped.test(stop):
                    stop += 1
                pages = self._inflate_run(pfn, stop - pfn)
            elif ram.test(pfn) and not dumped.test(pfn):
                stop = pfn + 1
                while stop <= last and ram.test(stop) and not dumped.test(stop):
                    stop += 1
                n = min(length, stop * bs - pa)
                if filtered and filtered[-1][0] + filtered[-1][1] == pa:
                    filtered[-1] = (filtered[-1][0], filtered[-1][1] + n)
                else:
                    filtered.append((pa, n))
                if n == length and not out:
                    return bytes(n)
                out.append(bytes(n))
                pa += n
                length -= n
                continue
            else:
                raise self._absent(pfn)
            for page in pages:
                n = min(length, bs - off)
                if n == length and not out:
                    return page[off : off + n]  # within one page: the page itself when whole
                out.append(page[off : off + n])
                pa += n
                length -= n
                off = 0
        return b"".join(out)

    def file_offset(self, pa: int) -> int | None:
        pfn = pa // self.block_size
        if not self.has_page(pfn):
            return None
        desc = self.page_descriptor(pfn)
        return desc.offset + pa % self.block_size if desc.size == self.block_size else None

    def describe(self) -> str:
        codecs = "/".join(self.metadata["compression"]) or "uncompressed"
        flat = " flattened" if self.metadata.get("container") == "flattened" else ""
        part = " split part" if self.split else ""
        return f"kdump-compressed{flat}{part} ({codecs}, dump_level {self.metadata['dump_level']})"


def _read_pages(read_page: Callable[[int], bytes], bs: int, pa: int, length: int) -> bytes:
    if length <= 0:
        return b""
    pfn, off = divmod(pa, bs)
    if off + length <= bs:
        return read_page(pfn)[off : off + length]
    out = bytearray()
    while length > 0:
        n = min(length, bs - off)
        out += read_page(pfn)[off : off + n]
        length -= n
        pfn += 1
        off = 0
    return bytes(out)


class SplitKdumpDump(PhysicalMemory):
    """The parts of a `makedumpfile --split` dump, read as one memory."""

    format_name = "kdump-split"

    def __init__(self, parts: Sequence[KdumpDump]) -> None:
        first = parts[0]
        super().__init__(first.source)
        self.parts = sorted(parts, key=lambda p: p.start_pfn)
        for p in self.parts:
            if not p.split:
                raise DumpFormatError("is not part of a split dump (sub-header split = 0)", p.path)
            if (p.block_size, p.header.max_mapnr) != (
                first.block_size,
                first.header.max_mapnr,
            ) or p.header.utsname != first.header.utsname:
                raise DumpFormatError(
                    f"is a part of a different dump than {first.path} (header mismatch)", p.path
                )
        for a, b in zip(self.parts, self.parts[1:]):
            if a.end_pfn > b.start_pfn:
                raise DumpFormatError(
                    f"split parts overlap: {a.path} ends at pfn {a.end_pfn:#x}, this one "
                    f"starts at {b.start_pfn:#x}",
                    b.path,
                )
        self.block_size = first.block_size
        self._starts = [p.start_pfn for p in self.parts]
        self.notes = list(first.notes)
        self.facts = first.facts
        self.metadata = dict(first.metadata)
        self.metadata["split"] = [
            {"path": p.path, "start_pfn": p.start_pfn, "end_pfn": p.end_pfn} for p in self.parts
        ]
        self.metadata["dumped_pages"] = sum(p.dumped_pages for p in self.parts)
        self.path = first.path

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return False  # opened only through open_split()

    def _part(self, pfn: int) -> KdumpDump | None:
        i = bisect.bisect_right(self._starts, pfn) - 1
        if i >= 0 and pfn < self.parts[i].end_pfn:
            return self.parts[i]
        return None

    def read_page(self, pfn: int) -> bytes:
        part = self._part(pfn)
        if part is None:
            pa = pfn * self.block_size
            if self.is_excluded(pa):
                raise excluded(pa, self.path)
            raise NotInDumpError(
                f"physical address {pa:#x} is in none of the {len(self.parts)} split parts",
                pa,
                self.path,
            )
        return part.read_page(pfn)

    def ranges(self) -> list[PhysRange]:
        return self.parts[0].ranges()

    def is_excluded(self, pa: int) -> bool:
        pfn = pa // self.block_size
        part = self._part(pfn) or self.parts[0]
        return part.is_excluded(pa)

    def read_phys(self, pa: int, length: int) -> bytes:
        return _read_pages(self.read_page, self.block_size, pa, length)

    def file_offset(self, pa: int) -> int | None:
        part = self._part(pa // self.block_size)
        return part.file_offset(pa) if part else None

    def close(self) -> None:
        for p in self.parts:
            p.close()

    def describe(self) -> str:
        return f"kdump-compressed, split into {len(self.parts)} files"


def open_part(path: str | os.PathLike[str]) -> KdumpDump:
    """Open one kdump file, plain or flattened."""
    from .flattened import FlattenedSource, is_flattened

    source: ByteSource = DumpFile(path)
    if is_flattened(source):
        source = FlattenedSource(source)
    if not KdumpDump.probe(source):
        raise DumpFormatError(
            "is not a kdump-compressed file (no KDUMP signature)", os.fspath(path)
        )
    return KdumpDump(source)


def open_split(paths: Sequence[str | os.PathLike[str]]) -> PhysicalMemory:
    """One PhysicalMemory over all the files of a `makedumpfile --split` dump."""
    if not paths:
        raise DumpFormatError("no files given for a split dump")
    parts = [open_part(p) for p in paths]
    if len(parts) == 1 and not parts[0].split:
        return parts[0]
    return SplitKdumpDump(parts)
