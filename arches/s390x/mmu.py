"""z/Architecture DAT tables (Principles of Operation, "Translation Tables";
arch/s390/include/asm/pgtable.h).

The address-space-control element's designation type, which every region and
segment table entry repeats in its TT bits (0x0c), names the top table:
region-first (VA bits 53-63), region-second (42-52), region-third (31-41),
segment (20-30); page tables index bits 12-19. Region and segment tables have
2048 8-byte entries, page tables 256. Entries are big-endian.

- region entry: origin of the next table in bits ~0xfff, invalid bit 0x20;
  a region-third entry with FC (0x400) maps a 2 GB frame (origin ~0x7fffffff)
- segment entry: page-table origin ~0x7ff (2 KB aligned), invalid 0x20; FC
  (0x400) maps a 1 MB frame (origin ~0xfffff)
- page-table entry: frame ~0xfff, invalid bit 0x400 (_PAGE_INVALID)
"""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

REGION1, REGION2, REGION3, SEGMENT = 3, 2, 1, 0  # TT / ASCE DT values
TYPE_NAMES = {
    REGION1: "region-first",
    REGION2: "region-second",
    REGION3: "region-third",
    SEGMENT: "segment",
}
ENTRY_TT = 0x0C
ENTRY_INVALID = 0x20
ENTRY_FC = 0x400  # format control: a large frame (region-third, segment)
PAGE_INVALID = 0x400
REGION_ORIGIN = ~0xFFF
REGION3_ORIGIN_LARGE = ~0x7FFFFFFF
SEGMENT_ORIGIN = ~0x7FF
SEGMENT_ORIGIN_LARGE = ~0xFFFFF
PAGE_ORIGIN = ~0xFFF
MASK64 = 0xFFFFFFFFFFFFFFFF

_LEVELS = {
    REGION1: Level(53, 11),
    REGION2: Level(42, 11),
    REGION3: Level(31, 11),
    SEGMENT: Level(20, 11),
}


class S390xTables(RadixTable):
    """The tables below a top table of type `top` (REGION1..SEGMENT)."""

    entry_size = 8

    def __init__(self, top: int) -> None:
        if top not in _LEVELS:
            raise UnsupportedError(f"s390x: unknown top table type {top}")
        self.top = top
        #: the table type at each depth, down to the segment table
        self.types = list(range(top, SEGMENT - 1, -1))
        self.levels = [_LEVELS[t] for t in self.types] + [Level(12, 8)]

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if depth == len(self.types):  # page-table entry
            if entry & PAGE_INVALID:
                return INVALID, 0
            return LEAF, entry & PAGE_ORIGIN & MASK64
        kind = self.types[depth]
        if entry & ENTRY_INVALID or (entry & ENTRY_TT) >> 2 != kind:
            return INVALID, 0
        if kind == SEGMENT:
            if entry & ENTRY_FC:
                return LEAF, entry & SEGMENT_ORIGIN_LARGE & MASK64
            return TABLE, entry & SEGMENT_ORIGIN & MASK64
        if kind == REGION3 and entry & ENTRY_FC:
            return LEAF, entry & REGION3_ORIGIN_LARGE & MASK64
        return TABLE, entry & REGION_ORIGIN & MASK64


def top_table_type(first_entry: int) -> int:
    """The type of a table from one of its entries (their TT bits)."""
    return (first_entry & ENTRY_TT) >> 2
