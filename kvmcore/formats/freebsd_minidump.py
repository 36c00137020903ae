"""FreeBSD minidumps (debug.minidump=1, the default): amd64 v1-v3, arm64 v1-v3.

Layout (sys/<arch>/<arch>/minidump_machdep.c, lib/libkvm/kvm_minidump_*.c):

    page 0            header (struct minidumphdr), rest of the page zero
    page 1..          message buffer, round_page(msgbufsize)
    then              dump_avail[] pairs, round_page(dumpavailsize)  (amd64 v3, arm64 v2+)
    then              page bitmap, round_page(bitmapsize)
    then              kernel map: amd64 v1 4K PTEs, amd64 v2+ PDEs (one page per GB),
                      arm64 L3 entries (one page per 2 MB); round_page(pmapsize)
    then              the dumped pages, in increasing bit order

A page's file offset is the rank of its bit in the bitmap (libkvm's
_kvm_pt_find); the rank index is built once, so lookups are O(1). The kernel
map itself is read by the translators in arches/ (see `pmap_entry`).
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from ..errors import DumpFormatError, NotInDumpError, TruncatedDumpError, UnsupportedError
from ..fileio import ByteSource
from . import register_format
from .base import PhysicalMemory, PhysRange, excluded

MAGIC_PREFIX = b"minidump"
#: header magic -> (normalized machine, newest version we read)
MACHINES = {
    b"minidump FreeBSD/amd64": ("x86_64", 3),
    b"minidump FreeBSD/arm64": ("aarch64", 3),
}
#: bound on the bitmap: 64 MiB of bitmap describes 2 PiB of 4K pages
MAX_BITMAP = 64 << 20
#: rank bins: one cumulative count per this many 64-bit words (libkvm: 1024 bits)
WORDS_PER_BIN = 16


def round_up(value: int, align: int) -> int:
    return (value + align - 1) & ~(align - 1)


@dataclass(frozen=True)
class MinidumpHeader:
    """struct minidumphdr, normalized across architectures and versions."""

    magic: str
    machine: str
    version: int
    msgbufsize: int
    bitmapsize: int
    pmapsize: int
    kernbase: int
    dmapbase: int
    dmapend: int
    dmapphys: int = 0  # arm64 only: physical address at dmapbase
    dumpavailsize: int = 0  # amd64 v3, arm64 v2+
    flags: int = 0  # arm64 v3+: page size
    page_size: int = 4096

    @property
    def pmap_kind(self) -> str:
        """What the kernel-map section holds: 'pte' (amd64 v1), 'pde' (amd64 v2+), 'l3'."""
        if self.machine == "aarch64":
            return "l3"
        return "pte" if self.version == 1 else "pde"


def parse_header(raw: bytes, path: str) -> MinidumpHeader:
    magic = raw[:24].split(b"\0", 1)[0]
    if magic not in MACHINES:
        shown = magic.decode("ascii", "replace")
        raise UnsupportedError(
            f"FreeBSD minidump for an unsupported architecture ({shown!r})", path
        )
    machine, newest = MACHINES[magic]
    version, msgbufsize, bitmapsize, pmapsize = struct.unpack_from("<4I", raw, 24)
    if not 1 <= version <= newest:
        raise UnsupportedError(
            f"{magic.decode()} version {version} (this reader knows 1..{newest})", path
        )
    if machine == "x86_64":
        kernbase, dmapbase, dmapend = struct.unpack_from("<3Q", raw, 40)
        # v1 and v2 headers are identical; v3 appends dumpavailsize
        availsize = struct.unpack_from("<I", raw, 64)[0] if version >= 3 else 0
        return MinidumpHeader(
            magic.decode(),
            machine,
            version,
            msgbufsize,
            bitmapsize,
            pmapsize,
            kernbase,
            dmapbase,
            dmapend,
            dumpavailsize=availsize,
        )
    kernbase, dmapphys, dmapbase, dmapend = struct.unpack_from("<4Q", raw, 40)
    availsize = struct.unpack_from("<I", raw, 72)[0] if version >= 2 else 0
    flags = struct.unpack_from("<I", raw, 76)[0] if version >= 3 else 0
    page_size = {0: 4096, 1: 16384}.get(flags & 3)
    if page_size is None:
        raise UnsupportedError(f"arm64 minidump page-size flag {flags & 3} is not 4K or 16K", path)
    return MinidumpHeader(
        magic.decode(),
        machine,
        version,
        msgbufsize,
        bitmapsize,
        pmapsize,
        kernbase,
        dmapbase,
        dmapend,
        dmapphys,
        availsize,
        flags,
        page_size,
    )


class PageBitmap:
    """The dump bitmap with a rank index: bit id -> index among the dumped pages."""

    def __init__(self, raw: bytes) -> None:
        raw = raw + b"\0" * (-len(raw) % 8)
        self.words = array("Q")
        self.words.frombytes(raw)
        if self.words.itemsize != 8:  # pragma: no cover - every CPython has 8-byte Q
            raise UnsupportedError("array('Q') is not 64-bit on this host")
        bins = array("Q", [0])
        total = 0
        for i, word in enumerate(self.words):
            total += word.bit_count()
            if (i + 1) % WORDS_PER_BIN == 0:
                bins.append(total)
        self.bins = bins
        self.total = total
        self.nbits = len(self.words) * 64

    def is_set(self, bit: int) -> bool:
        return 0 <= bit < self.nbits and bool(self.words[bit >> 6] >> (bit & 63) & 1)

    def rank(self, bit: int) -> int:
        """Number of set bits before `bit`."""
        w = bit >> 6
        b = w // WORDS_PER_BIN
        count = self.bins[b]
        for i in range(b * WORDS_PER_BIN, w):
            count += self.words[i].bit_count()
        return count + (self.words[w] & ((1 << (bit & 63)) - 1)).bit_count()

    def set_bits(self):
        """Yield set bit ids in increasing order."""
        for i, word in enumerate(self.words):
            while word:
                low = word & -word
                yield i * 64 + low.bit_length() - 1
                word ^= low


@register_format(priority=20)
class FreeBSDMinidump(PhysicalMemory):
    """A FreeBSD minidump: sparse physical pages plus the kernel's own kva map."""

    format_name = "freebsd-minidump"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return source.size >= 8 and source.pread(0, 8) == MAGIC_PREFIX

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source)
        if source.size < 4096:
            raise TruncatedDumpError(
                f"FreeBSD minidump of {source.size} bytes ends inside its header page: "
                "the dump is truncated",
                source.path,
            )
        hdr = parse_header(source.pread(0, 128), source.path)
        self.header = hdr
        page = hdr.page_size
        if hdr.bitmapsize > MAX_BITMAP:
            raise DumpFormatError(
                f"implausible minidump bitmap size {hdr.bitmapsize:#x}", source.path
            )
        self.msgbuf_offset = page
        self.dump_avail_offset = page + round_up(hdr.msgbufsize, page)
        self.bitmap_offset = self.dump_avail_offset + round_up(hdr.dumpavailsize, page)
        self.pmap_offset = self.bitmap_offset + round_up(hdr.bitmapsize, page)
        self.sparse_offset = self.pmap_offset + round_up(hdr.pmapsize, page)
        if self.sparse_offset > source.size:
            raise TruncatedDumpError(
                f"FreeBSD minidump ends at {source.size:#x}, inside its header sections "
                f"(dumped pages should start at {self.sparse_offset:#x}): the dump is truncated",
                source.path,
            )
        self.dump_avail = self._read_dump_avail()
        self.bitmap = PageBitmap(source.pread(self.bitmap_offset, hdr.bitmapsize))
        self.pages_in_file = (source.size - self.sparse_offset) // page
        self.pmap_count = hdr.pmapsize // 8
        self._pmap = source.pread(self.pmap_offset, self.pmap_count * 8)

        f = self.facts
        f.machine = hdr.machine
        f.os = "freebsd"
        f.kind = "mini"
        f.word_size = 8
        f.byteorder = "little"
        f.page_size = page
        self.metadata.update(
            minidump_version=hdr.version,
            kernbase=hdr.kernbase,
            dmapbase=hdr.dmapbase,
            dmapend=hdr.dmapend,
            dmapphys=hdr.dmapphys,
            pmap_kind=hdr.pmap_kind,
            pmapsize=hdr.pmapsize,
            bitmapsize=hdr.bitmapsize,
            msgbufsize=hdr.msgbufsize,
            dump_avail=self.dump_avail,
            pages_dumped=self.bitmap.total,
            truncated=self.bitmap.total > self.pages_in_file,
            expected_size=self.sparse_offset + self.bitmap.total * page,
        )

    # -- header sections -----------------------------------------------------
    def _read_dump_avail(self) -> list[tuple[int, int]]:
        hdr = self.header
        if not hdr.dumpavailsize:
            # older cores: the bitmap covers [0, bits * page) (libkvm's implied dump_avail)
            return [(0, hdr.bitmapsize * 8 * hdr.page_size)]
        raw = self.source.pread(self.dump_avail_offset, hdr.dumpavailsize)
        words = struct.unpack(f"<{len(raw) // 8}Q", raw[: len(raw) // 8 * 8])
        pairs = []
        for i in range(0, len(words) - 1, 2):
            if words[i + 1] == 0:
                break
            pairs.append((words[i], words[i + 1]))
        return pairs

    def msgbuf(self) -> bytes:
        """The raw message buffer the minidump carries (a ring: see msgbufp)."""
        return self.source.pread(self.msgbuf_offset, self.header.msgbufsize)

    def pmap_entry(self, index: int) -> int | None:
        """Entry `index` of the kernel-map section, or None past its end."""
        if not 0 <= index < self.pmap_count:
            return None
        return struct.unpack_from("<Q", self._pmap, index * 8)[0]

    # -- page lookup -----------------------------------------------------------
    def bit_id(self, pa: int) -> int | None:
        """_kvm_pa_bit_id: bit of the page holding `pa`, counting through dump_avail."""
        page = self.header.page_size
        adj = 0
        for start, end in self.dump_avail:
            if pa >= end:
                adj += -(-end // page) - start // page
            elif pa >= start:
                return pa // page - start // page + adj
            else:
                return None
        return None

    def bit_pa(self, bit: int) -> int | None:
        """_kvm_bit_id_pa: the inverse of bit_id."""
        page = self.header.page_size
        for start, end in self.dump_avail:
            span = -(-end // page) - start // page
            if bit < span:
                return (start - start % page) + bit * page
            bit -= span
        return None

    def page_offset(self, pa: int) -> int | None:
        """File offset of the page holding `pa`, None when it was not dumped."""
        bit = self.bit_id(pa)
        if bit is None or not self.bitmap.is_set(bit):
            return None
        return self.sparse_offset + self.bitmap.rank(bit) * self.header.page_size

    def _page_offset_checked(self, pa: int) -> int:
        off = self.page_offset(pa)
        if off is None:
            if self.bit_id(pa) is not None:
                raise excluded(pa, self.path)
            raise NotInDumpError(f"physical address {pa:#x} is not in the minidump", pa, self.path)
        if off + self.header.page_size > self.source.size:
            raise TruncatedDumpError(
                f"the bitmap lists physical page {pa & -self.header.page_size:#x} as dumped "
                f"(at offset {off:#x}) but the file ends at {self.source.size:#x}: "
                f"the minidump is truncated ({self.bitmap.total} pages claimed, "
                f"{self.pages_in_file} present)",
                self.path,
            )
        return off

    # -- PhysicalMemory --------------------------------------------------------
    def ranges(self) -> list[PhysRange]:
        page = self.header.page_size
        out: list[PhysRange] = []
        for bit in self.bitmap.set_bits():
            pa = self.bit_pa(bit)
            if pa is None:
                break
            if out and out[-1].end == pa:
                out[-1] = PhysRange(out[-1].start, pa + page)
            else:
                out.append(PhysRange(pa, pa + page))
        return out

    def is_excluded(self, pa: int) -> bool:
        return self.bit_id(pa) is not None and self.page_offset(pa) is None

    def read_phys(self, pa: int, length: int) -> bytes:
        page = self.header.page_size
        parts = []
        while length > 0:
            off = self._page_offset_checked(pa)
            n = min(length, page - (pa & (page - 1)))
            parts.append(self.source.pread(off + (pa & (page - 1)), n))
            pa += n
            length -= n
        return b"".join(parts)

    def file_offset(self, pa: int) -> int | None:
        off = self.page_offset(pa)
        return None if off is None else off + (pa & (self.header.page_size - 1))

    def describe(self) -> str:
        return f"FreeBSD minidump ({self.header.magic.split('/')[-1]} v{self.header.version})"
