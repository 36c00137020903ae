"""Address spaces, stacked as layers (as Volatility 3's layers are): the
dump file, then the format's physical memory, then optionally layers that
remap physical frames (a Xen PV guest's machine-to-pseudo-physical map), then
the kernel's virtual address space on top. Each layer answers its own reads
and raises its own faults (NotInDumpError, PageExcludedError below,
NotMappedError here), so one can be slotted in without touching the others:
a layer only needs the `PhysicalLayer` protocol of the one below.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Protocol

from .errors import KvmcoreError, NotInDumpError, PageExcludedError
from .formats.base import PhysRange
from .translate import MappedRange, Translation, Translator

BLOCK_SHIFT = 21
BLOCK_SIZE = 1 << BLOCK_SHIFT
BLOCK_MASK = BLOCK_SIZE - 1
#: blocks remembered (each a dict entry: 64 Ki blocks cover 128 GiB)
MAX_BLOCKS = 1 << 16


class PhysicalLayer(Protocol):
    """What a layer above needs of physical memory (a format's PhysicalMemory
    is one)."""

    path: str

    def read_phys(self, pa: int, length: int) -> bytes:
        """Bytes at physical `pa`; NotInDumpError / PageExcludedError when absent."""
        ...

    def ranges(self) -> list[PhysRange]:
        """The physical ranges present, sorted."""
        ...

    def file_offset(self, pa: int) -> int | None:
        """Where `pa` lies in the file, when stored uncompressed."""
        ...


class KernelAddressSpace:
    """Kernel virtual memory of one dump: translate, read, walk. Page tables
    are walked by `translator`, which reads them from the same layer below."""

    def __init__(self, mem: PhysicalLayer, translator: Translator, word_size: int) -> None:
        self.mem = mem
        self.translator = translator
        self.word_size = word_size
        self.mask = (1 << (word_size * 8)) - 1
        # va >> BLOCK_SHIFT -> the physical address of that 2 MiB block when a
        # large page (2 MiB or more, aligned to its size) maps all of it, else
        # -1: most kernel objects live in the direct map's large pages, and
        # there a read needs no translation (ps reads 10,000 task_structs so)
        self._blocks: dict[int, int] = {}

    def translate(self, va: int) -> Translation:
        va &= self.mask
        t = self.translator.translate(va)
        return Translation(va, t.pa, t.page_size, self.mem.file_offset(t.pa))

    def read(
        self,
        va: int,
        length: int,
        zero_excluded: bool = False,
        excluded: list[tuple[int, int]] | None = None,
    ) -> bytes:
        """Read `length` bytes at kernel virtual address `va`. With
        `zero_excluded`, pages a filtered dump left out read as zeros: right for
        kernel objects on pages makedumpfile dropped as zero-filled (dump level
        bit 1), as crash's --zero_excluded does; each span read so is appended
        to `excluded` as (virtual address, length) when a list is given.

        Pages that continue one physical run are read in one step (the
        translator's `run`; a direct map is mostly contiguous): one layer read
        for a 64 KiB read, not sixteen; a run that faults is read again page by
        page, so that the error names the page."""
        va &= self.mask
        if length <= 0:
            return b""
        base = self._blocks.get(va >> BLOCK_SHIFT)
        if base is None:
            base = self._block_base(va)
        if base >= 0 and (va & BLOCK_MASK) + length <= BLOCK_SIZE:  # one large page: one run
            if zero_excluded:
                return self._read_run(va, base + (va & BLOCK_MASK), length, True, excluded)
            try:
                return self.mem.read_phys(base + (va & BLOCK_MASK), length)
            except NotInDumpError:  # or filtered: below, page by page, naming the page
                pass
        # a run stops at the top of the address space; the loop wraps past it
        pa, n = self.translator.run(va, min(length, self.mask + 1 - va))
        if n == length:  # one physical run: a member, a page, a direct-map chunk
            if not zero_excluded:  # a pointer, a member: straight through
                try:
                    return self.mem.read_phys(pa, n)
                except NotInDumpError:  # or filtered: page by page, naming the page
                    return self._read_pages(va, n)
            return self._read_run(va, pa, n, zero_excluded, excluded)
        parts: list[bytes] = []
        while True:
            parts.append(self._read_run(va, pa, n, zero_excluded, excluded))
            va = (va + n) & self.mask
            length -= n
            if length <= 0:
                return b"".join(parts)
            pa, n = self.translator.run(va, min(length, self.mask + 1 - va))

    def file_blocks(self) -> tuple[int, Callable[[int], int]] | None:
        """For a reader in C that reads the dump file itself (kvmcore._listwalk):
        the file's descriptor, and a function giving the file offset of the
        2 MiB block at a block-aligned virtual address: -1 unless one large
        page maps that block and the layer below stores all of it in the file,
        in order and uncompressed (its `file_run`). None when the layer below
        cannot say (the layers that remap or decompress pages)."""
        file_run = getattr(self.mem, "file_run", None)
        fileno = getattr(self.mem, "fileno", None)
        fd = fileno() if fileno is not None else None
        if file_run is None or fd is None:
            return None

        def locate(block_va: int) -> int:
            base = self._blocks.get(block_va >> BLOCK_SHIFT)
            if base is None:
                base = self._block_base(block_va)
            offset = file_run(base, BLOCK_SIZE) if base >= 0 else None
            return -1 if offset is None else offset

        return fd, locate

    def _block_base(self, va: int) -> int:
        """The physical address of the 2 MiB block holding `va` when one large
        page maps it, else -1 (also for an address that does not translate:
        the read's own translation raises); remembered for the next read."""
        try:
            t = self.translator.translate(va)
        except KvmcoreError:
            return -1
        base = t.pa - (va & BLOCK_MASK) if t.page_size >= BLOCK_SIZE else -1
        if len(self._blocks) >= MAX_BLOCKS:
            self._blocks.clear()
        self._blocks[va >> BLOCK_SHIFT] = base
        return base

    def _read_run(
        self,
        va: int,
        pa: int,
        n: int,
        zero_excluded: bool,
        excluded: list[tuple[int, int]] | None,
    ) -> bytes:
        """The `n` bytes of one physical run (virtual `va`, physical `pa`)."""
        # the layer's read_phys_filled(pa, length, spans), when it has one (looked
        # up each time: a test may wrap the layer's methods after opening)
        filled = getattr(self.mem, "read_phys_filled", None) if zero_excluded else None
        if filled is None:
            try:
                return self.mem.read_phys(pa, n)
            except NotInDumpError:  # or filtered (PageExcludedError): page by page
                return self._read_pages(va, n, zero_excluded, excluded)
        # a layer that zero-fills the filtered pages of the run in one pass
        spans: list[tuple[int, int]] = []
        try:
            data: bytes = filled(pa, n, spans)
        except NotInDumpError:
            return self._read_pages(va, n, zero_excluded, excluded)
        if spans and excluded is not None:
            excluded += [(va + at - pa, size) for at, size in spans]
        return data

    def _read_pages(
        self,
        va: int,
        length: int,
        zero_excluded: bool = False,
        excluded: list[tuple[int, int]] | None = None,
    ) -> bytes:
        """read(), one page (translation) at a time: what a run that faulted
        is read again with, so that the error names the page at fault."""
        spans: list[tuple[int, int]]
        parts: list[bytes] = []
        while length > 0:
            t = self.translator.translate(va)
            chunk = min(length, t.page_size - (t.pa & (t.page_size - 1)))
            try:
                parts.append(self.mem.read_phys(t.pa, chunk))
            except PageExcludedError as exc:
                if zero_excluded:
                    spans = []
                    parts.append(self._zero_filled(t.pa, chunk, spans))
                    if excluded is not None:
                        excluded += [(va + pa - t.pa, n) for pa, n in spans]
                    va = (va + chunk) & self.mask
                    length -= chunk
                    continue
                # the page at fault, which a large page's read may hold further in
                at = _fault_offset(exc, t.pa, chunk)
                raise PageExcludedError(
                    f"virtual address {va + at:#x} (physical {t.pa + at:#x}) was excluded from "
                    "the dump by filtering",
                    va + at,
                    exc.path,
                ) from None
            except NotInDumpError as exc:
                at = _fault_offset(exc, t.pa, chunk)
                raise NotInDumpError(
                    f"virtual address {va + at:#x} maps to physical {t.pa + at:#x}, which is not "
                    "in the dump",
                    va + at,
                    exc.path,
                ) from None
            va = (va + chunk) & self.mask
            length -= chunk
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _zero_filled(self, pa: int, length: int, spans: list[tuple[int, int]]) -> bytes:
        """Physical bytes with excluded pages as zeros, each such (pa, length)
        appended to `spans`: in one pass where the layer can (read_phys_filled),
        else page by page."""
        filled = getattr(self.mem, "read_phys_filled", None)
        if filled is not None:
            data: bytes = filled(pa, length, spans)
            return data
        out = bytearray()
        while length > 0:
            n = min(length, 4096 - (pa & 0xFFF))
            try:
                out += self.mem.read_phys(pa, n)
            except PageExcludedError:
                out += bytes(n)
                spans.append((pa, n))
            pa += n
            length -= n
        return bytes(out)

    def walk_pages(self) -> Iterator[MappedRange]:
        return self.translator.walk()


def _fault_offset(exc: NotInDumpError, pa: int, length: int) -> int:
    """Where in the physical read [pa, pa+length) the layer's error points (the
    address it names), else 0."""
    at = exc.address
    return at - pa if isinstance(at, int) and pa <= at < pa + length else 0
