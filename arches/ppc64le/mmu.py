"""The POWER ISA radix tree as Linux builds it (arch/powerpc/include/asm/
book3s/64/radix*.h, pgtable.h): four levels over a 52-bit effective address;
the PGD indexes bits 39-51 (13 bits), PUD 30-38, PMD 21-29 and the PTE page
bits 16-20 with 64K pages (12-20 with 4K). The top two address bits (the
quadrant, 0xc for the kernel) select the tree, not an index.

Entries are big-endian 64-bit words (the MMU reads them so) even on a
little-endian kernel:
- valid (_PAGE_PRESENT) 0x8000000000000000; leaf (_PAGE_PTE) 0x4000000000000000,
  allowed at the PUD (1 GB) and PMD (2 MB) levels too
- a leaf's real page number: bits 0x01fffffffffff000 (PTE_RPN_MASK)
- a directory entry's next-level base: ~0xc0000000000000ff (PUD_MASKED_BITS)
"""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

PAGE_PRESENT = 0x8000000000000000
PAGE_PTE = 0x4000000000000000
RPN_MASK = 0x01FFFFFFFFFFF000
NLB_MASK = 0x3FFFFFFFFFFFFF00
NLS_MASK = 0x1F  # a directory entry's next-level size (log2 of its entries)
EA_BITS = 52
KERNEL_QUADRANT = 0xC000000000000000


class RadixTables(RadixTable):
    entry_size = 8

    def __init__(self, page_shift: int) -> None:
        if page_shift not in (12, 16):
            raise UnsupportedError(f"ppc64: unsupported page size {1 << page_shift}")
        self.page_shift = page_shift
        self.levels = [
            Level(39, 13),
            Level(30, 9),
            Level(21, 9),
            Level(page_shift, 21 - page_shift),
        ]

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PAGE_PRESENT:
            return INVALID, 0
        if entry & PAGE_PTE:
            if depth == 0:
                return INVALID, 0  # no 512 TB leaves
            shift = self.levels[depth].shift
            return LEAF, entry & RPN_MASK & ~((1 << shift) - 1)
        if depth == len(self.levels) - 1:
            return INVALID, 0
        return TABLE, entry & NLB_MASK

    def canonical(self, va: int) -> int:
        return va | KERNEL_QUADRANT
