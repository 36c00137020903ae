"""SymbolTable: name <-> address for one kernel, from whichever source was used.

A kernel has 100k-200k symbols and a command asks about a handful, so the
table makes a Symbol object only for what a query returns: the kernel's own
symbols are flat arrays (FrozenSymbols, kept per build in the index cache),
the modules' a few parallel lists beside them.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat

from ..errors import SymbolError
from .frozen import FrozenSymbols

#: nm-style type letters that mark code
FUNCTION_TYPES = frozenset("tTwW")
#: an address this far past the last symbol is taken as not inside any symbol
_LAST_SYMBOL_SLACK = 0x1000


#: a module symbol as (name, address[, size[, type letter]]), runtime address
ModuleSymbol = tuple[str, int] | tuple[str, int, int] | tuple[str, int, int, str]


@dataclass(frozen=True)
class Symbol:
    """One symbol. `size` is 0 when the source does not record sizes;
    `type` is the nm letter (T, t, D, d, R, r, B, b, A, W...); `module` is
    None for vmlinux symbols."""

    name: str
    address: int
    size: int = 0
    type: str = "?"
    module: str | None = None

    @property
    def is_function(self) -> bool:
        return self.type in FUNCTION_TYPES


@dataclass
class SymbolColumns:
    """Symbols as parallel lists, the form sources produce in bulk.
    `sizes` None means no sizes recorded (all 0)."""

    names: list[str]
    addresses: list[int]
    types: list[str]
    sizes: list[int] | None = None
    #: each symbol's module (None: all are the kernel's own)
    modules: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.names)

    @classmethod
    def from_symbols(cls, symbols: Iterable[Symbol]) -> SymbolColumns:
        syms = list(symbols)
        modules = [s.module for s in syms]
        return cls(
            [s.name for s in syms],
            [s.address for s in syms],
            [s.type for s in syms],
            [s.size for s in syms],
            modules if any(modules) else None,
        )


# Among symbols sharing one address, which to show: code first, a sized symbol
# (a vmlinux's STT_FUNC) before a zero-size label, a function before a linker
# script's section-boundary label (6.12 s390x's global __sched_text_start sits on
# the local __schedule, in kallsyms too, which records no sizes), globals before
# locals, then names without a leading underscore.
def display_rank(name: str, typ: str, size: int) -> tuple[int, int, int, int, int]:
    return (
        0 if typ in "Tt" else 1,
        0 if size else 1,
        1 if _BOUNDARY_LABEL.match(name) else 0,
        0 if typ.isupper() else 1,
        1 if name.startswith("_") else 0,
    )


_BOUNDARY_LABEL = re.compile(r"_.*_(start|end)$")


class _SymbolList:
    """Symbols added after the kernel's own (modules'), as parallel lists: a
    name index built in bulk, an address index sorted once per batch."""

    def __init__(self, word_size: int, kernel_floor: int, origin: str | None) -> None:
        self.word_size = word_size
        self.kernel_floor = kernel_floor
        self.origin = origin
        self.names: list[str] = []
        self.addresses: list[int] = []
        self.sizes: list[int] = []
        self.types: list[str] = []
        self.modules_of: list[str | None] = []
        # name -> index of its first / last symbol (equal unless the name repeats)
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        # address index: symbol indexes sorted by address (stable)
        self._order: list[int] = []
        self._addrs: list[int] = []
        self._sorted_upto = 0

    def __len__(self) -> int:
        return len(self.names)

    def append(self, cols: SymbolColumns, module: str | None) -> None:
        base, n = len(self.names), len(cols)
        if not n:
            return
        if not (
            len(cols.addresses) == len(cols.types) == n
            and (cols.sizes is None or len(cols.sizes) == n)
            and (cols.modules is None or len(cols.modules) == n)
        ):
            raise SymbolError("symbol columns of unequal length", self.origin)
        self.names.extend(cols.names)
        self.addresses.extend(cols.addresses)
        self.types.extend(cols.types)
        self.sizes.extend(cols.sizes if cols.sizes is not None else repeat(0, n))
        self.modules_of.extend(cols.modules if cols.modules is not None else repeat(module, n))
        for name, i in zip(reversed(cols.names), range(base + n - 1, base - 1, -1)):
            self.first.setdefault(name, i)
        self.last.update(zip(cols.names, range(base, base + n)))

    def index(self) -> tuple[list[int], list[int]]:
        """(sorted addresses, symbol indexes in that order), updated for
        symbols added since the last call."""
        total = len(self.addresses)
        if self._sorted_upto < total:
            addresses = self.addresses
            keep = list(map(self.kernel_floor.__le__, addresses[self._sorted_upto : total]))
            modules = self.modules_of[self._sorted_upto : total]
            # a module's own symbols are runtime addresses wherever its area is
            # (32-bit Arm's module area lies below PAGE_OFFSET)
            keep = [k or m is not None for k, m in zip(keep, modules)]
            if self.kernel_floor < 1 << (self.word_size * 8 - 1):
                # a low kernel: absolute values (type a/A) would look like addresses
                types = self.types[self._sorted_upto : total]
                keep = [k and t not in "aA" for k, t in zip(keep, types)]
            order = self._order + list(compress(range(self._sorted_upto, total), keep))
            order.sort(key=addresses.__getitem__)
            self._order = order
            self._addrs = list(map(addresses.__getitem__, order))
            self._sorted_upto = total
        return self._addrs, self._order

    def indexes_of(self, name: str) -> list[int]:
        first = self.first.get(name)
        if first is None:
            return []
        last = self.last[name]
        out = [first]
        names = self.names
        while out[-1] != last:
            out.append(names.index(name, out[-1] + 1, last + 1))
        return out

    def symbol(self, i: int) -> Symbol:
        return Symbol(
            self.names[i], self.addresses[i], self.sizes[i], self.types[i], self.modules_of[i]
        )

    def at_or_below(self, addr: int) -> tuple[int, list[int]] | None:
        addrs, order = self.index()
        k = bisect.bisect_right(addrs, addr)
        if k == 0:
            return None
        at = addrs[k - 1]
        return at, order[bisect.bisect_left(addrs, at, 0, k) : k]

    def next_above(self, addr: int) -> int | None:
        addrs, _ = self.index()
        k = bisect.bisect_right(addrs, addr)
        return addrs[k] if k < len(addrs) else None


class SymbolTable:
    """Symbols of the dumped kernel (and later its modules), relocated.

    `source` says where the kernel symbols came from: "vmlinux",
    "System.map" or "kallsyms". `kaslr_offset` is the slide that moved the
    kernel from its link-time addresses (kallsyms holds runtime addresses:
    its columns come moved already). Only addresses in the kernel half of
    the address space are in the address index, so per-cpu offsets and
    absolute constants never symbolize ordinary addresses.

    The kernel's own symbols are a FrozenSymbols (given, from the index
    cache, or frozen here from columns of runtime addresses); module
    symbols are added to a list beside them.
    """

    def __init__(
        self,
        symbols: Iterable[Symbol] | SymbolColumns | FrozenSymbols,
        source: str,
        kaslr_offset: int = 0,
        word_size: int = 8,
        origin: str | None = None,
        kernel_floor: int | None = None,
    ) -> None:
        self.source = source
        self.kaslr_offset = kaslr_offset
        self.word_size = word_size
        #: the file or dump the symbols were read from
        self.origin = origin
        #: the lowest kernel address (the upper half, unless the arch's kernel
        #: lives low: s390x's kernel has an address space of its own from 0)
        self._kernel_floor = 1 << (word_size * 8 - 1) if kernel_floor is None else kernel_floor
        self.modules: dict[str, list[Symbol]] = {}
        self._extra = _SymbolList(word_size, self._kernel_floor, origin)
        if isinstance(symbols, FrozenSymbols):
            self._base = symbols
            return
        cols = (
            symbols if isinstance(symbols, SymbolColumns) else SymbolColumns.from_symbols(symbols)
        )
        n = len(cols)
        if not (
            len(cols.addresses) == len(cols.types) == n
            and (cols.sizes is None or len(cols.sizes) == n)
            and (cols.modules is None or len(cols.modules) == n)
        ):
            raise SymbolError("symbol columns of unequal length", self.origin)
        if cols.modules is not None and any(cols.modules):
            own = [m is None for m in cols.modules]
            theirs = [not k for k in own]
            self._extra.append(_subset(cols, theirs), None)
            cols = _subset(cols, own)
        self._base = FrozenSymbols.freeze(cols, kaslr_offset, word_size, kernel_floor)

    def add_module_symbols(
        self, module_name: str, symbols: Iterable[Symbol | ModuleSymbol]
    ) -> None:
        """Add a loaded module's symbols: Symbol objects or (name, address[,
        size[, type]]) tuples, runtime addresses."""
        syms: list[Symbol] = []
        for item in symbols:
            if isinstance(item, Symbol):
                sym = (
                    item
                    if item.module == module_name
                    else Symbol(item.name, item.address, item.size, item.type, module_name)
                )
            else:
                name, address, *_ = item
                # by length, not from the unpacked rest: mypy types each tuple shape
                size = item[2] if len(item) > 2 else 0
                typ = item[3] if len(item) > 3 else "t"
                sym = Symbol(name, address, size or 0, typ, module_name)
            syms.append(sym)
        self.modules.setdefault(module_name, []).extend(syms)
        self._extra.append(SymbolColumns.from_symbols(syms), module_name)

    @property
    def sources(self) -> list[str]:
        """The kernel source, plus "modules" once module symbols were added."""
        return [self.source] + (["modules"] if self.modules else [])

    # -- single symbols ------------------------------------------------------
    def _base_symbol(self, i: int) -> Symbol:
        base = self._base
        return Symbol(
            base.name(i), base.address(i, self.kaslr_offset), base.sizes[i], base.types[i]
        )

    @property
    def kernel_floor(self) -> int:
        """The lowest address the address index holds."""
        return self._kernel_floor

    # -- queries -----------------------------------------------------------
    def names(self) -> list[str]:
        """Every symbol name, sorted (for completion)."""
        own = list(self._base.sorted_names())
        if not self._extra.first:
            return own
        return sorted(set(own).union(self._extra.first))

    def __len__(self) -> int:
        return self._base.n + len(self._extra)

    def __contains__(self, name: str) -> bool:
        return name in self._base or name in self._extra.first

    def __iter__(self) -> Iterator[Symbol]:
        """Every symbol: the kernel's grouped by name (sorted), then the modules'."""
        yield from map(self._base_symbol, self._base.by_name)
        yield from map(self._extra.symbol, range(len(self._extra)))

    def symbols(self, name: str) -> list[Symbol]:
        """Every symbol called `name` (static functions may repeat)."""
        return [self._base_symbol(i) for i in self._base.find(name)] + [
            self._extra.symbol(i) for i in self._extra.indexes_of(name)
        ]

    def _preferred(self, name: str) -> Symbol | None:
        # the vmlinux's own symbol first, then a global one
        own = self._base.find(name)
        if own:
            types = self._base.types
            return self._base_symbol(next((i for i in own if types[i].isupper()), own[0]))
        extra = self._extra.indexes_of(name)
        if not extra:
            return None
        types_ = self._extra.types
        return self._extra.symbol(next((i for i in extra if types_[i].isupper()), extra[0]))

    def symbol(self, name: str) -> Symbol:
        sym = self._preferred(name)
        if sym is None:
            hint = ""
            types = self._base.types
            data = sum(map(types.count, "dDbB"))
            if self.source == "kallsyms" and data * 20 < len(types):
                hint = (
                    " (this kernel's kallsyms holds functions only, no CONFIG_KALLSYMS_ALL: "
                    "give its vmlinux or --system-map System.map)"
                )
            raise SymbolError(
                f"symbol {name!r} not found in the {self.source} symbols{hint}", self.origin
            )
        return sym

    def lookup(self, name: str) -> int:
        """Address of `name`; SymbolError naming it when absent."""
        return self.symbol(name).address

    def get(self, name: str) -> int | None:
        sym = self._preferred(name)
        return None if sym is None else sym.address

    def nearest(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol holding `addr` and the offset into it, or None."""
        own = self._base.at_or_below(addr, self.kaslr_offset)
        extra = self._extra.at_or_below(addr) if len(self._extra) else None
        candidates: list[Symbol] = []
        if own is not None and (extra is None or own[0] >= extra[0]):
            candidates += map(self._base_symbol, own[1])
        if extra is not None and (own is None or extra[0] >= own[0]):
            candidates += map(self._extra.symbol, extra[1])
        if not candidates:
            return None
        # the preferred alias among those at one address (first one on a tie)
        sym = min(candidates, key=lambda s: display_rank(s.name, s.type, s.size))
        offset = addr - sym.address
        # past the last symbol's end (or slack): not inside any symbol
        if offset >= (sym.size or _LAST_SYMBOL_SLACK) and self._next_above(sym.address) is None:
            return None
        return sym, offset

    def _next_above(self, addr: int) -> int | None:
        own = self._base.next_above(addr, self.kaslr_offset)
        extra = self._extra.next_above(addr) if len(self._extra) else None
        if own is None or extra is None:
            return extra if own is None else own
        return min(own, extra)

    def size_of(self, sym: Symbol) -> int:
        """The symbol's size, or the gap to the next address when unrecorded."""
        if sym.size:
            return sym.size
        nxt = self._next_above(sym.address)
        return nxt - sym.address if nxt is not None else 0

    def symbolize(self, addr: int) -> str:
        """`func+0x1c/0x80`, with ` [module]` for module symbols; hex address
        when no symbol holds `addr`."""
        hit = self.nearest(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, offset = hit
        size = self.size_of(sym)
        if sym.size and offset >= size:
            # past the end of a sized symbol (a gap, a module's data after its
            # last function): `func+0x570/0x190` would name the wrong code
            return f"{addr:#x}"
        text = f"{sym.name}+{offset:#x}/{size:#x}"
        return f"{text} [{sym.module}]" if sym.module else text

    def __repr__(self) -> str:
        return f"<SymbolTable {self.source} {len(self)} symbols kaslr={self.kaslr_offset:#x}>"


def _subset(cols: SymbolColumns, keep: list[bool]) -> SymbolColumns:
    return SymbolColumns(
        list(compress(cols.names, keep)),
        list(compress(cols.addresses, keep)),
        list(compress(cols.types, keep)),
        list(compress(cols.sizes, keep)) if cols.sizes is not None else None,
        list(compress(cols.modules, keep)) if cols.modules is not None else None,
    )


def relocated(
    addresses: Sequence[int],
    types: Sequence[str],
    slide: int,
    word_size: int,
    kernel_floor: int | None = None,
) -> list[int]:
    """`addresses` moved by a KASLR `slide`: only kernel-half addresses (from
    `kernel_floor` when the arch's kernel lives low) move; per-cpu offsets and
    absolute values (types a/A) stay."""
    if not slide:
        return list(addresses)
    floor = 1 << (word_size * 8 - 1) if kernel_floor is None else kernel_floor
    mask = (1 << (word_size * 8)) - 1
    return [
        (a + slide) & mask if a >= floor and t not in "aA" else a for a, t in zip(addresses, types)
    ]
