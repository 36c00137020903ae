"""FreeBSD i386 minidumps (libkvm's kvm_minidump_i386.c, sys/i386/include/minidump.h).

The kernel map is one PTE per 4K page from kernbase (KERNBASE): 4-byte
entries without PAE, 8-byte ones with PAE (header.paemode). The writer
(minidump_machdep_base.c) dumps each page-table page of the kernel's page
directory, a zero page where a directory entry is invalid, and a fake table
for a 4 MB / 2 MB superpage, so a large page arrives as a run of 4K PTEs.
There is no direct map."""

from typing import Any

from kvmcore.kernelmap import PageArrayTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator

from .mmu import PAE_ADDR_MASK, PRESENT

PAGE = 4096
PG_FRAME = 0xFFFFF000  # non-PAE PTE frame (kvm_i386.h I386_PG_FRAME)


class FreeBSDI386MiniTranslator(PageArrayTranslator):
    """kva -> pa from an i386 minidump's PTE array (libkvm's _i386_minidump_vatop
    and _i386_minidump_vatop_pae)."""

    entry_name = "PTE"

    def __init__(self, mem: Any) -> None:
        super().__init__(mem)
        self.frame = PAE_ADDR_MASK if self.hdr.paemode else PG_FRAME

    def describe(self) -> dict[str, Any]:
        return {"pae": self.hdr.paemode, "kernbase": self.hdr.kernbase}

    def page_of(self, entry: int, va: int) -> int | None:
        return entry & self.frame if entry & PRESENT else None


register_translator(
    TranslatorFlavour(
        "i386", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDI386MiniTranslator(ctx.mem)
    )
)
