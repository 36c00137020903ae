"""The two 32-bit x86 page-table formats (as Xen's gdbserver walks 32-bit
and PAE guests); the 64-bit one is in arches/x86_64/mmu.py."""

from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

PRESENT = 1 << 0
PSE = 1 << 7  # a 4 MB (2-level) or 2 MB (PAE) leaf in a page directory
PAE_ADDR_MASK = 0x000FFFFFFFFFF000  # bits 51:12; bit 63 is NX


class I386Tables(RadixTable):
    """Non-PAE: 1024-entry page directory and page tables of 4-byte entries;
    a PSE directory entry maps 4 MB (PSE-36 puts physical bits 39:32 in entry
    bits 20:13). PAE: a 4-entry PDPT, then 512-entry directories and tables of
    8-byte entries; a PS directory entry maps 2 MB."""

    def __init__(self, pae: bool) -> None:
        self.pae = pae
        if pae:
            self.entry_size = 8
            self.levels = [Level(30, 2), Level(21, 9), Level(12, 9)]
        else:
            self.entry_size = 4
            self.levels = [Level(22, 10), Level(12, 10)]

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PRESENT:
            return INVALID, 0
        if self.pae:
            if depth == 2:
                return LEAF, entry & PAE_ADDR_MASK
            if depth == 1 and entry & PSE:
                return LEAF, entry & PAE_ADDR_MASK & ~((1 << 21) - 1)
            return TABLE, entry & PAE_ADDR_MASK  # PDPT entries have no PS bit
        if depth == 1:
            return LEAF, entry & 0xFFFFF000
        if entry & PSE:
            return LEAF, (entry & 0xFFC00000) | (((entry >> 13) & 0xFF) << 32)
        return TABLE, entry & 0xFFFFF000
