"""Linux arm (32-bit) full dumps. The dump holds no TTBR, so the walk starts at
swapper_pg_dir (VMCOREINFO's SYMBOL(swapper_pg_dir), else the symbol a vmlinux
or System.map gives), whose physical address is its virtual one less
PAGE_OFFSET plus PHYS_OFFSET: the kernel maps lowmem linearly from
PAGE_OFFSET at PHYS_OFFSET (arch/arm/include/asm/memory.h __virt_to_phys).

32-bit Arm kernels export neither PAGE_OFFSET nor PHYS_OFFSET in VMCOREINFO
(6.12 exports no arm-specific line at all), so:

- PHYS_OFFSET is the start of the lowest physical range of the dump (RAM's
  start, where the kernel's ARM_PATCH_PHYS_VIRT code puts it on the virt
  machine and on boards whose RAM starts on a 16 MB boundary); a
  NUMBER(PHYS_OFFSET) line, if a kernel exports one, wins;
- PAGE_OFFSET is the one of the VMSPLIT choices (3G, 3G_OPT, 2G, 1G) for which
  the tables rooted at swapper_pg_dir - PAGE_OFFSET + PHYS_OFFSET map
  swapper_pg_dir to that physical address;
- the format (short descriptors, or LPAE for the -lpae flavours) is
  CONFIG_ARM_LPAE in VMCOREINFO when present, else the one that validates the
  same way (short descriptors tried first).
"""

from typing import Any

from kvmcore.errors import KvmcoreError, UnsupportedError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import TranslationContext

from .mmu import ArmLpaeTables, ArmShortTables, ArmTables

#: CONFIG_VMSPLIT_3G (the default), 3G_OPT, 2G, 1G
PAGE_OFFSETS = (0xC0000000, 0xB0000000, 0x80000000, 0x40000000)
#: the module area below PAGE_OFFSET (MODULES_VADDR = PAGE_OFFSET - 16 MB = TASK_SIZE)
MODULES_SIZE = 16 << 20
MASK32 = 0xFFFFFFFF


def _swapper_pg_dir(ctx: TranslationContext) -> int:
    info = ctx.vmcoreinfo
    va = info.symbol("swapper_pg_dir") if info is not None else None
    if va is None:
        va = ctx.resolve_symbol("swapper_pg_dir")
    if va is None:
        raise UnsupportedError(
            "arm: no SYMBOL(swapper_pg_dir) in VMCOREINFO and no symbol source names it "
            "(give the vmlinux or --system-map System.map)",
            ctx.path,
        )
    return va & MASK32


def _phys_offset(ctx: TranslationContext) -> tuple[int, str]:
    info = ctx.vmcoreinfo
    value = info.number("PHYS_OFFSET") if info is not None else None
    if value is not None:
        return value, "VMCOREINFO NUMBER(PHYS_OFFSET)"
    ranges = ctx.mem.ranges()
    if not ranges:
        raise UnsupportedError("arm: the dump has no physical memory ranges", ctx.path)
    return min(r.start for r in ranges), "lowest physical range of the dump"


def _formats(ctx: TranslationContext) -> list[ArmTables]:
    info = ctx.vmcoreinfo
    lpae = info.get("CONFIG_ARM_LPAE") if info is not None else None
    if lpae == "y":
        return [ArmLpaeTables()]
    if info is not None and "CONFIG_ARM_LPAE" in info:
        return [ArmShortTables()]
    return [ArmShortTables(), ArmLpaeTables()]


class LinuxArmTranslator(RadixTranslator[ArmTables]):
    """The short-descriptor (or LPAE) walk from swapper_pg_dir, plus the linear
    map's layout for linear_map_address."""

    def __init__(self, ctx: TranslationContext) -> None:
        swapper = _swapper_pg_dir(ctx)
        self.phys_offset, self.phys_offset_source = _phys_offset(ctx)
        info = ctx.vmcoreinfo
        vmalloc = info.number("VMALLOC_START") if info is not None else None
        self.vmalloc_start = vmalloc & MASK32 if vmalloc is not None else None
        tried = []
        for table in _formats(ctx):
            for offset in PAGE_OFFSETS:
                if swapper < offset:
                    continue
                root = swapper - offset + self.phys_offset
                tried.append(f"{'LPAE' if table.lpae else 'short'}@{offset:#x}")
                walker = RadixTranslator(table, root, ctx.mem.read_phys, "little", ctx.path)
                try:
                    ok = walker.translate(swapper).pa == root
                except KvmcoreError:
                    ok = False
                if ok:
                    self.page_offset = offset
                    self.kernel_start = offset - MODULES_SIZE
                    if ctx.page_table_root is not None:
                        root = ctx.page_table_root
                    super().__init__(table, root, ctx.mem.read_phys, "little", ctx.path)
                    return
        raise UnsupportedError(
            f"arm: no page-table format and PAGE_OFFSET ({', '.join(tried)}) maps "
            f"swapper_pg_dir ({swapper:#x}) to its own physical address "
            f"(PHYS_OFFSET {self.phys_offset:#x}, the {self.phys_offset_source})",
            ctx.path,
        )

    def linear_map_address(self, pa: int) -> int | None:
        """The lowmem (linear-map) alias of physical `pa`, or None above lowmem."""
        if pa < self.phys_offset:
            return None
        va = pa - self.phys_offset + self.page_offset
        limit = self.vmalloc_start if self.vmalloc_start is not None else 1 << 32
        return va if va < limit else None

    def describe(self) -> dict[str, Any]:
        return {
            "paging": "LPAE" if self.table.lpae else "short-descriptor",
            "page_offset": hex(self.page_offset),
            "phys_offset": hex(self.phys_offset),
            "phys_offset_source": self.phys_offset_source,
            "swapper_pg_dir_pa": hex(self.root),
        }


register_translator(TranslatorFlavour("arm", LINUX, is_linux, LinuxArmTranslator))
