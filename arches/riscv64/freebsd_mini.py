"""FreeBSD riscv minidumps (libkvm's kvm_minidump_riscv.c, sys/riscv/include/minidump.h).

The kernel map is one L3 PTE per 4K page from kernbase (the writer expands
L2 superpages into fake L3 pages); the direct map [dmapbase, dmapend) maps
pa = va - dmapbase + dmapphys."""

from collections.abc import Iterator

from kvmcore.errors import NotMappedError
from kvmcore.kernelmap import KernelMapTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation

from .mmu import PAGE, leaf_page


class FreeBSDRiscvMiniTranslator(KernelMapTranslator):
    """kva -> pa from a riscv minidump (libkvm's _riscv_minidump_vatop): the
    direct map first, then the L3 array."""

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        if hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase + hdr.dmapphys, PAGE)
        if va >= hdr.kernbase:
            index = (va - hdr.kernbase) >> 12
            entry = self.mem.pmap_entry(index)
            if entry is None:
                raise NotMappedError(
                    f"virtual address {va:#x} lies past the minidump's kernel map "
                    f"({self.mem.pmap_count} L3 entries from {hdr.kernbase:#x})",
                    va,
                    self.path,
                )
            page = leaf_page(entry)
            if page is None:
                raise NotMappedError(
                    f"virtual address {va:#x} is not mapped (L3 entry {index} is not a valid leaf)",
                    va,
                    self.path,
                )
            return Translation(va, page | (va & (PAGE - 1)), PAGE)
        raise NotMappedError(
            f"virtual address {va:#x} is neither in the minidump's kernel map "
            f"(from {hdr.kernbase:#x}) nor in the direct map",
            va,
            self.path,
        )

    def _kernel_map(self) -> Iterator[MappedRange]:
        for index in range(self.mem.pmap_count):
            page = leaf_page(self.mem.pmap_entry(index))
            if page is not None:
                yield MappedRange(self.hdr.kernbase + index * PAGE, page, PAGE, PAGE)


register_translator(
    TranslatorFlavour(
        "riscv64", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDRiscvMiniTranslator(ctx.mem)
    )
)
