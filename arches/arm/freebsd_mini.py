"""FreeBSD arm minidumps (libkvm's kvm_minidump_arm.c, sys/arm/include/minidump.h).

The kernel map is one 4-byte L2 entry per 4K page from kernbase (the writer's
pmap_dump_kextract turns sections into page entries); the header's mmuformat
says v4 or v6 descriptors. There is no direct map."""

from typing import Any

from kvmcore.formats.freebsd_minidump import ARM_MMU_V4
from kvmcore.kernelmap import PageArrayTranslator
from kvmcore.registry import FREEBSD_MINI, TranslatorFlavour, is_freebsd_mini, register_translator

from .mmu import l2_page


class FreeBSDArmMiniTranslator(PageArrayTranslator):
    """kva -> pa from an arm minidump's L2 entry array (libkvm's _arm_minidump_kvatop)."""

    entry_name = "L2 entry"

    def __init__(self, mem: Any) -> None:
        super().__init__(mem)
        self.v4 = self.hdr.mmuformat == ARM_MMU_V4

    def describe(self) -> dict[str, Any]:
        return {"mmuformat": "v4" if self.v4 else "v6", "kernbase": self.hdr.kernbase}

    def page_of(self, entry: int, va: int) -> int | None:
        return l2_page(entry, va, self.v4)


register_translator(
    TranslatorFlavour(
        "arm", FREEBSD_MINI, is_freebsd_mini, lambda ctx: FreeBSDArmMiniTranslator(ctx.mem)
    )
)
