"""Linux riscv64 full dumps. The dump holds no satp, so the walk starts at
swapper_pg_dir: its physical address is its image address less
va_kernel_pa_offset (the kernel image is mapped at KERNEL_LINK_ADDR +
KASLR, apart from the linear map). VA_BITS (39, 48 or 57: Sv39/Sv48/Sv57,
chosen at boot by the kernel from what the hart offers) gives the number of
levels. The linear map starts at PAGE_OFFSET, at phys_ram_base. All of these
come from VMCOREINFO (arch/riscv/kernel/vmcore_info.c, 5.19 and later)."""

from typing import Any

from kvmcore.errors import KvmcoreError, UnsupportedError
from kvmcore.notes import VmcoreInfo
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext

from .mmu import MODES, RiscvTables

MASK64 = 0xFFFFFFFFFFFFFFFF


def _info(ctx: TranslationContext) -> VmcoreInfo:
    if ctx.vmcoreinfo is None:
        raise UnsupportedError(
            "no VMCOREINFO (neither a note nor the kernel's own copy in memory): "
            "cannot locate the kernel page tables",
            ctx.path,
        )
    return ctx.vmcoreinfo


def _number(info: VmcoreInfo, key: str, path: str | None) -> int:
    value = info.number(key)
    if value is None:
        raise UnsupportedError(f"riscv64: VMCOREINFO has no NUMBER({key})", path)
    return value & MASK64


class LinuxRiscv64Translator(RadixTranslator[RiscvTables]):
    """The Sv39/Sv48/Sv57 walk from swapper_pg_dir, plus the linear map's
    layout for linear_map_address."""

    def __init__(self, ctx: TranslationContext) -> None:
        info = _info(ctx)
        self.va_kernel_pa_offset = _number(info, "va_kernel_pa_offset", ctx.path)
        self.page_offset = _number(info, "PAGE_OFFSET", ctx.path)
        self.phys_ram_base = _number(info, "phys_ram_base", ctx.path)
        swapper = info.symbol("swapper_pg_dir")
        root = ctx.page_table_root
        if root is None:
            if swapper is None:
                raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", ctx.path)
            root = (swapper - self.va_kernel_pa_offset) & MASK64
        bits = info.number("VA_BITS")
        self.va_bits_source = "VMCOREINFO NUMBER(VA_BITS)"
        if bits is None:
            bits = self._probe_va_bits(ctx, root, swapper)
        if bits not in MODES:
            raise UnsupportedError(
                f"riscv64: impossible VA_BITS {bits} (Sv39/Sv48/Sv57 have 39, 48, 57)", ctx.path
            )
        super().__init__(RiscvTables(bits), root, ctx.mem.read_phys, "little", ctx.path)

    def _probe_va_bits(self, ctx: TranslationContext, root: int, swapper: int | None) -> int:
        """Without NUMBER(VA_BITS): the mode whose walk maps swapper_pg_dir's own
        image address to the root (it is mapped in every mode, through the
        kernel image mapping)."""
        if swapper is not None:
            for bits in (57, 48, 39):
                walker = RadixTranslator(RiscvTables(bits), root, ctx.mem.read_phys, "little")
                try:
                    if walker.translate(swapper).pa == root:
                        self.va_bits_source = "walk of swapper_pg_dir"
                        return bits
                except KvmcoreError:
                    continue
        raise UnsupportedError(
            "riscv64: VMCOREINFO has no NUMBER(VA_BITS) and no paging mode maps "
            "swapper_pg_dir to itself",
            ctx.path,
        )

    def linear_map_address(self, pa: int) -> int:
        """The linear-map alias of physical address `pa`."""
        return (pa - self.phys_ram_base + self.page_offset) & MASK64

    def describe(self) -> dict[str, Any]:
        mode = {39: "Sv39", 48: "Sv48", 57: "Sv57"}[self.table.va_bits]
        return {
            "paging": mode,
            "va_bits": self.table.va_bits,
            "va_bits_source": self.va_bits_source,
            "page_offset": hex(self.page_offset),
            "phys_ram_base": hex(self.phys_ram_base),
            "va_kernel_pa_offset": hex(self.va_kernel_pa_offset),
        }


register_translator(TranslatorFlavour("riscv64", LINUX, is_linux, LinuxRiscv64Translator))
