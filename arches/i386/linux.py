"""Linux i386 full dumps: the walk starts at __pa(swapper_pg_dir) (the PDPT with
PAE). VMCOREINFO says whether the kernel uses PAE (CONFIG_X86_PAE) but not
where the direct map starts, so PAGE_OFFSET is found from the tables: the
right one makes the tables rooted at swapper_pg_dir - PAGE_OFFSET map
swapper_pg_dir's own address to that physical address."""

from typing import Any

from kvmcore.errors import AddressError, KvmcoreError, UnsupportedError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext

from .mmu import I386Tables

#: CONFIG_VMSPLIT_3G (the default) first, then the other splits
PAGE_OFFSETS = (0xC0000000, 0x80000000, 0xB0000000, 0x78000000, 0x40000000)


def is_pae(ctx: TranslationContext) -> bool:
    """PAE paging: the 686-pae kernel's VMCOREINFO has CONFIG_X86_PAE=y."""
    info = ctx.vmcoreinfo
    if info is None:
        return False
    return info.get("CONFIG_X86_PAE") == "y" or bool(info.number("X86_PAE"))


def swapper_pg_dir(ctx: TranslationContext) -> int:
    info = ctx.vmcoreinfo
    if info is None:
        raise UnsupportedError(
            "no VMCOREINFO: cannot locate the kernel page tables "
            "(QEMU dumps need -device vmcoreinfo)",
            ctx.path,
        )
    root = info.symbol("swapper_pg_dir")
    if root is None:
        raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", ctx.path)
    return root


def find_page_offset(ctx: TranslationContext, tables: I386Tables) -> int:
    va = swapper_pg_dir(ctx)
    for offset in PAGE_OFFSETS:
        if va < offset:
            continue
        walker = RadixTranslator(tables, va - offset, ctx.mem.read_phys, "little", ctx.path)
        try:
            if walker.translate(va).pa == va - offset:
                return offset
        except (AddressError, KvmcoreError):
            continue
    raise UnsupportedError(
        f"no PAGE_OFFSET among {', '.join(hex(o) for o in PAGE_OFFSETS)} makes the page "
        f"tables map swapper_pg_dir ({va:#x}) to its own physical address "
        f"({'PAE' if tables.pae else '2-level'} paging)",
        ctx.path,
    )


class LinuxI386Translator(RadixTranslator[I386Tables]):
    def __init__(self, ctx: TranslationContext) -> None:
        tables = I386Tables(is_pae(ctx))
        self.page_offset = find_page_offset(ctx, tables)
        self.kernel_start = self.page_offset
        root = ctx.page_table_root
        if root is None:
            root = swapper_pg_dir(ctx) - self.page_offset
        super().__init__(tables, root, ctx.mem.read_phys, "little", ctx.path)

    def describe(self) -> dict[str, Any]:
        return {"pae": self.table.pae, "page_offset": self.page_offset}


register_translator(TranslatorFlavour("i386", LINUX, is_linux, LinuxI386Translator))
