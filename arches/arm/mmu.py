"""The ARM short-descriptor second-level (L2) entry, as FreeBSD's arm minidump
stores one per 4K page (lib/libkvm/kvm_arm.h, sys/arm/include/pte-v6.h)."""

L2_TYPE_MASK = 0x3
L2_TYPE_INV = 0x0  # fault
L2_TYPE_L = 0x1  # large page, 64 KB
L2_TYPE_S = 0x2  # small page, 4 KB (v6: bit 0 is XN, so 0x3 is a small page too)
L2_TYPE_T = 0x3  # v4 only: tiny page, 1 KB, never used by FreeBSD
L2_L_SIZE = 1 << 16
L2_L_FRAME = 0xFFFF0000
L2_S_FRAME = 0xFFFFF000
PAGE = 4096


def l2_page(entry: int, va: int, v4: bool) -> int | None:
    """The physical address of the 4K page holding `va`, mapped by L2 `entry`
    (64 KB large pages are taken 4K at a time), or None when it maps nothing."""
    kind = entry & L2_TYPE_MASK
    if kind == L2_TYPE_INV or (v4 and kind == L2_TYPE_T):
        return None
    if kind == L2_TYPE_L:
        return (entry & L2_L_FRAME) + (va & (L2_L_SIZE - 1) & L2_S_FRAME)
    return entry & L2_S_FRAME
