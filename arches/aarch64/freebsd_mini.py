"""FreeBSD arm64 minidumps (libkvm's kvm_minidump_aarch64.c)."""

from collections.abc import Iterator
from typing import Any

from kvmcore.errors import NotMappedError
from kvmcore.kernelmap import KernelMapTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation

ATTR_MASK = 0xFFFC000000000FFF  # sys/arm64/include/pte.h ATTR_MASK
L3_PAGE = 3


class FreeBSDArm64MiniTranslator(KernelMapTranslator):
    """kva -> pa from an arm64 minidump (libkvm's _aarch64_minidump_vatop): the
    direct map first, pa = va - dmapbase + dmapphys; then the L3 array, one
    entry per page from kernbase (the writer expands L1/L2 blocks into fake L3
    pages, so block mappings arrive here as runs of L3 entries)."""

    def __init__(self, mem: Any) -> None:
        super().__init__(mem)
        self.page_size = mem.header.page_size
        self.shift = self.page_size.bit_length() - 1

    def translate(self, va: int) -> Translation:
        hdr, page = self.hdr, self.page_size
        if hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase + hdr.dmapphys, page)
        if va >= hdr.kernbase:
            index = (va - hdr.kernbase) >> self.shift
            l3 = self.mem.pmap_entry(index)
            if l3 is None:
                raise NotMappedError(
                    f"virtual address {va:#x} lies past the minidump's kernel "
                    f"map ({self.mem.pmap_count} L3 entries)",
                    va,
                    self.path,
                )
            if l3 & 3 != L3_PAGE:
                raise NotMappedError(
                    f"virtual address {va:#x} is not mapped (L3 entry {index} is not a page)",
                    va,
                    self.path,
                )
            return Translation(va, (l3 & ~ATTR_MASK) | (va & (page - 1)), page)
        raise NotMappedError(
            f"virtual address {va:#x} is neither in the minidump's kernel map "
            f"(from {hdr.kernbase:#x}) nor in the direct map",
            va,
            self.path,
        )

    def _kernel_map(self) -> Iterator[MappedRange]:
        hdr, page = self.hdr, self.page_size
        for index in range(self.mem.pmap_count):
            l3 = self.mem.pmap_entry(index)
            if l3 & 3 == L3_PAGE:
                yield MappedRange(hdr.kernbase + (index << self.shift), l3 & ~ATTR_MASK, page, page)


register_translator(
    TranslatorFlavour(
        "aarch64", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDArm64MiniTranslator(ctx.mem)
    )
)
