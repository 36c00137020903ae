"""FreeBSD minidumps (debug.minidump=1, the default): amd64 v1-v3, arm64 v1-v3,
i386 v1-v2 (PAE or not), arm v1-v2, riscv v1-v2, powerpc64 v1-v2 (HPT).

Layout (sys/<arch>/<arch>/minidump_machdep.c, lib/libkvm/kvm_minidump_*.c):

    page 0            header (struct minidumphdr), rest of the page zero
    page 1..          message buffer, round_page(msgbufsize)
    then              dump_avail[] pairs, round_page(dumpavailsize)  (amd64 v3,
                      arm64 v2+, i386/arm/riscv/powerpc64 v2)
    then              page bitmap, round_page(bitmapsize)
    then              kernel map, round_page(pmapsize) ("ptesize" on i386/arm):
                      amd64 v1 4K PTEs, amd64 v2+ PDEs (one page per GB);
                      arm64 and riscv L3 entries (one page per 2 MB);
                      i386 one PTE per 4K page from kernbase (4 bytes, 8 with PAE);
                      arm one 4-byte L2 entry per 4K page from kernbase;
                      powerpc64 the hashed page table itself (16-byte PTEs)
    then              the dumped pages, in increasing bit order

A page's file offset is the rank of its bit in the bitmap (libkvm's
_kvm_pt_find); the rank index is built once, so lookups are O(1). The kernel
map itself is read by the translators in arches/ (see `pmap_entry`).

Byte order: the header, dump_avail and the bitmap's words are in the dumped
kernel's byte order. amd64, arm64, i386 and riscv are little-endian; arm and
powerpc64 headers are read in the order whose version field is valid (a
powerpc64 minidump is big-endian from a BE kernel, little-endian from
powerpc64le). The powerpc64 hashed page table is big-endian in both, as the
hardware defines it.
"""

from __future__ import annotations

import struct
from array import array
from dataclasses import dataclass

from ..errors import DumpFormatError, NotInDumpError, TruncatedDumpError, UnsupportedError
from ..fileio import ByteSource
from ..notes import ByteOrder
from . import register_format
from .base import PhysicalMemory, PhysRange, excluded

MAGIC_PREFIX = b"minidump"
#: header magic -> (normalized machine, newest version we read)
MACHINES = {
    b"minidump FreeBSD/amd64": ("x86_64", 3),
    b"minidump FreeBSD/arm64": ("aarch64", 3),
    b"minidump FreeBSD/i386": ("i386", 2),
    b"minidump FreeBSD/arm": ("arm", 2),
    b"minidump FreeBSD/riscv": ("riscv64", 2),
    b"minidump FreeBSD/powerpc64": ("powerpc64", 2),
}
#: machine hint of a little-endian powerpc64 minidump (same magic, LE header)
PPC64LE = "ppc64le"
#: arm's mmuformat (sys/arm/include/minidump.h MINIDUMP_MMU_FORMAT_*)
ARM_MMU_V4, ARM_MMU_V6, ARM_MMU_V6_LPAE = 1, 2, 3
#: powerpc64 MMUs whose pmap section is a hashed page table (libkvm's kvm_powerpc64.h)
PPC64_HPT_MMUS = ("mmu_g5", "mmu_phyp")
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
    pmapsize: int  # "ptesize" on i386 and arm
    kernbase: int
    dmapbase: int = 0  # no direct map on i386 and arm: 0, 0
    dmapend: int = 0
    dmapphys: int = 0  # arm64 and riscv: physical address at dmapbase
    dumpavailsize: int = 0  # amd64 v3, arm64 v2+, the others v2
    flags: int = 0  # arm64 v3+: page size
    page_size: int = 4096
    #: byte order of the header, dump_avail and the bitmap's words
    byteorder: ByteOrder = "little"
    #: the kernel's word size (the bitmap is an array of longs)
    word_size: int = 8
    #: size and byte order of one entry of the kernel-map section
    pmap_entry_size: int = 8
    pmap_byteorder: ByteOrder = "little"
    paemode: bool = False  # i386
    arch_level: int = 0  # arm: __ARM_ARCH
    mmuformat: int = 0  # arm: MINIDUMP_MMU_FORMAT_*
    mmu_name: str = ""  # powerpc64: the pmap's MMU ("mmu_g5", "mmu_phyp", "mmu_radix")
    kernend: int = 0  # powerpc64: end of the kernel VM area
    hw_direct_map: bool = False  # powerpc64: DMAP segments use 16 MB pages
    startkernel: int = 0  # powerpc64: where the kernel image was loaded
    endkernel: int = 0

    @property
    def pmap_kind(self) -> str:
        """What the kernel-map section holds: 'pte' (amd64 v1, i386, arm), 'pde'
        (amd64 v2+), 'l3' (arm64, riscv), 'hpt' (powerpc64)."""
        if self.machine in ("aarch64", "riscv64"):
            return "l3"
        if self.machine in ("powerpc64", PPC64LE):
            return "hpt"
        if self.machine == "x86_64":
            return "pte" if self.version == 1 else "pde"
        return "pte"


def _version_order(
    raw: bytes, offset: int, newest: int, orders: tuple[ByteOrder, ...]
) -> tuple[int, ByteOrder]:
    """The version field and the byte order that makes it valid (the first of
    `orders` when none does, so that the error shows that reading)."""
    for order in orders:
        version = int.from_bytes(raw[offset : offset + 4], order)
        if 1 <= version <= newest:
            return version, order
    return int.from_bytes(raw[offset : offset + 4], orders[0]), orders[0]


def parse_header(raw: bytes, path: str) -> MinidumpHeader:
    magic = raw[:32].split(b"\0", 1)[0]
    if magic != b"minidump FreeBSD/powerpc64":
        magic = raw[:24].split(b"\0", 1)[0]
    if magic not in MACHINES:
        shown = magic.decode("ascii", "replace")
        raise UnsupportedError(
            f"FreeBSD minidump for an unsupported architecture ({shown!r})", path
        )
    machine, newest = MACHINES[magic]
    ppc = machine == "powerpc64"
    orders: tuple[ByteOrder, ...] = ("little",)
    if machine == "arm":
        orders = ("little", "big")
    elif ppc:
        orders = ("big", "little")
    version, order = _version_order(raw, 64 if ppc else 24, newest, orders)
    if not 1 <= version <= newest:
        raise UnsupportedError(
            f"{magic.decode()} version {version} (this reader knows 1..{newest})", path
        )
    e = "<" if order == "little" else ">"
    if ppc:
        return _parse_powerpc64(raw, magic.decode(), version, order, path)
    version, msgbufsize, bitmapsize, pmapsize = struct.unpack_from(e + "4I", raw, 24)
    common = (magic.decode(), machine, version, msgbufsize, bitmapsize, pmapsize)
    if machine == "i386":
        # magic[24], version, msgbufsize, bitmapsize, ptesize, kernbase, paemode,
        # then v2 dumpavailsize: every field a uint32
        kernbase, paemode = struct.unpack_from("<2I", raw, 40)
        availsize = struct.unpack_from("<I", raw, 48)[0] if version >= 2 else 0
        return MinidumpHeader(
            *common,
            kernbase,
            dumpavailsize=availsize,
            word_size=4,
            pmap_entry_size=8 if paemode else 4,
            paemode=bool(paemode),
        )
    if machine == "arm":
        # magic[24], version, msgbufsize, bitmapsize, ptesize, kernbase, arch,
        # mmuformat, then v2 dumpavailsize
        kernbase, arch_level, mmuformat = struct.unpack_from(e + "3I", raw, 40)
        availsize = struct.unpack_from(e + "I", raw, 52)[0] if version >= 2 else 0
        if mmuformat == 0:
            mmuformat = ARM_MMU_V6  # libkvm: a safe default, 1K pages are not used
        if mmuformat not in (ARM_MMU_V4, ARM_MMU_V6):
            raise UnsupportedError(
                f"arm minidump MMU format {mmuformat} (this reader knows v4 and v6 "
                "short descriptors, not LPAE)",
                path,
            )
        return MinidumpHeader(
            *common,
            kernbase,
            dumpavailsize=availsize,
            byteorder=order,
            word_size=4,
            pmap_entry_size=4,
            pmap_byteorder=order,
            arch_level=arch_level,
            mmuformat=mmuformat,
        )
    if machine == "riscv64":
        # magic[24], four uint32, kernbase, dmapphys, dmapbase, dmapend, then v2
        # dumpavailsize
        kernbase, dmapphys, dmapbase, dmapend = struct.unpack_from("<4Q", raw, 40)
        availsize = struct.unpack_from("<I", raw, 72)[0] if version >= 2 else 0
        return MinidumpHeader(
            *common, kernbase, dmapbase, dmapend, dmapphys, dumpavailsize=availsize
        )
    if machine == "x86_64":
        kernbase, dmapbase, dmapend = struct.unpack_from("<3Q", raw, 40)
        # v1 and v2 headers are identical; v3 appends dumpavailsize
        availsize = struct.unpack_from("<I", raw, 64)[0] if version >= 3 else 0
        return MinidumpHeader(*common, kernbase, dmapbase, dmapend, dumpavailsize=availsize)
    kernbase, dmapphys, dmapbase, dmapend = struct.unpack_from("<4Q", raw, 40)
    availsize = struct.unpack_from("<I", raw, 72)[0] if version >= 2 else 0
    flags = struct.unpack_from("<I", raw, 76)[0] if version >= 3 else 0
    page_size = {0: 4096, 1: 16384}.get(flags & 3)
    if page_size is None:
        raise UnsupportedError(f"arm64 minidump page-size flag {flags & 3} is not 4K or 16K", path)
    return MinidumpHeader(
        *common, kernbase, dmapbase, dmapend, dmapphys, availsize, flags, page_size
    )


def _parse_powerpc64(
    raw: bytes, magic: str, version: int, order: ByteOrder, path: str
) -> MinidumpHeader:
    """sys/powerpc/include/minidump.h: magic[32], mmu_name[32], four uint32,
    kernbase, kernend, dmapbase, dmapend, int hw_direct_map (padded to 8),
    startkernel, endkernel, then v2 dumpavailsize."""
    e = "<" if order == "little" else ">"
    mmu_name = raw[32:64].split(b"\0", 1)[0].decode("ascii", "replace")
    _, msgbufsize, bitmapsize, pmapsize = struct.unpack_from(e + "4I", raw, 64)
    kernbase, kernend, dmapbase, dmapend = struct.unpack_from(e + "4Q", raw, 80)
    hw_direct_map = struct.unpack_from(e + "i", raw, 112)[0]
    startkernel, endkernel = struct.unpack_from(e + "2Q", raw, 120)
    availsize = struct.unpack_from(e + "I", raw, 136)[0] if version >= 2 else 0
    if mmu_name not in PPC64_HPT_MMUS:
        raise UnsupportedError(
            f"powerpc64 minidump of MMU {mmu_name!r} (this reader knows the hashed page "
            f"table of {', '.join(PPC64_HPT_MMUS)}; not radix)",
            path,
        )
    return MinidumpHeader(
        magic,
        "powerpc64" if order == "big" else PPC64LE,
        version,
        msgbufsize,
        bitmapsize,
        pmapsize,
        kernbase,
        dmapbase,
        dmapend,
        dumpavailsize=availsize,
        byteorder=order,
        pmap_byteorder="big",
        mmu_name=mmu_name,
        kernend=kernend,
        hw_direct_map=bool(hw_direct_map),
        startkernel=startkernel,
        endkernel=endkernel,
    )


class PageBitmap:
    """The dump bitmap with a rank index: bit id -> index among the dumped pages.

    The kernel's bitmap is an array of longs (bit n is bit n % bits-per-long of
    long n / bits-per-long); a big-endian kernel's longs are first put in
    little-endian order, where bit n is bit n % 8 of byte n / 8 whatever the
    word size."""

    def __init__(self, raw: bytes, byteorder: ByteOrder = "little", word_size: int = 8) -> None:
        raw = raw + b"\0" * (-len(raw) % 8)
        if byteorder == "big":
            words = array("Q" if word_size == 8 else "I")
            words.frombytes(raw)
            words.byteswap()  # reverse each long's bytes: big-endian -> little-endian
            raw = words.tobytes()
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
        hdr = parse_header(source.pread(0, 256), source.path)
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
        self.bitmap = PageBitmap(
            source.pread(self.bitmap_offset, hdr.bitmapsize), hdr.byteorder, hdr.word_size
        )
        self.pages_in_file = (source.size - self.sparse_offset) // page
        self.pmap_count = hdr.pmapsize // hdr.pmap_entry_size
        self._pmap = source.pread(self.pmap_offset, self.pmap_count * hdr.pmap_entry_size)
        self._pmap_fmt = ("<" if hdr.pmap_byteorder == "little" else ">") + (
            "Q" if hdr.pmap_entry_size == 8 else "I"
        )

        f = self.facts
        f.machine = hdr.machine
        f.os = "freebsd"
        f.kind = "mini"
        f.word_size = hdr.word_size
        f.byteorder = hdr.byteorder
        f.page_size = page
        self.metadata.update(
            minidump_version=hdr.version,
            kernbase=hdr.kernbase,
            dmapbase=hdr.dmapbase,
            dmapend=hdr.dmapend,
            dmapphys=hdr.dmapphys,
            pmap_kind=hdr.pmap_kind,
            byteorder=hdr.byteorder,
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
        e = "<" if hdr.byteorder == "little" else ">"
        words = struct.unpack(f"{e}{len(raw) // 8}Q", raw[: len(raw) // 8 * 8])
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
        """Entry `index` of the kernel-map section (entries of
        header.pmap_entry_size bytes in header.pmap_byteorder), or None past its end."""
        if not 0 <= index < self.pmap_count:
            return None
        return struct.unpack_from(self._pmap_fmt, self._pmap, index * self.header.pmap_entry_size)[
            0
        ]

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
