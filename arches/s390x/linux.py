"""Linux s390x full dumps: the walk starts at swapper_pg_dir, the kernel's
top DAT table, whose type (region-first..segment) its entries' TT bits give,
as crash's s390x_vtop reads it.

Where swapper_pg_dir is physically: until Linux 6.5 the kernel image lies in
the identity map (virtual == physical, KASLR moving both alike: KERNELOFFSET
is its distance from the link address); from 6.6 the image is mapped apart
and VMCOREINFO says where: KERNELOFFPHYS (the image's physical offset) beside
KERNELOFFSET, and IDENTITYBASE for the identity map's virtual base
(libkdumpfile's s390x code and crash's s390x.c use the same lines). The
translator also checks that the root holds a valid table.
"""

from typing import Any

from kvmcore.errors import AddressError, UnsupportedError
from kvmcore.notes import VmcoreInfo
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext

from .mmu import ENTRY_INVALID, TYPE_NAMES, S390xTables, top_table_type

MASK64 = 0xFFFFFFFFFFFFFFFF
#: __START_KERNEL: the link address of the kernel image's text (6.6+: TEXT_OFFSET
#: in the kernel's own virtual area; the image starts at KERNELOFFSET itself)
LOWCORE_VMCORE_INFO = 0xE0C  # absolute lowcore: physical address of the VMCOREINFO note


def _info(ctx: TranslationContext) -> VmcoreInfo:
    if ctx.vmcoreinfo is None:
        raise UnsupportedError(
            "no VMCOREINFO: cannot locate the kernel page tables (neither a note nor the "
            "kernel's own in memory)",
            ctx.path,
        )
    return ctx.vmcoreinfo


def image_va_to_pa(info: VmcoreInfo, va: int) -> int:
    """Physical address of a kernel-image address (a SYMBOL() of VMCOREINFO)."""
    offphys = info.hex("KERNELOFFPHYS")
    if offphys is not None:
        # 6.6+: the image is mapped at KERNELOFFSET (virtual) from KERNELOFFPHYS
        return (va - (info.hex("KERNELOFFSET") or 0) + offphys) & MASK64
    return va  # the image in the identity map


class LinuxS390xTranslator(RadixTranslator[S390xTables]):
    def __init__(self, ctx: TranslationContext) -> None:
        info = _info(ctx)
        root = ctx.page_table_root
        if root is None:
            swapper = info.symbol("swapper_pg_dir")
            if swapper is None:
                raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", ctx.path)
            root = image_va_to_pa(info, swapper)
        try:
            first = int.from_bytes(ctx.mem.read_phys(root, 8), "big")
        except AddressError as exc:
            raise UnsupportedError(
                f"s390x: the kernel's top page table at physical {root:#x} is not in the dump "
                f"({exc.message})",
                ctx.path,
            ) from None
        if first & ENTRY_INVALID:
            raise UnsupportedError(
                f"s390x: the first entry of the kernel's top page table at {root:#x} is "
                f"invalid ({first:#018x}): not the kernel's table",
                ctx.path,
            )
        super().__init__(
            S390xTables(top_table_type(first)), root, ctx.mem.read_phys, "big", ctx.path
        )
        self.info = info
        identity = info.hex("IDENTITYBASE")
        self.identity_base = identity or 0
        self.kernel_start = 0

    def linear_map_address(self, pa: int) -> int:
        """The identity map's alias of `pa` (at 0 until 6.5, at IDENTITYBASE after)."""
        return (self.identity_base + pa) & MASK64

    def describe(self) -> dict[str, Any]:
        return {"top_table": TYPE_NAMES[self.table.top], "root": self.root}


register_translator(TranslatorFlavour("s390x", LINUX, is_linux, LinuxS390xTranslator))
