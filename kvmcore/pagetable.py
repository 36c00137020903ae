"""Radix page-table walking shared by the architecture backends.

A backend describes its tables (levels, entry size, how to decode an entry)
and this module walks them: one address (`translate`) or every mapping
(`walk`, as libkvm's kvm_walk_pages). Every walk is bounded: a table that
appears among its own ancestors is a cycle and raises WalkError, and a walk
visits at most `max_tables` tables.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from .errors import KvmcoreError, NotInDumpError, NotMappedError, WalkError
from .notes import ByteOrder
from .translate import MappedRange, Translation, Translator, coalesce

INVALID, TABLE, LEAF = 0, 1, 2


@dataclass(frozen=True)
class Level:
    shift: int  # log2 of the span of one entry at this level
    bits: int  # index bits at this level


class RadixTable(ABC):
    """The shape of one architecture's page tables."""

    entry_size: int = 8
    levels: list[Level]

    @abstractmethod
    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        """Return (INVALID|TABLE|LEAF, physical address of table or page base)."""

    def canonical(self, va: int) -> int:
        """Sign-extend a walked address to the architecture's canonical form."""
        return va

    def leaf_size(self, entry: int, depth: int) -> int | None:
        """The size of the page a LEAF `entry` maps when it is larger than the
        span of one entry at its level (ARM's 64 KB large pages and 16 MB
        supersections are one descriptor repeated 16 times; the page's offset
        then includes index bits): None for the level's own span."""
        return None


_Table = TypeVar("_Table", bound=RadixTable)


class RadixTranslator(Translator, Generic[_Table]):
    """Walks a RadixTable from a root table in dumped physical memory. Generic
    in the table, so an arch's subclass sees its own table's fields."""

    def __init__(
        self,
        table: _Table,
        root_pa: int,
        read_phys: Callable[[int, int], bytes],
        byteorder: ByteOrder = "little",
        path: str | None = None,
        max_tables: int = 1 << 20,
    ) -> None:
        self.table = table
        self.root = root_pa
        self.read_phys = read_phys
        self.byteorder = byteorder
        self.path = path
        self.max_tables = max_tables
        # translations already walked, as each page's physical base (ints, not
        # tuples: a cache of tracked objects would bring the garbage collector
        # round over everything young): 4 KiB pages by va >> 12, larger pages
        # by va >> their shift (a direct map of 2 MiB pages is 32 walks for
        # 64 MiB, not one per 4 KiB)
        self._cache: dict[int, int] = {}
        self._large: dict[int, dict[int, int]] = {}
        # for a 4 KiB page whose successors continue it physically: the bytes
        # contiguous from its base (one lookup answers a 64 KiB read)
        self._span: dict[int, int] = {}
        self._blocks: dict[int, bytes] = {}  # page-table bytes by 4 KiB block
        self._leaf_walks: dict[int, int] = {}  # walks that ended in each last-level table

    def _entry(self, table_pa: int, index: int) -> int:
        size = self.table.entry_size
        at = table_pa + index * size
        # the 4 KiB of tables around the entry, read once: a walk of a 4 KiB-page
        # mapping meets the same last-level table 512 times in a row
        block = at & ~0xFFF
        raw = self._blocks.get(block)
        if raw is None:
            try:
                raw = self.read_phys(block, 0x1000)
            except KvmcoreError:  # the block is not all there: the entry alone
                return int.from_bytes(self.read_phys(at, size), self.byteorder)
            if len(self._blocks) >= 4096:
                self._blocks.clear()
            self._blocks[block] = raw
        return int.from_bytes(raw[at - block : at - block + size], self.byteorder)

    def translate(self, va: int) -> Translation:
        base = self._cache.get(va >> 12)
        if base is not None:
            return Translation(va, base + (va & 0xFFF), 0x1000)
        for shift, pages in self._large.items():
            base = pages.get(va >> shift)
            if base is not None:
                size = 1 << shift
                return Translation(va, base + (va & (size - 1)), size)
        return self._walk(va)

    def run(self, va: int, length: int) -> tuple[int, int]:
        key = va >> 12
        base = self._cache.get(key)
        if base is not None:
            off = va & 0xFFF
            if off + length <= 0x1000:
                return base + off, length  # within a 4 KiB page: a pointer, a member
            pa, n = base + off, self._span.get(key, 0x1000) - off
        else:
            for shift, pages in self._large.items():
                base = pages.get(va >> shift)
                if base is not None:
                    size = 1 << shift
                    off = va & (size - 1)
                    if off + length <= size:
                        return base + off, length  # within a large page
                    pa, n = base + off, size - off
                    break
            else:
                t = self.translate(va)  # a subclass's checks, then the walk
                pa, n = t.pa, t.page_size - (t.pa & (t.page_size - 1))
        while n < length:
            try:
                nxt, more = self._page_run(va + n)
            except KvmcoreError:
                break  # the caller's next step translates it again, and raises
            if nxt != pa + n:
                break
            n += more
        return pa, min(n, length)

    def _page_run(self, va: int) -> tuple[int, int]:
        """(pa, bytes physically contiguous from va): to the end of va's
        page, or further when the cache knows the pages after it continue it."""
        key = va >> 12
        base = self._cache.get(key)
        if base is not None:
            off = va & 0xFFF
            return base + off, self._span.get(key, 0x1000) - off
        for shift, pages in self._large.items():
            base = pages.get(va >> shift)
            if base is not None:
                size = 1 << shift
                off = va & (size - 1)
                return base + off, size - off
        t = self.translate(va)  # a subclass's checks, then the walk
        return t.pa, t.page_size - (t.pa & (t.page_size - 1))

    def _remember(self, va: int, pa: int, size: int) -> None:
        shift = size.bit_length() - 1
        if size != 1 << shift or shift < 12:
            return  # not a page this cache keys
        pages = self._cache if shift == 12 else self._large.setdefault(shift, {})
        if len(pages) > 1 << 16:
            pages.clear()
            if shift == 12:
                self._span.clear()
        pages[va >> shift] = pa - (va & (size - 1))

    def _leaf_table_walked(self, table_pa: int, depth: int, va: int) -> None:
        """A walk ended in the last-level table at `table_pa`: the second time
        one does, remember every 4 KiB page that table maps (a 4 KiB-mapped
        stretch read front to back walks it 512 times otherwise)."""
        level = self.table.levels[depth]
        size = self.table.entry_size
        count = 1 << level.bits
        if count * size != 0x1000 or table_pa & 0xFFF or level.shift != 12:
            return  # only 4 KiB tables of 4 KiB pages (x86, arm64 4K, riscv)
        seen = self._leaf_walks.get(table_pa, 0) + 1
        if len(self._leaf_walks) > 4096:
            self._leaf_walks.clear()
        self._leaf_walks[table_pa] = seen
        if seen != 2:
            return
        raw = self._blocks.get(table_pa)
        if raw is None or len(raw) != 0x1000:
            return
        base_va = va & ~((count << 12) - 1)
        decode, leaf_size, order = self.table.decode, self.table.leaf_size, self.byteorder
        pages, spans = self._cache, self._span
        if len(pages) > 1 << 16:
            pages.clear()
            spans.clear()
        first = base_va >> 12
        found = [-1] * (count + 1)  # each entry's page, -1 where none (and past the end)
        for i in range(count):
            entry = int.from_bytes(raw[i * size : (i + 1) * size], order)
            if not entry:
                continue
            kind, page = decode(entry, depth)
            if kind == LEAF and leaf_size(entry, depth) is None:
                pages[first + i] = page
                found[i] = page
        # back to front: how far each page's physical run goes within the table
        run = 0x1000
        for i in range(count - 1, -1, -1):
            page = found[i]
            if page >= 0:
                run = run + 0x1000 if found[i + 1] == page + 0x1000 else 0x1000
                if run > 0x1000:
                    spans[first + i] = run

    def _walk(self, va: int) -> Translation:
        table_pa = self.root
        seen: set[int] = set()
        for depth, level in enumerate(self.table.levels):
            if table_pa in seen:
                raise WalkError(
                    f"page-table cycle at table {table_pa:#x} translating {va:#x}", self.path
                )
            seen.add(table_pa)
            index = (va >> level.shift) & ((1 << level.bits) - 1)
            try:
                entry = self._entry(table_pa, index)
            except NotInDumpError as exc:
                raise NotMappedError(
                    f"virtual address {va:#x}: page table at {table_pa:#x} is not in the dump "
                    f"({exc.message})",
                    va,
                    self.path,
                ) from None
            kind, base = self.table.decode(entry, depth)
            if kind == INVALID:
                raise NotMappedError(f"virtual address {va:#x} is not mapped", va, self.path)
            if kind == LEAF:
                size = self.table.leaf_size(entry, depth) or 1 << level.shift
                pa = base + (va & (size - 1))
                self._remember(va, pa, size)
                if size == 0x1000 and depth == len(self.table.levels) - 1:
                    self._leaf_table_walked(table_pa, depth, va)
                return Translation(va, pa, size)
            table_pa = base
        raise NotMappedError(
            f"virtual address {va:#x}: page-table walk did not reach a page", va, self.path
        )

    def walk(self) -> Iterator[MappedRange]:
        return coalesce(self._walk_table(self.root, 0, 0, (), [self.max_tables]))

    def _walk_table(
        self, table_pa: int, depth: int, va_base: int, ancestors: tuple[int, ...], budget: list[int]
    ) -> Iterator[MappedRange]:
        if table_pa in ancestors:
            raise WalkError(f"page-table cycle: table {table_pa:#x} is its own ancestor", self.path)
        budget[0] -= 1
        if budget[0] < 0:
            raise WalkError(
                f"page-table walk visited more than {self.max_tables} tables", self.path
            )
        level = self.table.levels[depth]
        count = 1 << level.bits
        size = self.table.entry_size
        try:
            raw = self.read_phys(table_pa, count * size)
        except NotInDumpError:
            return
        for index in range(count):
            entry = int.from_bytes(raw[index * size : (index + 1) * size], self.byteorder)
            if not entry:
                continue
            kind, base = self.table.decode(entry, depth)
            va = va_base | (index << level.shift)
            if kind == LEAF:
                span = 1 << level.shift
                page = self.table.leaf_size(entry, depth) or span
                pa = base + (va & (page - 1) & ~(span - 1))
                yield MappedRange(self.table.canonical(va), pa, span, page)
            elif kind == TABLE and depth + 1 < len(self.table.levels):
                yield from self._walk_table(base, depth + 1, va, ancestors + (table_pa,), budget)
