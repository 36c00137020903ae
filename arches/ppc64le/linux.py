"""Linux ppc64le full dumps with the radix MMU: the walk starts at
swapper_pg_dir (init_mm's PGD, the process-table entry of PID 0 that maps the
kernel quadrant 0xc...), whose physical address is its linear-map address
less PAGE_OFFSET (0xc000000000000000: the kernel image lies in the linear
map); PAGESIZE from VMCOREINFO sets the last level. VMCOREINFO's
NUMBER(RADIX_MMU)=0 means the hash MMU (POWER8 and older), which is refused;
kernels before it exported that line (6.1 does not) are checked by the root
table itself: a radix PGD entry is valid and its next-level size (NLS, the low
5 bits) is the PUD's 9 index bits, which a hash-MMU kernel's software table
does not write.
"""

from typing import Any

from kvmcore.errors import AddressError, NotMappedError, UnsupportedError
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import LINUX, TranslatorFlavour, is_linux, register_translator
from kvmcore.translate import Translation, TranslationContext

from .mmu import KERNEL_QUADRANT, NLS_MASK, PAGE_PRESENT, RadixTables

PAGE_OFFSET = KERNEL_QUADRANT
MASK64 = 0xFFFFFFFFFFFFFFFF


class LinuxPpc64Translator(RadixTranslator[RadixTables]):
    def __init__(self, ctx: TranslationContext) -> None:
        info = ctx.vmcoreinfo
        if info is None:
            raise UnsupportedError(
                "no VMCOREINFO: cannot locate the kernel page tables (neither a note nor the "
                "kernel's own in memory)",
                ctx.path,
            )
        radix = info.number("RADIX_MMU")
        if radix == 0:
            raise UnsupportedError(
                "ppc64: this kernel uses the hash MMU (VMCOREINFO NUMBER(RADIX_MMU)=0, "
                "POWER8 or older); only the radix MMU (POWER9+) is supported",
                ctx.path,
            )
        root = ctx.page_table_root
        if root is None:
            swapper = info.symbol("swapper_pg_dir")
            if swapper is None:
                raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", ctx.path)
            if swapper & KERNEL_QUADRANT != KERNEL_QUADRANT:
                raise UnsupportedError(
                    f"ppc64: SYMBOL(swapper_pg_dir)={swapper:#x} is not a kernel address",
                    ctx.path,
                )
            root = swapper - PAGE_OFFSET
        page_size = info.page_size or 65536
        # the tree is big-endian whatever the kernel's byte order
        super().__init__(
            RadixTables(page_size.bit_length() - 1), root, ctx.mem.read_phys, "big", ctx.path
        )
        self.kernel_start = PAGE_OFFSET
        if radix is None:
            self._check_radix_root(ctx)

    def _check_radix_root(self, ctx: TranslationContext) -> None:
        table = self.table
        count = 1 << table.levels[0].bits
        try:
            raw = ctx.mem.read_phys(self.root, count * 8)
        except AddressError as exc:
            raise UnsupportedError(
                f"ppc64: swapper_pg_dir at physical {self.root:#x} is not in the dump "
                f"({exc.message})",
                ctx.path,
            ) from None
        entries = [int.from_bytes(raw[i : i + 8], "big") for i in range(0, len(raw), 8)]
        used = [e for e in entries if e]
        if not used or any(
            not e & PAGE_PRESENT or (e & NLS_MASK) != table.levels[1].bits for e in used
        ):
            raise UnsupportedError(
                "ppc64: swapper_pg_dir is not a radix tree (no valid entries with the PUD's "
                "next-level size): a hash-MMU kernel (POWER8 or older), which is not supported",
                ctx.path,
            )

    def translate(self, va: int) -> Translation:
        if va & KERNEL_QUADRANT != KERNEL_QUADRANT:
            raise NotMappedError(
                f"virtual address {va:#x} is not in the kernel quadrant", va, self.path
            )
        return super().translate(va)

    def linear_map_address(self, pa: int) -> int:
        return (pa + PAGE_OFFSET) & MASK64

    def describe(self) -> dict[str, Any]:
        return {"mmu": "radix", "page_size": 1 << self.table.page_shift}


register_translator(TranslatorFlavour("ppc64le", LINUX, is_linux, LinuxPpc64Translator))
