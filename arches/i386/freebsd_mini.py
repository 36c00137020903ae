"""FreeBSD i386 minidumps (libkvm's kvm_minidump_i386.c, sys/i386/include/minidump.h).

The kernel map is one PTE per 4K page from kernbase (KERNBASE): 4-byte
entries without PAE, 8-byte ones with PAE (header.paemode). The writer
(minidump_machdep_base.c) dumps each page-table page of the kernel's page
directory, a zero page where a directory entry is invalid, and a fake table
for a 4 MB / 2 MB superpage, so a large page arrives as a run of 4K PTEs.
There is no direct map."""

from collections.abc import Iterator
from typing import Any

from kvmcore.errors import NotMappedError
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator
from kvmcore.translate import MappedRange, Translation, Translator, coalesce

from .mmu import PAE_ADDR_MASK, PRESENT

PAGE = 4096
PG_FRAME = 0xFFFFF000  # non-PAE PTE frame (kvm_i386.h I386_PG_FRAME)


class FreeBSDI386MiniTranslator(Translator):
    """kva -> pa from an i386 minidump's PTE array (libkvm's _i386_minidump_vatop
    and _i386_minidump_vatop_pae)."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.path = mem.path
        self.frame = PAE_ADDR_MASK if self.hdr.paemode else PG_FRAME
        self.kernel_start = self.hdr.kernbase

    def describe(self) -> dict[str, Any]:
        return {"pae": self.hdr.paemode, "kernbase": self.hdr.kernbase}

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
        pte = self.mem.pmap_entry(index)
        if pte is None:
            raise NotMappedError(
                f"virtual address {va:#x} lies past the minidump's kernel map "
                f"({self.mem.pmap_count} PTEs from {hdr.kernbase:#x})",
                va,
                self.path,
            )
        if not pte & PRESENT:
            raise NotMappedError(
                f"virtual address {va:#x} is not mapped (PTE {index} is invalid)", va, self.path
            )
        return Translation(va, (pte & self.frame) | (va & (PAGE - 1)), PAGE)

    def walk(self) -> Iterator[MappedRange]:
        def pages() -> Iterator[MappedRange]:
            for index in range(self.mem.pmap_count):
                pte = self.mem.pmap_entry(index)
                if pte & PRESENT:
                    yield MappedRange(
                        self.hdr.kernbase + index * PAGE, pte & self.frame, PAGE, PAGE
                    )

        return coalesce(pages())


register_translator(
    TranslatorFlavour(
        "i386", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDI386MiniTranslator(ctx.mem)
    )
)
