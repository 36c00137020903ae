"""Kernel virtual to physical translation: the interface every translator
(one per architecture and dump flavour, in arches/) implements, and what a
translator is built with.

A translator never holds the Dump: it is built from a `TranslationContext`
(the physical memory below it, the dump's VMCOREINFO, a symbol resolver, an
explicit page-table root), as libkvm's `ka_initvtop` is handed the kvm_t's
physical reader and `kvm_nlist`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

from .errors import KvmcoreError, SymbolError
from .formats.base import PhysicalMemory
from .notes import ByteOrder, VmcoreInfo


class Translation(NamedTuple):
    """Where a virtual address lives: physical address, page size, file offset.
    (A NamedTuple: every read makes one, and a frozen dataclass costs 3x more.)"""

    va: int
    pa: int
    page_size: int
    file_offset: int | None = None


@dataclass(frozen=True)
class MappedRange:
    """A run of virtual memory mapped to contiguous physical memory."""

    va: int
    pa: int
    size: int
    page_size: int


def coalesce(ranges: Iterator[MappedRange]) -> Iterator[MappedRange]:
    """Merge virtually and physically contiguous runs of the same page size."""
    pending: MappedRange | None = None
    for rng in ranges:
        if (
            pending
            and pending.va + pending.size == rng.va
            and pending.pa + pending.size == rng.pa
            and pending.page_size == rng.page_size
        ):
            pending = MappedRange(
                pending.va, pending.pa, pending.size + rng.size, pending.page_size
            )
            continue
        if pending:
            yield pending
        pending = rng
    if pending:
        yield pending


class Translator(ABC):
    """Kernel virtual to physical translation for one dump."""

    @abstractmethod
    def translate(self, va: int) -> Translation:
        """Translate `va`; raise NotMappedError when nothing maps it."""

    @abstractmethod
    def walk(self) -> Iterator[MappedRange]:
        """Yield every mapped kernel range, in ascending virtual order."""

    def run(self, va: int, length: int) -> tuple[int, int]:
        """(pa, n): the physical address of `va`, and how many of the `length`
        bytes from it lie in one physically contiguous run (at least to the end
        of va's page, or `length`): one layer read for a 64 KiB read of a
        4 KiB-page direct map, not sixteen. Raises as translate(va) does; a
        page after the first that does not translate ends the run. A
        translator with a cheaper way (RadixTranslator's cache) overrides it."""
        t = self.translate(va)
        pa = t.pa
        n = t.page_size - (pa & (t.page_size - 1))
        while n < length:
            try:
                nxt = self.translate(va + n)
            except KvmcoreError:
                break  # the caller's next step translates it again, and raises
            if nxt.pa != pa + n:
                break
            n += nxt.page_size - (nxt.pa & (nxt.page_size - 1))
        return pa, min(n, length)

    #: lowest kernel virtual address, when the translator knows it better than
    #: the architecture's default (i386's PAGE_OFFSET, found from the tables)
    kernel_start: int | None = None

    def linear_map_address(self, pa: int) -> int | None:
        """The kernel's direct-map alias of physical `pa`, when this flavour can
        tell without symbols (used by the last-resort memory scans); else None."""
        return None

    def describe(self) -> dict[str, Any]:
        """Facts the translator found (paging mode, PAGE_OFFSET), for `info`."""
        return {}


@dataclass(frozen=True)
class TranslationContext:
    """What a translator may use, and nothing else."""

    #: the physical memory layer below (a format's PhysicalMemory, or a layer
    #: stacked on it): read_phys, ranges, facts, header
    mem: PhysicalMemory
    #: the dump's VMCOREINFO (Linux), or None
    vmcoreinfo: VmcoreInfo | None
    #: address of a kernel symbol, or None: for roots only a symbol names
    #: (FreeBSD's KPML4phys). Called lazily, on the first translation.
    resolve_symbol: Callable[[str], int | None]
    #: the top-level page table's physical address when the caller knows it
    page_table_root: int | None = None
    #: the byte order of page-table entries
    byteorder: ByteOrder = "little"

    @property
    def path(self) -> str:
        return self.mem.path


class LazyTranslator(Translator):
    """A translator built on first use by `make()`: for dumps whose page-table
    root is known only through a kernel symbol, so that opening the dump does
    not need the symbols."""

    def __init__(self, make: Callable[[], Translator], path: str | None) -> None:
        self._make = make
        self._inner: Translator | None = None
        self._busy = False
        self.path = path

    def inner(self) -> Translator:
        if self._inner is None:
            if self._busy:  # resolving the root needed a kernel-virtual read
                raise SymbolError(
                    "locating the page-table root needs kernel symbols, "
                    "which in turn need virtual reads",
                    self.path,
                )
            self._busy = True
            try:
                inner = self._inner = self._make()
            finally:
                self._busy = False
            # from now on a call goes straight to the translator built: a read
            # is one translation, and this layer was a third of its cost
            self.translate = inner.translate  # type: ignore[method-assign]
            self.run = inner.run  # type: ignore[method-assign]
        return self._inner

    def translate(self, va: int) -> Translation:
        return self.inner().translate(va)

    def run(self, va: int, length: int) -> tuple[int, int]:
        return self.inner().run(va, length)

    def walk(self) -> Iterator[MappedRange]:
        return self.inner().walk()

    def describe(self) -> dict[str, Any]:
        return self.inner().describe()
