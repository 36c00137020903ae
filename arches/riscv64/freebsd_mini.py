"""FreeBSD riscv minidumps (libkvm's kvm_minidump_riscv.c, sys/riscv/include/minidump.h).

The kernel map is one L3 PTE per 4K page from kernbase (the writer expands
L2 superpages into fake L3 pages); the direct map [dmapbase, dmapend) maps
pa = va - dmapbase + dmapphys."""

from collections.abc import Iterator
from typing import Any

from kvmcore.errors import NotMappedError
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation, Translator, coalesce

from .mmu import PAGE, leaf_page


class FreeBSDRiscvMiniTranslator(Translator):
    """kva -> pa from a riscv minidump (libkvm's _riscv_minidump_vatop): the
    direct map first, then the L3 array."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.path = mem.path

    def linear_map_address(self, pa: int) -> int | None:
        hdr = self.hdr
        va = pa - hdr.dmapphys + hdr.dmapbase
        return va if pa >= hdr.dmapphys and va < hdr.dmapend else None

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

    def _direct_map(self) -> Iterator[MappedRange]:
        hdr = self.hdr
        for rng in self.mem.ranges():
            va = rng.start - hdr.dmapphys + hdr.dmapbase
            if rng.start >= hdr.dmapphys and va + rng.size <= hdr.dmapend:
                yield MappedRange(va, rng.start, rng.size, PAGE)

    def walk(self) -> Iterator[MappedRange]:
        parts = [self._kernel_map(), self._direct_map()]
        if self.hdr.dmapbase < self.hdr.kernbase:
            parts.reverse()
        for part in parts:
            yield from coalesce(part)


register_translator(
    TranslatorFlavour(
        "riscv64", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDRiscvMiniTranslator(ctx.mem)
    )
)
