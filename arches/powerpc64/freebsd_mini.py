"""FreeBSD powerpc64 minidumps of HPT kernels (libkvm's kvm_minidump_powerpc64.c
and kvm_minidump_powerpc64_hpt.c, sys/powerpc/include/minidump.h).

The kernel-map section is the hashed page table itself (header.pmapsize
bytes, a power of two of 128-byte PTE groups). Kernel virtual addresses in
[kernbase, kernend) are found by hashing into it with the kernel's own VSIDs;
the direct map [dmapbase, dmapend) is linear, pa = va - dmapbase; addresses
below dmapbase are the kernel image's link addresses, moved by
startkernel - KERNBASE (the kernel runs relocated), as libkvm does. The radix
MMU's minidumps (mmu_radix) are refused by the format reader."""

from typing import Any

from kvmcore.errors import DumpFormatError, NotMappedError
from kvmcore.kernelmap import KernelMapTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation, Translator

from .mmu import (
    KERNEL_VSID_BIT,
    LP_PAGE_SHIFT,
    LPTEH_B_MASK,
    LPTEH_BIG,
    LPTEH_HID,
    LPTEH_VALID,
    PAGE_SHIFT,
    PTE_HASH_MASK,
    PTE_SIZE,
    PTEG_ENTRIES,
    SEGMENT_SHIFT,
    SEGMENT_SIZE,
    VSID_VRMA,
    ava_page,
    ava_page_bits,
    ava_vsid,
    kernel_vsid,
    primary_hash,
    pte_page,
)

#: the kernel's link address (sys/powerpc/include/vmparam.h KERNBASE, kvm_powerpc64.h)
KERNBASE = 0x100100
PAGE = 1 << PAGE_SHIFT
#: bound on the kernel VM area's segments (FreeBSD's is 32 GB: 128 segments)
MAX_SEGMENTS = 1 << 16


class FreeBSDPowerpc64MiniTranslator(KernelMapTranslator):
    """kva -> pa from a powerpc64 HPT minidump (libkvm's ppc64mmu_hpt_kvatop)."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = hdr = mem.header
        self.path = mem.path
        groups = hdr.pmapsize // (PTE_SIZE * PTEG_ENTRIES)
        if groups == 0 or groups & (groups - 1):
            raise DumpFormatError(
                f"powerpc64 minidump: hashed page table of {hdr.pmapsize:#x} bytes is not a "
                "power of two of 128-byte PTE groups",
                self.path,
            )
        self.hmask = groups - 1
        self.nptes = groups * PTEG_ENTRIES
        self.reloc = hdr.startkernel - KERNBASE if hdr.startkernel else 0
        self.first_esid = hdr.kernbase >> SEGMENT_SHIFT
        self.end_esid = -(-hdr.kernend // SEGMENT_SIZE)  # libkvm: segments while ea < kernend
        if self.end_esid - self.first_esid > MAX_SEGMENTS:
            raise DumpFormatError(
                f"powerpc64 minidump: implausible kernel VM area {hdr.kernbase:#x}.."
                f"{hdr.kernend:#x}",
                self.path,
            )
        self.kernel_start = min(hdr.dmapbase, hdr.kernbase)

    def describe(self) -> dict[str, Any]:
        hdr = self.hdr
        return {"mmu": hdr.mmu_name, "hpt_groups": self.hmask + 1, "kernbase": hdr.kernbase}

    def linear_map_address(self, pa: int) -> int | None:
        va = self.hdr.dmapbase + pa
        return va if va < self.hdr.dmapend else None

    def _pte(self, ptex: int) -> tuple[int, int]:
        return self.mem.pmap_entry(2 * ptex), self.mem.pmap_entry(2 * ptex + 1)

    def _search(self, ea: int) -> tuple[int, int] | None:
        """The (pte_hi, pte_lo) mapping `ea`, from its primary then its secondary group."""
        vsid = kernel_vsid(ea >> SEGMENT_SHIFT)
        shift = PAGE_SHIFT  # the kernel VM area's segments have 4 KB base pages
        index = (ea & (SEGMENT_SIZE - 1)) >> shift
        ava_shift, index_shift = ava_page_bits(shift)
        for hid in (0, LPTEH_HID):
            hashed = primary_hash(vsid, index)
            if hid:
                hashed = ~hashed & PTE_HASH_MASK
            group = hashed & self.hmask
            for ptex in range(group * PTEG_ENTRIES, (group + 1) * PTEG_ENTRIES):
                hi, lo = self._pte(ptex)
                if (
                    hi & LPTEH_HID == hid
                    and hi & LPTEH_VALID
                    and hi & LPTEH_B_MASK == 0
                    and ava_vsid(hi) == vsid
                    and ava_page(hi) >> ava_shift == index >> index_shift
                    and not hi & LPTEH_BIG
                ):
                    return hi, lo
        return None

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        ea = va + self.reloc if va < hdr.dmapbase else va
        if hdr.dmapbase <= ea < hdr.dmapend:
            return Translation(va, ea - hdr.dmapbase, PAGE)
        if ea >= hdr.kernbase:
            if not self.first_esid <= ea >> SEGMENT_SHIFT < self.end_esid:
                raise NotMappedError(
                    f"virtual address {va:#x} lies past the kernel VM area "
                    f"({hdr.kernbase:#x}..{hdr.kernend:#x})",
                    va,
                    self.path,
                )
            found = self._search(ea)
            if found is None:
                raise NotMappedError(
                    f"virtual address {va:#x} is not mapped (no valid PTE in its primary or "
                    "secondary hash group)",
                    va,
                    self.path,
                )
            page, _ = pte_page(found[0], found[1], ea)
            return Translation(va, page | (ea & (PAGE - 1)), PAGE)
        raise NotMappedError(
            f"virtual address {va:#x} is neither in the kernel VM area (from "
            f"{hdr.kernbase:#x}) nor in the direct map",
            va,
            self.path,
        )

    def _kernel_map(self) -> list[MappedRange]:
        """Every valid PTE of a kernel VM-area segment, its EA recovered from
        its group (the low bits of the page index) and its AVA (the high ones)."""
        segments = {kernel_vsid(e): e for e in range(self.first_esid, self.end_esid)}
        out = []
        for ptex in range(self.nptes):
            hi, lo = self._pte(ptex)
            if not hi & LPTEH_VALID or hi & LPTEH_B_MASK:
                continue
            vsid = ava_vsid(hi)
            if not vsid & KERNEL_VSID_BIT or vsid >> PAGE_SHIFT == VSID_VRMA:
                continue
            esid = segments.get(vsid)
            if esid is None:
                continue  # a direct-map segment: reported linearly below
            shift = LP_PAGE_SHIFT if hi & LPTEH_BIG else PAGE_SHIFT
            group = ptex // PTEG_ENTRIES
            if hi & LPTEH_HID:
                group = ~group & self.hmask  # the primary hash's low bits
            low = (group ^ vsid) & self.hmask
            ava_shift, index_shift = ava_page_bits(shift)
            high = (ava_page(hi) >> ava_shift) << index_shift
            index = (low | (high & ~self.hmask)) & ((1 << (SEGMENT_SHIFT - shift)) - 1)
            ea = (esid << SEGMENT_SHIFT) | (index << shift)
            pa, size = pte_page(hi, lo, ea)
            out.append(MappedRange(ea, pa, size, size))
        out.sort(key=lambda r: r.va)
        return out


def _build(ctx: Any) -> Translator:
    return FreeBSDPowerpc64MiniTranslator(ctx.mem)


register_translator(TranslatorFlavour("powerpc64", FREEBSD_MINI, is_freebsd_mini, _build))
