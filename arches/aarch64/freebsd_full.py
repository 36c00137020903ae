"""FreeBSD arm64 full dumps (libkvm has no reader for them): a 4K-granule,
48-bit walk from the kernel pmap's L0 table, whose physical address
(kernel_pmap_store.pm_l0_paddr) must be given with dump.set_page_table_root."""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import FREEBSD_FULL, TranslatorFlavour, is_freebsd_full, register_translator
from kvmcore.translate import LazyTranslator, TranslationContext, Translator

from .mmu import Aarch64Tables


def build(ctx: TranslationContext) -> Translator:
    def make() -> Translator:
        if ctx.page_table_root is None:
            raise UnsupportedError(
                "FreeBSD arm64 full dump: give the kernel pmap's L0 table physical "
                "address (kernel_pmap_store.pm_l0_paddr) with dump.set_page_table_root(pa)",
                ctx.path,
            )
        return RadixTranslator(
            Aarch64Tables(12, 48), ctx.page_table_root, ctx.mem.read_phys, "little", ctx.path
        )

    return LazyTranslator(make, ctx.path)


register_translator(TranslatorFlavour("aarch64", FREEBSD_FULL, is_freebsd_full, build))
