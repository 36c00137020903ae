"""The RISC-V Sv39/Sv48 page-table entry (the privileged spec; FreeBSD's
sys/riscv/include/pte.h, libkvm's kvm_riscv.h)."""

PTE_V = 1 << 0
PTE_R, PTE_W, PTE_X = 1 << 1, 1 << 2, 1 << 3
PTE_RWX = PTE_R | PTE_W | PTE_X
PTE_PPN0_S = 10
#: the PPN field, bits 53:10; bits 63:54 are Svpbmt/Svnapot/reserved, not address
PTE_PPN_MASK = ((1 << 44) - 1) << PTE_PPN0_S
PAGE = 4096


def leaf_page(entry: int) -> int | None:
    """The physical page a leaf PTE maps, or None when it is invalid or not a
    leaf (a leaf is valid with one of R, W, X set)."""
    if not entry & PTE_V or not entry & PTE_RWX:
        return None
    return ((entry & PTE_PPN_MASK) >> PTE_PPN0_S) << 12
