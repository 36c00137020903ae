"""The RISC-V Sv39/Sv48/Sv57 page-table format (privileged spec, "Virtual-Memory
System"; FreeBSD's sys/riscv/include/pte.h, libkvm's kvm_riscv.h): 4 KiB pages,
8-byte entries, 9 index bits per level, 3/4/5 levels.

An entry is valid when V (bit 0) is set; it is a leaf when any of R, W, X
(bits 1-3) is set, at any level (1 GiB gigapages, 2 MiB megapages, 512 GiB /
256 TiB pages at the upper levels of Sv48/Sv57), else it points to the next
table. The PPN sits in bits 53:10 (pa = PPN << 12); bits 63:54 hold Svpbmt /
Svnapot / reserved bits and are ignored."""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable

PTE_V = 1 << 0
PTE_R, PTE_W, PTE_X = 1 << 1, 1 << 2, 1 << 3
PTE_RWX = PTE_R | PTE_W | PTE_X
PTE_PPN0_S = 10
#: the PPN field, bits 53:10; bits 63:54 are Svpbmt/Svnapot/reserved, not address
PTE_PPN_MASK = ((1 << 44) - 1) << PTE_PPN0_S
PAGE = 4096
MODES = {39: 3, 48: 4, 57: 5}  # VA bits -> levels (Sv39, Sv48, Sv57)
#: satp.MODE values
SATP_MODES = {8: 39, 9: 48, 10: 57}


def leaf_page(entry: int) -> int | None:
    """The physical page a leaf PTE maps, or None when it is invalid or not a
    leaf (a leaf is valid with one of R, W, X set)."""
    if not entry & PTE_V or not entry & PTE_RWX:
        return None
    return ((entry & PTE_PPN_MASK) >> PTE_PPN0_S) << 12


class RiscvTables(RadixTable):
    """Sv39/Sv48/Sv57 tables of the kernel half."""

    entry_size = 8
    page_shift = 12

    def __init__(self, va_bits: int) -> None:
        if va_bits not in MODES:
            raise UnsupportedError(
                f"riscv64: unsupported VA size {va_bits} bits (Sv39, Sv48 and Sv57 are known)"
            )
        n = MODES[va_bits]
        self.levels = [Level(12 + 9 * (n - 1 - i), 9) for i in range(n)]
        self.va_bits = va_bits

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PTE_V:
            return INVALID, 0
        pa = ((entry & PTE_PPN_MASK) >> PTE_PPN0_S) << 12
        if entry & PTE_RWX:
            if pa & ((1 << self.levels[depth].shift) - 1):
                return INVALID, 0  # a misaligned superpage raises a page fault
            return LEAF, pa
        if depth == len(self.levels) - 1:
            return INVALID, 0  # a pointer at the last level is reserved
        return TABLE, pa

    def canonical(self, va: int) -> int:
        return va | (~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF)
