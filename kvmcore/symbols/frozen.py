"""A kernel's symbols as a few flat arrays, queried with no per-symbol objects.

A kernel has 100k-200k symbols and a command asks about a handful. Building
lists, a name dict and a sorted address index of all of them took 0.15-0.25 s
per run; these arrays are built once per kernel build, kept in the build-id
index cache (kvmcore.indexcache) and loaded with a few memory copies.

Entries are stored in three segments:

* A, `[0, a)`: the symbols a KASLR slide moves (kernel-half addresses that
  are not absolute values), sorted by address and stored slide-free, so one
  file serves every boot of the build;
* B, `[a, b)`: kernel-half absolute values (type a/A) of a kernel that lives
  in the upper half, sorted: they symbolize addresses but never move;
* U, `[b, n)`: what never symbolizes an address (per-cpu offsets, low
  absolute values), in the source's order.

Names are one latin-1 string with an offset per entry; `by_name` lists the
entries sorted by name (entry order among equal names), so a name lookup is
a binary search (the kernel's own kallsyms_lookup_name does the same with
kallsyms_seqs_of_names).
"""

from __future__ import annotations

import bisect
import struct
import sys
from array import array
from collections.abc import Iterator
from itertools import compress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .table import SymbolColumns

_MAGIC = b"KVMCSYM1"
# magic, n, a, b, word size, kernel floor, names length
_HEADER = struct.Struct("<8sIIIIQQ")


def _little(arr: array) -> array:
    if sys.byteorder != "little":
        arr = array(arr.typecode, arr)
        arr.byteswap()
    return arr


class FrozenSymbols:
    """Symbols in the three segments of the module docstring. `address(i,
    slide)` is entry i's runtime address for a kernel moved by `slide`."""

    def __init__(
        self,
        a: int,
        b: int,
        addrs: array,
        sizes: array,
        types: str,
        names: str,
        name_off: array,
        by_name: array,
        word_size: int,
        floor: int,
    ) -> None:
        self.n = len(addrs)
        self.a, self.b = a, b
        self.addrs, self.sizes, self.types = addrs, sizes, types
        self.names, self.name_off, self.by_name = names, name_off, by_name
        self.word_size, self.floor = word_size, floor
        self.mask = (1 << (word_size * 8)) - 1
        self._found: dict[str, tuple[int, int]] = {}

    # -- building ------------------------------------------------------------
    @classmethod
    def freeze(
        cls, cols: SymbolColumns, slide: int, word_size: int, floor: int | None = None
    ) -> FrozenSymbols:
        """From columns of runtime addresses of a kernel moved by `slide`
        (0: link-time addresses). `floor`: the lowest kernel address (None:
        the upper half)."""
        high = 1 << (word_size * 8 - 1)
        floor = high if floor is None else floor
        mask = (1 << (word_size * 8)) - 1
        addresses, types, n = cols.addresses, cols.types, len(cols)
        kernel = list(map(floor.__le__, addresses))
        absolute = [t in "aA" for t in types]
        seg_a = list(compress(range(n), [k and not x for k, x in zip(kernel, absolute)]))
        if floor >= high:
            seg_b = list(compress(range(n), [k and x for k, x in zip(kernel, absolute)]))
        else:  # a low kernel: absolute values would look like addresses
            seg_b = []
        in_ab = set(seg_a)
        in_ab.update(seg_b)
        rest = [i for i in range(n) if i not in in_ab]
        stored = {i: (addresses[i] - slide) & mask for i in seg_a} if slide else None
        seg_a.sort(key=stored.__getitem__ if stored else addresses.__getitem__)
        seg_b.sort(key=addresses.__getitem__)
        order = seg_a + seg_b + rest
        addrs = array(
            "Q", (stored[i] for i in seg_a) if stored else map(addresses.__getitem__, seg_a)
        )
        addrs.extend(map(addresses.__getitem__, seg_b + rest))
        if cols.sizes is not None:
            sizes = array("Q", map(cols.sizes.__getitem__, order))
        else:
            sizes = array("Q", bytes(8 * n))
        names = [cols.names[i] for i in order]
        name_off = array("I", [0])
        total = 0
        for name in names:
            total += len(name)
            name_off.append(total)
        by_name = array("I", sorted(range(n), key=names.__getitem__))
        return cls(
            len(seg_a),
            len(seg_a) + len(seg_b),
            addrs,
            sizes,
            "".join(map(types.__getitem__, order)),
            "".join(names),
            name_off,
            by_name,
            word_size,
            floor,
        )

    def to_bytes(self) -> bytes:
        names = self.names.encode("latin-1")
        header = _HEADER.pack(
            _MAGIC, self.n, self.a, self.b, self.word_size, self.floor, len(names)
        )
        return b"".join(
            (
                header,
                _little(self.addrs).tobytes(),
                _little(self.sizes).tobytes(),
                _little(self.name_off).tobytes(),
                _little(self.by_name).tobytes(),
                self.types.encode("latin-1"),
                names,
            )
        )

    @classmethod
    def from_bytes(cls, payload: bytes) -> FrozenSymbols | None:
        """What to_bytes wrote, or None when it does not add up."""
        if len(payload) < _HEADER.size:
            return None
        magic, n, a, b, word_size, floor, names_len = _HEADER.unpack_from(payload)
        if magic != _MAGIC or not a <= b <= n:
            return None
        at = _HEADER.size
        need = at + 8 * n + 8 * n + 4 * (n + 1) + 4 * n + n + names_len
        if len(payload) != need:
            return None
        view = memoryview(payload)
        parts = []
        for code, count in (("Q", n), ("Q", n), ("I", n + 1), ("I", n)):
            arr = array(code)
            arr.frombytes(view[at : at + arr.itemsize * count])
            if sys.byteorder != "little":
                arr.byteswap()
            parts.append(arr)
            at += arr.itemsize * count
        addrs, sizes, name_off, by_name = parts
        types = str(view[at : at + n], "latin-1")
        names = str(view[at + n :], "latin-1")
        if name_off[n] != names_len:
            return None
        return cls(a, b, addrs, sizes, types, names, name_off, by_name, word_size, floor)

    # -- single entries ------------------------------------------------------
    def name(self, i: int) -> str:
        return self.names[self.name_off[i] : self.name_off[i + 1]]

    def address(self, i: int, slide: int) -> int:
        if i < self.a and slide:
            return (self.addrs[i] + slide) & self.mask
        return self.addrs[i]

    def columns(self, slide: int) -> SymbolColumns:
        """Every entry as columns, runtime addresses for `slide`, entry order."""
        from .table import SymbolColumns

        addresses = self.addrs.tolist()
        if slide:
            mask = self.mask
            addresses[: self.a] = [(x + slide) & mask for x in addresses[: self.a]]
        off = self.name_off
        names = [self.names[off[i] : off[i + 1]] for i in range(self.n)]
        return SymbolColumns(names, addresses, list(self.types), self.sizes.tolist())

    # -- by name -------------------------------------------------------------
    def _span(self, name: str) -> tuple[int, int]:
        """The positions in by_name holding `name`: [lo, hi)."""
        hit = self._found.get(name)
        if hit is None:
            key = self._name_at
            lo = bisect.bisect_left(self.by_name, name, key=key)
            hi = lo
            while hi < self.n and key(self.by_name[hi]) == name:
                hi += 1
            hit = self._found[name] = (lo, hi)
        return hit

    def _name_at(self, i: int) -> str:
        return self.names[self.name_off[i] : self.name_off[i + 1]]

    def find(self, name: str) -> list[int]:
        """Every entry called `name`, in entry order."""
        lo, hi = self._span(name)
        return list(self.by_name[lo:hi])

    def __contains__(self, name: str) -> bool:
        lo, hi = self._span(name)
        return hi > lo

    def sorted_names(self) -> Iterator[str]:
        """Each distinct name once, sorted."""
        last = None
        for i in self.by_name:
            name = self._name_at(i)
            if name != last:
                yield name
                last = name

    # -- by address ------------------------------------------------------------
    def at_or_below(self, addr: int, slide: int) -> tuple[int, list[int]] | None:
        """(the greatest runtime address <= `addr` a symbol has, the entries
        there in entry order), or None."""
        best: tuple[int, list[int]] | None = None
        for lo, hi, shift in ((0, self.a, slide), (self.a, self.b, 0)):
            if lo == hi:
                continue
            key = addr - shift
            k = bisect.bisect_right(self.addrs, key, lo, hi)
            if k == lo:
                continue
            at = self.addrs[k - 1]
            j = bisect.bisect_left(self.addrs, at, lo, k)
            runtime = (at + shift) & self.mask
            if best is None or runtime > best[0]:
                best = (runtime, list(range(j, k)))
            elif runtime == best[0]:
                best[1].extend(range(j, k))
        return best

    def next_above(self, addr: int, slide: int) -> int | None:
        """The least runtime symbol address above `addr`, or None."""
        out: int | None = None
        for lo, hi, shift in ((0, self.a, slide), (self.a, self.b, 0)):
            k = bisect.bisect_right(self.addrs, addr - shift, lo, hi)
            if k < hi:
                nxt = (self.addrs[k] + shift) & self.mask
                out = nxt if out is None else min(out, nxt)
        return out
