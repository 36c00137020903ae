"""FreeBSD arm minidumps (libkvm's kvm_minidump_arm.c, sys/arm/include/minidump.h).

The kernel map is one 4-byte L2 entry per 4K page from kernbase (the writer's
pmap_dump_kextract turns sections into page entries); the header's mmuformat
says v4 or v6 descriptors. There is no direct map."""

from collections.abc import Iterator
from typing import Any

from kvmcore.errors import NotMappedError
from kvmcore.formats.freebsd_minidump import ARM_MMU_V4
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation, Translator, coalesce

from .mmu import PAGE, l2_page


class FreeBSDArmMiniTranslator(Translator):
    """kva -> pa from an arm minidump's L2 entry array (libkvm's _arm_minidump_kvatop)."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.path = mem.path
        self.v4 = self.hdr.mmuformat == ARM_MMU_V4
        self.kernel_start = self.hdr.kernbase

    def describe(self) -> dict[str, Any]:
        return {"mmuformat": "v4" if self.v4 else "v6", "kernbase": self.hdr.kernbase}

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        if va < hdr.kernbase:
            raise NotMappedError(
                f"virtual address {va:#x} is below the minidump's kernel map "
                f"(from kernbase {hdr.kernbase:#x})",
                va,
                self.path,
            )
        index = (va - hdr.kernbase) >> 12
        entry = self.mem.pmap_entry(index)
        if entry is None:
            raise NotMappedError(
                f"virtual address {va:#x} lies past the minidump's kernel map "
                f"({self.mem.pmap_count} L2 entries from {hdr.kernbase:#x})",
                va,
                self.path,
            )
        page = l2_page(entry, va, self.v4)
        if page is None:
            raise NotMappedError(
                f"virtual address {va:#x} is not mapped (L2 entry {index} is invalid)",
                va,
                self.path,
            )
        return Translation(va, page | (va & (PAGE - 1)), PAGE)

    def walk(self) -> Iterator[MappedRange]:
        def pages() -> Iterator[MappedRange]:
            for index in range(self.mem.pmap_count):
                va = self.hdr.kernbase + index * PAGE
                page = l2_page(self.mem.pmap_entry(index), va, self.v4)
                if page is not None:
                    yield MappedRange(va, page, PAGE, PAGE)

        return coalesce(pages())


register_translator(
    TranslatorFlavour(
        "arm", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDArmMiniTranslator(ctx.mem)
    )
)
