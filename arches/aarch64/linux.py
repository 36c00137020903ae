"""Linux arm64 full dumps: the walk starts at swapper_pg_dir, whose physical
address is its image address less kimage_voffset; TCR_EL1_T1SZ (else VA_BITS)
gives the walked VA size and PAGESIZE the granule, all from VMCOREINFO. The
linear map starts at PAGE_OFFSET = -(1 << VA_BITS), at PHYS_OFFSET."""

from typing import Any

from kvmcore.errors import UnsupportedError
from kvmcore.notes import VmcoreInfo
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext

from .mmu import Aarch64Tables

MASK64 = 0xFFFFFFFFFFFFFFFF


def _info(ctx: TranslationContext) -> VmcoreInfo:
    if ctx.vmcoreinfo is None:
        raise UnsupportedError(
            "no VMCOREINFO: cannot locate the kernel page tables "
            "(QEMU dumps need -device vmcoreinfo)",
            ctx.path,
        )
    return ctx.vmcoreinfo


def va_bits(ctx: TranslationContext) -> int:
    """The size of the kernel's (TTBR1) address space the tables walk."""
    info = _info(ctx)
    t1sz = info.number("TCR_EL1_T1SZ")
    bits = 64 - t1sz if t1sz else info.number("VA_BITS") or 48
    if not 36 <= bits <= 52:
        raise UnsupportedError(
            f"aarch64: impossible kernel VA size {bits} bits (VMCOREINFO TCR_EL1_T1SZ / VA_BITS)",
            ctx.path,
        )
    return bits


class LinuxArm64Translator(RadixTranslator[Aarch64Tables]):
    """The radix walk, plus the linear map's layout for linear_map_address."""

    def __init__(self, ctx: TranslationContext) -> None:
        info = _info(ctx)
        voffset = info.number("kimage_voffset")
        if voffset is None:
            raise UnsupportedError("VMCOREINFO has no NUMBER(kimage_voffset)", ctx.path)
        root = ctx.page_table_root
        if root is None:
            swapper = info.symbol("swapper_pg_dir")
            if swapper is None:
                raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", ctx.path)
            root = (swapper - voffset) & MASK64
        page_size = info.page_size or 4096
        super().__init__(
            Aarch64Tables(page_size.bit_length() - 1, va_bits(ctx)),
            root,
            ctx.mem.read_phys,
            "little",
            ctx.path,
        )
        self.info = info
        self.phys_offset = (info.number("PHYS_OFFSET") or 0) & MASK64

    def linear_map_address(self, pa: int) -> int:
        """The linear-map (direct map) alias of physical address `pa`."""
        # PAGE_OFFSET is fixed by the configured VA_BITS, even when TTBR1 uses fewer
        bits = self.info.number("VA_BITS") or self.table.va_bits
        if not 36 <= bits <= 52:
            raise UnsupportedError(f"aarch64: impossible VA_BITS {bits} in VMCOREINFO", self.path)
        page_offset = (-(1 << bits)) & MASK64
        return ((pa - self.phys_offset) & MASK64) | page_offset

    def describe(self) -> dict[str, Any]:
        return {"va_bits": self.table.va_bits, "page_size": 1 << self.table.page_shift}


register_translator(TranslatorFlavour("aarch64", LINUX, is_linux, LinuxArm64Translator))
