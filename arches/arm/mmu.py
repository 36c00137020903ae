"""ARM page-table formats.

The short-descriptor format (ARM ARM B3.5; Linux's arch/arm/include/asm/
pgtable-2level-hwdef.h): a 4096-entry first-level (L1) table of 4-byte
descriptors, each 1 MB of VA: fault, a coarse page table (bits 31:10, a
256-entry L2 table of 4-byte descriptors) or a section (bits 31:20, 1 MB;
with bit 18 a 16 MB supersection, repeated in 16 consecutive L1 entries,
bits 31:24 plus physical bits 35:32 in 23:20 and 39:36 in 8:5). An L2
descriptor is a fault, a 64 KB large page (bits 31:16, repeated in 16
entries) or a 4 KB small page (bits 31:12; bit 0 is XN). Linux allocates its
pgd as 2048 pairs of L1 entries and keeps its own "Linux pt" beside each
hardware L2 table, but the hardware entries are complete: the walk reads
them alone.

The long-descriptor format (LPAE, ARM ARM B3.6; pgtable-3level-hwdef.h), as
the 32-bit Linux kernel uses it: a 4-entry first level (VA bits 31:30), then
512-entry second and third levels (bits 29:21, 20:12) of 8-byte descriptors
with output address bits 39:12; bits 1:0 are 0b11 for a table (levels 1-2)
or a page (level 3), 0b01 for a 1 GB / 2 MB block.

FreeBSD's arm minidump stores one short L2 entry per 4K page: `l2_page`.
"""

from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

L2_TYPE_MASK = 0x3
L2_TYPE_INV = 0x0  # fault
L2_TYPE_L = 0x1  # large page, 64 KB
L2_TYPE_S = 0x2  # small page, 4 KB (v6: bit 0 is XN, so 0x3 is a small page too)
L2_TYPE_T = 0x3  # v4 only: tiny page, 1 KB, never used by FreeBSD
L2_L_SIZE = 1 << 16
L2_L_FRAME = 0xFFFF0000
L2_S_FRAME = 0xFFFFF000
PAGE = 4096

L1_TYPE_MASK = 0x3
L1_TYPE_FAULT = 0x0
L1_TYPE_TABLE = 0x1  # coarse page table
# 0b10 and, on cores with PXN (bit 0), 0b11: a section or supersection
L1_SUPERSECTION = 1 << 18
L1_TABLE_FRAME = 0xFFFFFC00
L1_SECTION_FRAME = 0xFFF00000
L1_SUPER_FRAME = 0xFF000000
SECTION_SIZE = 1 << 20
SUPERSECTION_SIZE = 1 << 24

LPAE_ADDR_MASK = 0x000000FFFFFFF000  # output address bits 39:12
LPAE_TYPE_MASK = 0x3
LPAE_TYPE_TABLE = 0x3  # table (levels 1-2) or page (level 3)
LPAE_TYPE_BLOCK = 0x1


def l2_page(entry: int, va: int, v4: bool) -> int | None:
    """The physical address of the 4K page holding `va`, mapped by L2 `entry`
    (64 KB large pages are taken 4K at a time), or None when it maps nothing."""
    kind = entry & L2_TYPE_MASK
    if kind == L2_TYPE_INV or (v4 and kind == L2_TYPE_T):
        return None
    if kind == L2_TYPE_L:
        return (entry & L2_L_FRAME) + (va & (L2_L_SIZE - 1) & L2_S_FRAME)
    return entry & L2_S_FRAME


def supersection_base(entry: int) -> int:
    """The physical base of a supersection descriptor (up to 40 bits)."""
    return (entry & L1_SUPER_FRAME) | ((entry >> 20) & 0xF) << 32 | ((entry >> 5) & 0xF) << 36


class ArmTables(RadixTable):
    """Either ARMv7 table format; `lpae` says which."""

    lpae: bool = False


class ArmShortTables(ArmTables):
    """The ARMv7 short-descriptor format: L1 of 4096 x 1 MB, L2 of 256 x 4 KB."""

    entry_size = 4
    levels = [Level(20, 12), Level(12, 8)]
    lpae = False

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if depth == 0:
            kind = entry & L1_TYPE_MASK
            if kind == L1_TYPE_FAULT:
                return INVALID, 0
            if kind == L1_TYPE_TABLE:
                return TABLE, entry & L1_TABLE_FRAME
            if entry & L1_SUPERSECTION:
                return LEAF, supersection_base(entry)
            return LEAF, entry & L1_SECTION_FRAME
        kind = entry & L2_TYPE_MASK
        if kind == L2_TYPE_INV:
            return INVALID, 0
        if kind == L2_TYPE_L:
            return LEAF, entry & L2_L_FRAME
        return LEAF, entry & L2_S_FRAME

    def leaf_size(self, entry: int, depth: int) -> int | None:
        if depth == 0 and entry & L1_SUPERSECTION:
            return SUPERSECTION_SIZE
        if depth == 1 and entry & L2_TYPE_MASK == L2_TYPE_L:
            return L2_L_SIZE
        return None


class ArmLpaeTables(ArmTables):
    """The ARMv7 long-descriptor format (LPAE) of a 32-bit VA: 4 x 1 GB, 512 x
    2 MB, 512 x 4 KB."""

    entry_size = 8
    levels = [Level(30, 2), Level(21, 9), Level(12, 9)]
    lpae = True

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        kind = entry & LPAE_TYPE_MASK
        base = entry & LPAE_ADDR_MASK
        if depth == 2:
            return (LEAF, base) if kind == LPAE_TYPE_TABLE else (INVALID, 0)
        if kind == LPAE_TYPE_TABLE:
            return TABLE, base
        if kind == LPAE_TYPE_BLOCK:
            return LEAF, base & ~((1 << self.levels[depth].shift) - 1)
        return INVALID, 0
