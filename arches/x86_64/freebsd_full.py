"""FreeBSD amd64 full dumps (libkvm's kvm_amd64.c): one 4-level walk from the
kernel PML4. Its physical address is the value of the kernel variable
KPML4phys; the kernel image sits at pa = va - kernbase, so the variable is read
there (libkvm's bootstrap). Built lazily, on the first translation, so that
opening the dump needs no symbols; an explicit root overrides the symbol."""

from kvmcore.errors import SymbolError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import FREEBSD_FULL, TranslatorFlavour, is_freebsd_full, register_translator
from kvmcore.translate import LazyTranslator, TranslationContext, Translator

from .mmu import X86_64Tables

KERNBASE = 0xFFFFFFFF80000000  # sys/amd64/include/vmparam.h


def page_table_root(ctx: TranslationContext) -> int:
    if ctx.page_table_root is not None:
        return ctx.page_table_root
    kpml4 = ctx.resolve_symbol("KPML4phys")
    if kpml4 is None:
        raise SymbolError(
            "FreeBSD full dump: the page-table root is the kernel variable "
            "KPML4phys; open the dump with the kernel's symbols (kernel or "
            "kernel.debug) or set it with dump.set_page_table_root(pa)",
            ctx.path,
        )
    kernbase = ctx.resolve_symbol("kernbase") or KERNBASE
    return int.from_bytes(ctx.mem.read_phys(kpml4 - kernbase, 8), "little")


def build(ctx: TranslationContext) -> Translator:
    def make() -> Translator:
        return RadixTranslator(
            X86_64Tables(False), page_table_root(ctx), ctx.mem.read_phys, "little", ctx.path
        )

    return LazyTranslator(make, ctx.path)


register_translator(TranslatorFlavour("x86_64", FREEBSD_FULL, is_freebsd_full, build))
