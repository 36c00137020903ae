"""The 64-bit PowerPC hashed page table (HPT) as FreeBSD's kernel fills it for
kernel addresses (Power ISA v2.07B Book III-S 5.7.7; FreeBSD's
sys/powerpc/aim/slb.c for the kernel VSIDs; libkvm's
kvm_minidump_powerpc64_hpt.c for the minidump's view of it).

An effective address (EA) lies in a 256 MB segment (ESID = EA >> 28); the
kernel's segment of ESID e has the virtual segment id KERNEL_VSID(e). The
virtual page of a 4 KB page (b = 12) or 16 MB page (b = 24) is hashed:
primary hash = (VSID & 0x7fffffffff) ^ ((EA & 0xfffffff) >> b), secondary
hash = ~primary; the PTE group (8 PTEs of 16 bytes) is hash & (groups - 1).
A PTE's high doubleword holds the abbreviated VPN (AVA: VSID in bits 61:12,
the top bits of the page index in bits 11:7), the page-size bit L (2), the
hash id H (1) and valid V (0); the low doubleword holds the real page number.
The table is big-endian whatever the kernel's byte order."""

SEGMENT_SHIFT = 28
SEGMENT_SIZE = 1 << SEGMENT_SHIFT
ESID_MASK = ~(SEGMENT_SIZE - 1) & 0xFFFFFFFFFFFFFFFF
PAGE_SHIFT, LP_PAGE_SHIFT = 12, 24
PTE_SIZE = 16
PTEG_ENTRIES = 8

KERNEL_VSID_BIT = 1 << 36
VSID_VRMA = 0x1FFFFFF  # the hypervisor's virtual real-mode area, not the kernel's

PTE_HASH_MASK = (1 << 39) - 1
LPTEH_VALID = 1 << 0
LPTEH_HID = 1 << 1
LPTEH_BIG = 1 << 2
LPTEH_B_MASK = 0xC000000000000000  # segment size: 0 = 256 MB
AVA_VSID_MASK = 0x3FFFFFFFFFFFF000
AVA_PAGE_MASK = 0xF80
PTEL_PA_MASK = 0x0FFFFFFFFFFFF000
PTEL_LP_PA_MASK = 0x0FFFFFFFFF000000


def kernel_vsid(esid: int) -> int:
    """The VSID FreeBSD gives the kernel segment `esid` (slb.c KERNEL_VSID)."""
    mixed = ((esid << 8) | (esid >> 28)) * 0x13BB
    return (mixed & (KERNEL_VSID_BIT - 1)) | KERNEL_VSID_BIT


def ava_vsid(pte_hi: int) -> int:
    return (pte_hi & AVA_VSID_MASK) >> 12


def ava_page(pte_hi: int) -> int:
    return (pte_hi & AVA_PAGE_MASK) >> 7


def ava_page_bits(page_shift: int) -> tuple[int, int]:
    """How the AVA's 5 page bits compare with a page index: (AVA shift, page
    index shift). The AVA keeps VA bits down to 77-b (at most bit 54 of the
    78-bit VA): 5 page-index bits with 4 KB pages, 4 with 16 MB pages."""
    kept = min(54, 77 - page_shift) + 1 - 50
    return 5 - kept, SEGMENT_SHIFT - page_shift - kept


def primary_hash(vsid: int, page_index: int) -> int:
    return (vsid & PTE_HASH_MASK) ^ page_index


def pte_page(pte_hi: int, pte_lo: int, ea: int) -> tuple[int, int]:
    """(physical address of the 4 KB page holding `ea`, page size) of a PTE."""
    if pte_hi & LPTEH_BIG:
        return (pte_lo & PTEL_LP_PA_MASK) | (ea & ((1 << LP_PAGE_SHIFT) - 1) & ~0xFFF), (
            1 << LP_PAGE_SHIFT
        )
    return pte_lo & PTEL_PA_MASK, 1 << PAGE_SHIFT
