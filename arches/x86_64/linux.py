"""Linux x86_64 full dumps: the walk starts at init_top_pgt, whose physical
address is its kernel-image address less __START_KERNEL_map plus phys_base
(both in VMCOREINFO); NUMBER(pgtable_l5_enabled) selects 5-level paging and
NUMBER(sme_mask), when non-zero, is the SME encryption bit masked out of
every entry."""

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext, Translator

from .mmu import X86_64Tables

START_KERNEL_MAP = 0xFFFFFFFF80000000


def page_table_root(ctx: TranslationContext) -> int:
    """Physical address of the kernel's top-level table (init_top_pgt)."""
    if ctx.page_table_root is not None:
        return ctx.page_table_root
    info = ctx.vmcoreinfo
    if info is None:
        raise UnsupportedError(
            "no VMCOREINFO: cannot locate the kernel page tables "
            "(QEMU dumps need -device vmcoreinfo)",
            ctx.path,
        )
    root = info.symbol("init_top_pgt") or info.symbol("init_level4_pgt")
    if root is None:
        raise UnsupportedError("VMCOREINFO has no SYMBOL(init_top_pgt)", ctx.path)
    return root - START_KERNEL_MAP + (info.number("phys_base") or 0)


def build(ctx: TranslationContext) -> Translator:
    info = ctx.vmcoreinfo
    five_level = bool(info and info.number("pgtable_l5_enabled"))
    sme_mask = (info.number("sme_mask") if info else None) or 0
    return RadixTranslator(
        X86_64Tables(five_level, sme_mask),
        page_table_root(ctx),
        ctx.mem.read_phys,
        "little",
        ctx.path,
    )


register_translator(TranslatorFlavour("x86_64", LINUX, is_linux, build))
