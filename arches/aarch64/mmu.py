"""The VMSAv8-64 translation-table format for TTBR1 (the kernel half): 4K,
16K or 64K granules, 36- to 52-bit VAs, block descriptors at the upper levels,
output address bits [51:48] in entry bits [15:12] with 64K pages."""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable


class Aarch64Tables(RadixTable):
    """VMSAv8-64 translation tables for TTBR1 (the kernel half)."""

    entry_size = 8

    def __init__(self, page_shift: int, va_bits: int) -> None:
        if page_shift not in (12, 14, 16):
            raise UnsupportedError(f"aarch64: unsupported page size {1 << page_shift}")
        if not 36 <= va_bits <= 52:
            raise UnsupportedError(f"aarch64: unsupported VA size {va_bits} bits")
        per_level = page_shift - 3
        nlevels = -(-(va_bits - page_shift) // per_level)
        levels = []
        for i in range(nlevels):
            shift = page_shift + per_level * (nlevels - 1 - i)
            bits = min(per_level, va_bits - shift) if i == 0 else per_level
            levels.append(Level(shift, bits))
        self.levels = levels
        self.page_shift = page_shift
        self.va_bits = va_bits
        # output address bits [47:page_shift], plus [51:48] from bits [15:12] with 64K pages
        self._oa_mask = ((1 << 48) - 1) & ~((1 << page_shift) - 1)

    def _address(self, entry: int, shift: int) -> int:
        pa = entry & self._oa_mask & ~((1 << shift) - 1)
        if self.page_shift == 16:
            pa |= ((entry >> 12) & 0xF) << 48
        return pa

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        kind = entry & 3
        last = depth == len(self.levels) - 1
        if kind == 0 or kind == 2:
            return INVALID, 0
        if last:
            return (LEAF, self._address(entry, self.page_shift)) if kind == 3 else (INVALID, 0)
        if kind == 3:
            return TABLE, self._address(entry, self.page_shift)
        # a block descriptor: 1 GB / 2 MB with 4K, 32 MB with 16K, 512 MB with 64K
        return LEAF, self._address(entry, self.levels[depth].shift)

    def canonical(self, va: int) -> int:
        return va | (~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF)
