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
