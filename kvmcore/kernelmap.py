"""What the translators of dumps that carry their own kernel map share
(FreeBSD minidumps, libkvm's kvm_minidump_*.c): the header and the dumped
pmap entries of the format below, the linear direct map
[dmapbase, dmapend) -> [dmapphys, ...) where the architecture has one, and
walk(): the direct map and the kernel map in address order.

A flavour subclasses it with `translate` and `_kernel_map` (the entries of
its own map format) and says its page size.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Iterator
from typing import Any

from .errors import NotMappedError
from .translate import MappedRange, Translation, Translator, coalesce


class KernelMapTranslator(Translator):
    """kva -> pa from a dump's own kernel map, plus a linear direct map."""

    #: the page size of the direct map's ranges in walk()
    page_size: int = 4096
    #: False for architectures whose minidumps have no direct map (i386, arm)
    has_direct_map: bool = True

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.path = mem.path

    @property
    def dmapphys(self) -> int:
        """Physical address at the start of the direct map (0 on amd64, whose
        header has no such field)."""
        return int(getattr(self.hdr, "dmapphys", 0))

    def direct(self, va: int) -> Translation | None:
        """The translation of `va` through the direct map, or None outside it."""
        hdr = self.hdr
        if self.has_direct_map and hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase + self.dmapphys, self.page_size)
        return None

    def linear_map_address(self, pa: int) -> int | None:
        if not self.has_direct_map or pa < self.dmapphys:
            return None
        va = pa - self.dmapphys + self.hdr.dmapbase
        return va if va < self.hdr.dmapend else None

    @abstractmethod
    def _kernel_map(self) -> Iterable[MappedRange]:
        """The kernel map's pages, in ascending virtual order."""

    def _direct_map(self) -> Iterator[MappedRange]:
        hdr, base = self.hdr, self.dmapphys
        for rng in self.mem.ranges():
            va = rng.start - base + hdr.dmapbase
            if rng.start >= base and va + rng.size <= hdr.dmapend:
                yield MappedRange(va, rng.start, rng.size, self.page_size)

    def walk(self) -> Iterator[MappedRange]:
        if not self.has_direct_map:
            yield from coalesce(iter(self._kernel_map()))
            return
        parts = [(self.hdr.kernbase, self._kernel_map()), (self.hdr.dmapbase, self._direct_map())]
        for _, part in sorted(parts, key=lambda p: p[0]):
            yield from coalesce(iter(part))


class PageArrayTranslator(KernelMapTranslator):
    """A kernel map that is one entry per 4K page from kernbase and no direct
    map (FreeBSD's i386 and arm minidumps): a flavour says only how an entry
    gives its page (`page_of`)."""

    has_direct_map = False
    #: what an entry is called in errors ("PTE", "L2 entry")
    entry_name = "entry"

    def __init__(self, mem: Any) -> None:
        super().__init__(mem)
        self.kernel_start = self.hdr.kernbase

    @abstractmethod
    def page_of(self, entry: int, va: int) -> int | None:
        """The physical page an entry maps `va` to, or None when it is invalid."""

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        if va < hdr.kernbase:
            raise NotMappedError(
                f"virtual address {va:#x} is below the minidump's kernel map "
                f"(from kernbase {hdr.kernbase:#x})",
                va,
                self.path,
            )
        index = (va - hdr.kernbase) >> 12
        entry = self.mem.pmap_entry(index)
        if entry is None:
            raise NotMappedError(
                f"virtual address {va:#x} lies past the minidump's kernel map "
                f"({self.mem.pmap_count} {self.entry_name}s from "
                f"{hdr.kernbase:#x})",
                va,
                self.path,
            )
        page = self.page_of(entry, va)
        if page is None:
            raise NotMappedError(
                f"virtual address {va:#x} is not mapped ({self.entry_name} {index} is invalid)",
                va,
                self.path,
            )
        return Translation(va, page | (va & 0xFFF), 4096)

    def _kernel_map(self) -> Iterator[MappedRange]:
        for index in range(self.mem.pmap_count):
            va = self.hdr.kernbase + index * 4096
            page = self.page_of(self.mem.pmap_entry(index), va)
            if page is not None:
                yield MappedRange(va, page, 4096, 4096)
