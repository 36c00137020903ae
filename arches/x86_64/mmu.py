"""The x86_64 page-table format: PML5 (LA57) or PML4 down to 4K pages, with
PS leaves of 1 GB (PDPT) and 2 MB (PD). Entries are 8 bytes, little-endian.

With AMD SME/SEV active, entries carry the encryption bit (the "C-bit", bit
47 or 51, Linux's sme_me_mask) inside the physical-address field: it is
not part of the address, and the walk masks it out (Linux exports it as
VMCOREINFO's NUMBER(sme_mask); makedumpfile and crash do the same)."""

from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

PRESENT = 1 << 0
PSE = 1 << 7  # a leaf at the PDPT (1 GB) or PD (2 MB) level
ADDR_MASK = 0x000FFFFFFFFFF000


class X86_64Tables(RadixTable):
    entry_size = 8

    def __init__(self, five_level: bool, sme_mask: int = 0) -> None:
        #: the physical-address bits of an entry, less the SME encryption bit
        self.addr_mask = ADDR_MASK & ~sme_mask
        shifts = (48, 39, 30, 21, 12) if five_level else (39, 30, 21, 12)
        self.levels = [Level(s, 9) for s in shifts]
        self._leaf_ok = {len(shifts) - 3: 30, len(shifts) - 2: 21}  # depth -> PS leaf shift
        self._last = len(shifts) - 1
        self.va_bits = 57 if five_level else 48

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PRESENT:
            return INVALID, 0
        if depth == self._last:
            return LEAF, entry & self.addr_mask
        shift = self._leaf_ok.get(depth)
        if shift and entry & PSE:
            return LEAF, entry & self.addr_mask & ~((1 << shift) - 1)
        return TABLE, entry & self.addr_mask

    def canonical(self, va: int) -> int:
        if va & (1 << (self.va_bits - 1)):
            va |= ~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF
        return va
