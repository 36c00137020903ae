"""SymbolTable: name <-> address for one kernel, from whichever source was used."""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..errors import SymbolError

#: nm-style type letters that mark code
FUNCTION_TYPES = frozenset("tTwW")
#: an address this far past the last symbol is taken as not inside any symbol
_LAST_SYMBOL_SLACK = 0x1000


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


# Among symbols sharing one address, which to show: code first, globals
# before locals, then names without a leading underscore.
def _display_rank(sym: Symbol) -> tuple[int, int, int]:
    return (0 if sym.type in "Tt" else 1, 0 if sym.type.isupper() else 1,
            1 if sym.name.startswith("_") else 0)


class SymbolTable:
    """Symbols of the dumped kernel (and later its modules), already relocated.

    `source` says where the kernel symbols came from: "vmlinux",
    "System.map" or "kallsyms". `kaslr_offset` is the slide applied to
    link-time addresses (0 for kallsyms, which holds runtime addresses).
    Only addresses in the kernel half of the address space go into the
    address index, so per-cpu offsets and absolute constants never
    symbolize ordinary addresses.
    """

    def __init__(self, symbols: Iterable[Symbol], source: str, kaslr_offset: int = 0,
                 word_size: int = 8, origin: str | None = None) -> None:
        self.source = source
        self.kaslr_offset = kaslr_offset
        self.word_size = word_size
        #: the file or dump the symbols were read from
        self.origin = origin
        self._kernel_floor = 1 << (word_size * 8 - 1)
        self._by_name: dict[str, list[Symbol]] = {}
        self._sorted: list[Symbol] = []
        self._addrs: list[int] = []
        self.modules: dict[str, list[Symbol]] = {}
        self._add(symbols)

    # -- building ----------------------------------------------------------
    def _add(self, symbols: Iterable[Symbol]) -> None:
        new: list[Symbol] = []
        for sym in symbols:
            self._by_name.setdefault(sym.name, []).append(sym)
            if sym.address >= self._kernel_floor:
                new.append(sym)
        if not new:
            return
        merged = self._sorted + new
        merged.sort(key=lambda s: (s.address, _display_rank(s)))
        self._sorted = merged
        self._addrs = [s.address for s in merged]

    def add_module_symbols(self, module_name: str,
                           symbols: Iterable[Symbol | tuple]) -> None:
        """Add a loaded module's symbols: Symbol objects or (name, address[,
        size[, type]]) tuples, runtime addresses."""
        syms: list[Symbol] = []
        for item in symbols:
            if isinstance(item, Symbol):
                sym = item if item.module == module_name else Symbol(
                    item.name, item.address, item.size, item.type, module_name)
            else:
                name, address, *rest = item
                size = rest[0] if rest else 0
                typ = rest[1] if len(rest) > 1 else "t"
                sym = Symbol(name, address, size or 0, typ, module_name)
            syms.append(sym)
        self.modules.setdefault(module_name, []).extend(syms)
        self._add(syms)

    @property
    def sources(self) -> list[str]:
        """The kernel source, plus "modules" once module symbols were added."""
        return [self.source] + (["modules"] if self.modules else [])

    # -- queries -----------------------------------------------------------
    def __len__(self) -> int:
        return sum(len(v) for v in self._by_name.values())

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Symbol]:
        for syms in self._by_name.values():
            yield from syms

    def symbols(self, name: str) -> list[Symbol]:
        """Every symbol called `name` (static functions may repeat)."""
        return list(self._by_name.get(name, ()))

    def symbol(self, name: str) -> Symbol:
        syms = self._by_name.get(name)
        if not syms:
            raise SymbolError(f"symbol {name!r} not found in the {self.source} symbols", self.origin)
        # Prefer the vmlinux's own symbol, then a global one.
        return min(syms, key=lambda s: (s.module is not None, not s.type.isupper()))

    def lookup(self, name: str) -> int:
        """Address of `name`; SymbolError naming it when absent."""
        return self.symbol(name).address

    def get(self, name: str) -> int | None:
        syms = self._by_name.get(name)
        return self.symbol(name).address if syms else None

    def nearest(self, addr: int) -> tuple[Symbol, int] | None:
        """The symbol holding `addr` and the offset into it, or None."""
        i = bisect.bisect_right(self._addrs, addr) - 1
        if i < 0:
            return None
        sym_addr = self._addrs[i]
        # the preferred alias sits first among equal addresses
        j = bisect.bisect_left(self._addrs, sym_addr)
        sym = self._sorted[j]
        offset = addr - sym_addr
        k = bisect.bisect_right(self._addrs, sym_addr)
        if k >= len(self._addrs):
            if offset >= max(sym.size, _LAST_SYMBOL_SLACK if sym.size == 0 else 0):
                return None
        return sym, offset

    def size_of(self, sym: Symbol) -> int:
        """The symbol's size, or the gap to the next address when unrecorded."""
        if sym.size:
            return sym.size
        k = bisect.bisect_right(self._addrs, sym.address)
        return self._addrs[k] - sym.address if k < len(self._addrs) else 0

    def symbolize(self, addr: int) -> str:
        """`func+0x1c/0x80`, with ` [module]` for module symbols; hex address
        when no symbol holds `addr`."""
        hit = self.nearest(addr)
        if hit is None:
            return f"{addr:#x}"
        sym, offset = hit
        text = f"{sym.name}+{offset:#x}/{self.size_of(sym):#x}"
        return f"{text} [{sym.module}]" if sym.module else text

    def __repr__(self) -> str:
        return f"<SymbolTable {self.source} {len(self)} symbols kaslr={self.kaslr_offset:#x}>"
