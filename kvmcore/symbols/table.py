"""SymbolTable: name <-> address for one kernel, from whichever source was used.

A kernel has 100k-200k symbols and a command asks about a handful, so the
table keeps them as parallel columns (names, addresses, sizes, types) and
makes a Symbol object only for what a query returns. The name index is two
dicts built in bulk; the address index is sorted once, on the first address
query after symbols were added.
"""

from __future__ import annotations

import bisect
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import compress, repeat

from ..errors import SymbolError

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


class SymbolTable:
    """Symbols of the dumped kernel (and later its modules), already relocated.

    `source` says where the kernel symbols came from: "vmlinux",
    "System.map" or "kallsyms". `kaslr_offset` is the slide applied to
    link-time addresses (0 for kallsyms, which holds runtime addresses).
    Only addresses in the kernel half of the address space go into the
    address index, so per-cpu offsets and absolute constants never
    symbolize ordinary addresses.
    """

    def __init__(
        self,
        symbols: Iterable[Symbol] | SymbolColumns,
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
        self._names: list[str] = []
        self._addresses: list[int] = []
        self._sizes: list[int] = []
        self._types: list[str] = []
        self._modules_of: list[str | None] = []
        # name -> index of its first / last symbol (equal unless the name repeats)
        self._first: dict[str, int] = {}
        self._last: dict[str, int] = {}
        # address index: kernel-half symbol indexes sorted by address (stable)
        self._order: list[int] = []
        self._addrs: list[int] = []
        self._sorted_upto = 0
        self.modules: dict[str, list[Symbol]] = {}
        cols = (
            symbols if isinstance(symbols, SymbolColumns) else SymbolColumns.from_symbols(symbols)
        )
        self._append(cols, None)

    # -- building ----------------------------------------------------------
    def _append(self, cols: SymbolColumns, module: str | None) -> None:
        base, n = len(self._names), len(cols)
        if not n:
            return
        if not (
            len(cols.addresses) == len(cols.types) == n
            and (cols.sizes is None or len(cols.sizes) == n)
            and (cols.modules is None or len(cols.modules) == n)
        ):
            raise SymbolError("symbol columns of unequal length", self.origin)
        self._names.extend(cols.names)
        self._addresses.extend(cols.addresses)
        self._types.extend(cols.types)
        self._sizes.extend(cols.sizes if cols.sizes is not None else repeat(0, n))
        self._modules_of.extend(cols.modules if cols.modules is not None else repeat(module, n))
        first = dict(zip(reversed(cols.names), range(base + n - 1, base - 1, -1)))
        if base == 0:
            self._first = first
        else:
            for name, i in first.items():
                self._first.setdefault(name, i)
        self._last.update(zip(cols.names, range(base, base + n)))

    def _index(self) -> tuple[list[int], list[int]]:
        """(sorted addresses, symbol indexes in that order), updated for
        symbols added since the last call."""
        total = len(self._addresses)
        if self._sorted_upto < total:
            addresses = self._addresses
            keep = list(map(self._kernel_floor.__le__, addresses[self._sorted_upto : total]))
            modules = self._modules_of[self._sorted_upto : total]
            if any(modules):
                # a module's own symbols are runtime addresses wherever its area
                # is (32-bit Arm's module area lies below PAGE_OFFSET)
                keep = [k or m is not None for k, m in zip(keep, modules)]
            if self._kernel_floor < 1 << (self.word_size * 8 - 1):
                # a low kernel: absolute values (type a/A) would look like addresses
                types = self._types[self._sorted_upto : total]
                keep = [k and t not in "aA" for k, t in zip(keep, types)]
            new = compress(range(self._sorted_upto, total), keep)
            order = self._order + list(new)
            # stable, and near-linear: kallsyms is address-sorted, and the old
            # index is one sorted run
            order.sort(key=addresses.__getitem__)
            self._order = order
            self._addrs = list(map(addresses.__getitem__, order))
            self._sorted_upto = total
        return self._addrs, self._order

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
        self._append(SymbolColumns.from_symbols(syms), module_name)

    @property
    def sources(self) -> list[str]:
        """The kernel source, plus "modules" once module symbols were added."""
        return [self.source] + (["modules"] if self.modules else [])

    # -- single symbols ------------------------------------------------------
    def _symbol(self, i: int) -> Symbol:
        return Symbol(
            self._names[i], self._addresses[i], self._sizes[i], self._types[i], self._modules_of[i]
        )

    def _indexes_of(self, name: str) -> list[int]:
        first = self._first.get(name)
        if first is None:
            return []
        last = self._last[name]
        out = [first]
        names = self._names
        while out[-1] != last:
            out.append(names.index(name, out[-1] + 1, last + 1))
        return out

    @property
    def kernel_floor(self) -> int:
        """The lowest address the address index holds."""
        return self._kernel_floor

    # -- queries -----------------------------------------------------------
    def names(self) -> list[str]:
        """Every symbol name, sorted (for completion)."""
        return sorted(self._first)

    def __len__(self) -> int:
        return len(self._names)

    def __contains__(self, name: str) -> bool:
        return name in self._first

    def __iter__(self) -> Iterator[Symbol]:
        """Every symbol, grouped by name in the order names first appear."""
        for name, last in self._last.items():
            first = self._first[name]
            if first == last:
                yield self._symbol(first)
            else:
                yield from map(self._symbol, self._indexes_of(name))

    def symbols(self, name: str) -> list[Symbol]:
        """Every symbol called `name` (static functions may repeat)."""
        return [self._symbol(i) for i in self._indexes_of(name)]

    def _preferred(self, name: str) -> int | None:
        first = self._first.get(name)
        if first is None or first == self._last[name]:
            return first
        # Prefer the vmlinux's own symbol, then a global one.
        return min(
            self._indexes_of(name),
            key=lambda i: (self._modules_of[i] is not None, not self._types[i].isupper()),
        )

    def symbol(self, name: str) -> Symbol:
        i = self._preferred(name)
        if i is None:
            hint = ""
            data = sum(1 for t in self._types if t in "dDbB")
            if self.source == "kallsyms" and data * 20 < len(self._types):
                hint = (
                    " (this kernel's kallsyms holds functions only, no CONFIG_KALLSYMS_ALL: "
                    "give its vmlinux or --system-map System.map)"
                )
            raise SymbolError(
                f"symbol {name!r} not found in the {self.source} symbols{hint}", self.origin
            )
        return self._symbol(i)

    def lookup(self, name: str) -> int:
        """Address of `name`; SymbolError naming it when absent."""
        return self.symbol(name).address

    def get(self, name: str) -> int | None:
        i = self._preferred(name)
        return None if i is None else self._addresses[i]

    def nearest(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol holding `addr` and the offset into it, or None."""
        addrs, order = self._index()
        k = bisect.bisect_right(addrs, addr)
        if k == 0:
            return None
        sym_addr = addrs[k - 1]
        j = bisect.bisect_left(addrs, sym_addr, 0, k)
        # the preferred alias among those at one address (first one on a tie)
        i = min(
            order[j:k],
            key=lambda i: display_rank(self._names[i], self._types[i], self._sizes[i]),
        )
        sym = self._symbol(i)
        offset = addr - sym_addr
        if k >= len(addrs) and offset >= max(sym.size, _LAST_SYMBOL_SLACK if sym.size == 0 else 0):
            return None
        return sym, offset

    def size_of(self, sym: Symbol) -> int:
        """The symbol's size, or the gap to the next address when unrecorded."""
        if sym.size:
            return sym.size
        addrs, _ = self._index()
        k = bisect.bisect_right(addrs, sym.address)
        return addrs[k] - sym.address if k < len(addrs) else 0

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
