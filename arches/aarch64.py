"""aarch64: 4K/16K/64K granules, 39- to 52-bit kernel VAs, KASLR of the image
and of the linear map (from VMCOREINFO), PRSTATUS and gdb register layouts,
the Linux context-switch frame."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterator

from kvmcore.errors import KvmcoreError, NotMappedError, UnsupportedError
from kvmcore.freebsd.kva import LazyRootTranslator
from kvmcore.freebsd.pcb import pcb_member_offset
from kvmcore.pagetable import (INVALID, LEAF, TABLE, Level, MappedRange, RadixTable, coalesce,
                               RadixTranslator, Translation, Translator)
from kvmcore.registry import ArchBackend, GdbRegister, PrstatusLayout, register_arch
from kvmcore.unwind.dwarf_cfi import CfiRegisters
from kvmcore.unwind.framepointer import FramePointerUnwinder
from kvmcore.unwind.symbolic import CodeSymbols

if TYPE_CHECKING:
    from kvmcore.dump import Dump

# struct user_pt_regs: x0..x30, sp, pc, pstate
USER_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")


class Aarch64Tables(RadixTable):
    """VMSAv8-64 translation tables for TTBR1 (the kernel half)."""

    entry_size = 8

    def __init__(self, page_shift: int, va_bits: int) -> None:
        if page_shift not in (12, 14, 16):
            raise UnsupportedError(f"aarch64: unsupported page size {1 << page_shift}")
        if not 36 <= va_bits <= 52:
            raise UnsupportedError(f"aarch64: unsupported VA size {va_bits} bits")
        per_level = page_shift - 3
        nlevels = -(-(va_bits - page_shift) // per_level)
        levels = []
        for i in range(nlevels):
            shift = page_shift + per_level * (nlevels - 1 - i)
            bits = min(per_level, va_bits - shift) if i == 0 else per_level
            levels.append(Level(shift, bits))
        self.levels = levels
        self.page_shift = page_shift
        self.va_bits = va_bits
        # output address bits [47:page_shift], plus [51:48] from bits [15:12] with 64K pages
        self._oa_mask = ((1 << 48) - 1) & ~((1 << page_shift) - 1)

    def _address(self, entry: int, shift: int) -> int:
        pa = entry & self._oa_mask & ~((1 << shift) - 1)
        if self.page_shift == 16:
            pa |= ((entry >> 12) & 0xF) << 48
        return pa

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        kind = entry & 3
        last = depth == len(self.levels) - 1
        if kind == 0 or kind == 2:
            return INVALID, 0
        if last:
            return (LEAF, self._address(entry, self.page_shift)) if kind == 3 else (INVALID, 0)
        if kind == 3:
            return TABLE, self._address(entry, self.page_shift)
        # a block descriptor: 1 GB / 2 MB with 4K, 32 MB with 16K, 512 MB with 64K
        return LEAF, self._address(entry, self.levels[depth].shift)

    def canonical(self, va: int) -> int:
        return va | (~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF)


@register_arch("arm64")
class Aarch64(ArchBackend):
    name = "aarch64"
    word_size = 8
    pc_reg, sp_reg, fp_reg = "pc", "sp", "x29"
    elf_machine = 183  # EM_AARCH64
    freebsd_machine = "arm64"
    prstatus_layout = PrstatusLayout(size=392, pid_offset=32, regs_offset=112,
                                     reg_names=USER_REGS, reg_size=8)
    vmcoreinfo_keys = ("NUMBER(kimage_voffset)", "NUMBER(TCR_EL1_T1SZ)")
    gdb_arch = "aarch64"
    gdb_registers = tuple(
        [GdbRegister(f"x{i}", 64) for i in range(31)]
        + [GdbRegister("sp", 64, "data_ptr"), GdbRegister("pc", 64, "code_ptr"),
           GdbRegister("cpsr", 32, "cpsr_flags", source="pstate")])
    gdb_features = ("org.gnu.gdb.aarch64.core",)

    def _info(self):
        if self.vmcoreinfo is None:
            raise UnsupportedError("no VMCOREINFO: cannot locate the kernel page tables "
                                   "(QEMU dumps need -device vmcoreinfo)", self.path)
        return self.vmcoreinfo

    @property
    def va_bits(self) -> int:
        info = self._info()
        t1sz = info.number("TCR_EL1_T1SZ")
        bits = 64 - t1sz if t1sz else info.number("VA_BITS") or 48
        if not 36 <= bits <= 52:
            raise UnsupportedError(f"aarch64: impossible kernel VA size {bits} bits "
                                   "(VMCOREINFO TCR_EL1_T1SZ / VA_BITS)", self.path)
        return bits

    @property
    def kimage_voffset(self) -> int:
        value = self._info().number("kimage_voffset")
        if value is None:
            raise UnsupportedError("VMCOREINFO has no NUMBER(kimage_voffset)", self.path)
        return value & 0xFFFFFFFFFFFFFFFF

    @property
    def phys_offset(self) -> int:
        value = self._info().number("PHYS_OFFSET")
        return (value or 0) & 0xFFFFFFFFFFFFFFFF

    @property
    def pac_mask(self) -> int:
        if self.mem.facts.os == "freebsd":
            # no VMCOREINFO; FreeBSD arm64 kernels use 48-bit VAs from
            # VM_MIN_KERNEL_ADDRESS 0xffff000000000000: the top 16 bits of a
            # kernel address are all ones, whatever a PAC put there
            return FREEBSD_KERNEL_VA_TOP
        return (self._info().number("KERNELPACMASK") or 0) & 0xFFFFFFFFFFFFFFFF

    def strip_pac(self, address: int) -> int:
        """Remove a pointer-authentication code from a kernel return address."""
        mask = self.pac_mask
        return address | mask if mask else address

    def linear_map_address(self, pa: int) -> int:
        """The linear-map (direct map) alias of physical address `pa`."""
        # PAGE_OFFSET is fixed by the configured VA_BITS, even when TTBR1 uses fewer
        va_bits = self._info().number("VA_BITS") or self.va_bits
        if not 36 <= va_bits <= 52:
            raise UnsupportedError(f"aarch64: impossible VA_BITS {va_bits} in VMCOREINFO",
                                   self.path)
        page_offset = (-(1 << va_bits)) & 0xFFFFFFFFFFFFFFFF
        return ((pa - self.phys_offset) & 0xFFFFFFFFFFFFFFFF) | page_offset

    def page_table_root(self) -> int:
        root = self._info().symbol("swapper_pg_dir")
        if root is None:
            raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", self.path)
        return (root - self.kimage_voffset) & 0xFFFFFFFFFFFFFFFF

    def full_translator(self) -> Translator:
        if self.mem.facts.os == "freebsd":
            return self.freebsd_full_translator()
        page_size = self._info().page_size or 4096
        tables = Aarch64Tables(page_size.bit_length() - 1, self.va_bits)
        return RadixTranslator(tables, self.page_table_root(), self.mem.read_phys, "little",
                               self.path)

    # -- FreeBSD (translators defined at the end of this module) --------------
    def mini_translator(self) -> Translator:
        return FreeBSDArm64MiniTranslator(self.mem)

    def freebsd_full_translator(self) -> Translator:
        """FreeBSD arm64 full dumps (libkvm has no reader for them): the walk
        starts at the kernel pmap's L0 table, whose physical address must be
        given with set_page_table_root (kernel_pmap_store.pm_l0_paddr)."""
        def make() -> Translator:
            root = getattr(self, "freebsd_root", None)
            if root is None:
                raise UnsupportedError(
                    "FreeBSD arm64 full dump: give the kernel pmap's L0 table physical "
                    "address (kernel_pmap_store.pm_l0_paddr) with "
                    "dump.arch.set_page_table_root(pa)", self.path)
            return RadixTranslator(Aarch64Tables(12, 48), root, self.mem.read_phys, "little",
                                   self.path)

        self._freebsd_lazy = LazyRootTranslator(make, self.path)
        return self._freebsd_lazy

    def unwinder(self, dump: "Dump") -> "Aarch64Unwinder":
        return Aarch64Unwinder(dump)

    def symfile_cfi(self, dump: "Dump") -> tuple[Any, list[Any]] | None:
        """Frame-pointer CFI for the symbol file (see aarch64_fp_cfi)."""
        if dump.os != "linux":
            return None
        return aarch64_fp_cfi(dump)

    def freebsd_pcb_registers(self, read: Any, pcb: int, types: Any) -> dict[str, int]:
        """arm64 struct pcb: FreeBSD 14+ has pcb_x[12] = x19..x30 then pcb_sp at
        96; older kernels pcb_x[31] = x0..x30 then pcb_sp. With types the array
        length is measured (pcb_sp - pcb_x); without, the current layout is
        assumed. pc = lr (x30)."""
        off_x = pcb_member_offset(types, "pcb_x")
        off_sp = pcb_member_offset(types, "pcb_sp")
        if off_x is None or off_sp is None:
            off_x, off_sp = 0, 96
        count = (off_sp - off_x) // 8
        if count == 12:
            names = [f"x{i}" for i in range(19, 31)]
        elif count == 31:
            names = [f"x{i}" for i in range(31)]
        else:
            raise UnsupportedError(f"arm64 struct pcb with {count} saved x registers", self.path)
        raw = read(pcb + off_x, 8 * count)
        regs = {n: int.from_bytes(raw[8 * i:8 * i + 8], "little") for i, n in enumerate(names)}
        regs["sp"] = int.from_bytes(read(pcb + off_sp, 8), "little")
        regs["pc"] = regs["x30"]
        return regs

    def linux_switch_frame(self, dump: "Dump", task: Any) -> dict[str, int]:
        """thread.cpu_context holds x19-x28, fp, sp and pc as cpu_switch_to left them."""
        types = dump.types
        base = task + types.offsetof("struct task_struct", "thread.cpu_context")
        regs = {}
        for member in ("x19", "x20", "x21", "x22", "x23", "x24", "x25", "x26", "x27", "x28"):
            regs[member] = dump.read_ptr(base + types.offsetof("struct cpu_context", member))
        regs["x29"] = dump.read_ptr(base + types.offsetof("struct cpu_context", "fp"))
        regs["sp"] = dump.read_ptr(base + types.offsetof("struct cpu_context", "sp"))
        regs["pc"] = self.strip_pac(dump.read_ptr(base + types.offsetof("struct cpu_context", "pc")))
        return regs


# -- FreeBSD ------------------------------------------------------------------
FREEBSD_ATTR_MASK = 0xFFFC000000000FFF  # sys/arm64/include/pte.h ATTR_MASK
FREEBSD_L3_PAGE = 3
FREEBSD_KERNEL_VA_TOP = 0xFFFF000000000000


class FreeBSDArm64MiniTranslator(Translator):
    """kva -> pa from an arm64 minidump (libkvm's _aarch64_minidump_vatop): the
    direct map first, pa = va - dmapbase + dmapphys; then the L3 array, one
    entry per page from kernbase (the writer expands L1/L2 blocks into fake L3
    pages, so block mappings arrive here as runs of L3 entries)."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.page_size = mem.header.page_size
        self.shift = self.page_size.bit_length() - 1
        self.path = mem.path

    def translate(self, va: int) -> Translation:
        hdr, page = self.hdr, self.page_size
        if hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase + hdr.dmapphys, page)
        if va >= hdr.kernbase:
            index = (va - hdr.kernbase) >> self.shift
            l3 = self.mem.pmap_entry(index)
            if l3 is None:
                raise NotMappedError(f"virtual address {va:#x} lies past the minidump's kernel "
                                     f"map ({self.mem.pmap_count} L3 entries)", va, self.path)
            if l3 & 3 != FREEBSD_L3_PAGE:
                raise NotMappedError(f"virtual address {va:#x} is not mapped (L3 entry {index} "
                                     "is not a page)", va, self.path)
            return Translation(va, (l3 & ~FREEBSD_ATTR_MASK) | (va & (page - 1)), page)
        raise NotMappedError(f"virtual address {va:#x} is neither in the minidump's kernel map "
                             f"(from {hdr.kernbase:#x}) nor in the direct map", va, self.path)

    def _kernel_map(self) -> Iterator[MappedRange]:
        hdr, page = self.hdr, self.page_size
        for index in range(self.mem.pmap_count):
            l3 = self.mem.pmap_entry(index)
            if l3 & 3 == FREEBSD_L3_PAGE:
                yield MappedRange(hdr.kernbase + (index << self.shift), l3 & ~FREEBSD_ATTR_MASK,
                                  page, page)

    def _direct_map(self) -> Iterator[MappedRange]:
        hdr = self.hdr
        for rng in self.mem.ranges():
            va = rng.start - hdr.dmapphys + hdr.dmapbase
            if rng.start >= hdr.dmapphys and va + rng.size <= hdr.dmapend:
                yield MappedRange(va, rng.start, rng.size, self.page_size)

    def walk(self) -> Iterator[MappedRange]:
        parts = [self._kernel_map(), self._direct_map()]
        if self.hdr.dmapbase < self.hdr.kernbase:
            parts.reverse()
        for part in parts:
            yield from coalesce(part)


# -- kernel backtraces --------------------------------------------------
# aarch64 backtraces: the x29 frame-record chain (Linux builds arm64 with
# frame pointers), return addresses stripped of pointer-authentication codes,
# and el1 exception frames crossed through their struct pt_regs.
# 
# Exception entry (arch/arm64/kernel/entry.S, kernel_entry) stores the
# interrupted {x29, elr} as a frame record inside pt_regs (`stackframe`) and
# points x29 at it, so a return address into entry code (el1h_64_sync, ...,
# el0t_64_irq) means the next record sits at pt_regs + offsetof(stackframe).


PT_REGS = USER_REGS  # struct pt_regs starts with struct user_pt_regs
# offsetof(struct pt_regs, stackframe) in 5.x-6.x (checked: 304 in Debian's 6.1 DWARF)
DEFAULT_STACKFRAME_OFFSET = 304
ENTRY_PREFIXES = ("el1h_64_", "el1t_64_", "el0t_64_", "el0t_32_", "vectors")
PSTATE_MODE_MASK = 0xF  # M[3:0]: 0 = EL0t


# DWARF register numbers (AAPCS64 DWARF): x0-x30 are 0-30, sp is 31; the
# return address column is x30, whose caller value becomes pc
CFI_REGISTERS = CfiRegisters({**{i: f"x{i}" for i in range(31)}, 31: "sp"}, sp_column=31,
                             pc_name="pc")


class Aarch64Unwinder(FramePointerUnwinder):
    pc_reg, sp_reg, fp_reg, lr_reg = "pc", "sp", "x29", "x30"
    cfi_registers = CFI_REGISTERS

    def __init__(self, dump: "Dump") -> None:
        super().__init__(dump)
        self._stackframe_offset: int | None = None
        self.entry_text = (self.syms.address("__entry_text_start"),
                           self.syms.address("__entry_text_end"))

    def clean(self, address: int) -> int:
        strip = getattr(self.dump.arch, "strip_pac", None)
        return strip(address) if strip else address

    @property
    def stackframe_offset(self) -> int:
        if self._stackframe_offset is None:
            offset = DEFAULT_STACKFRAME_OFFSET
            try:
                offset = self.dump.types.offsetof("struct pt_regs", "stackframe")
            except (KvmcoreError, AttributeError, ImportError):
                pass
            self._stackframe_offset = offset
        return self._stackframe_offset

    def _entry_name(self, address: int) -> str | None:
        lo, hi = self.entry_text
        name = self.syms.function_name(address - 1) or ""
        if lo and hi:
            return name if lo <= address < hi else None
        # no section bounds: the asm entry points by name (not their C *_handler)
        if name.startswith(ENTRY_PREFIXES) and not name.endswith("_handler"):
            return name
        return None

    def exception_regs(self, return_address: int, next_fp: int):
        name = self._entry_name(return_address)
        if name is None:
            return None
        base = next_fp - self.stackframe_offset
        regs = dict(zip(PT_REGS, self.dump.read_ptrs(base, len(PT_REGS))))
        regs["pc"] = self.clean(regs["pc"])
        kind = "interrupt" if ("_irq" in name or "_fiq" in name) else "exception"
        return kind, regs

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("pstate", 0) & PSTATE_MODE_MASK) == 0


# -- DWARF CFI for `kvmcore symfile` -------------------------------------------
# gdb-multiarch does not unwind an arm64 kernel from symbols alone (its
# prologue analyser, with no function sizes and no debug info, repeats one
# frame). Linux arm64 keeps frame pointers, so one rule serves all kernel
# text: x29 points at the frame record {caller's x29, return address}, so
# CFA = x29 + 16, x29 saved at CFA-16 and x30 (the return column) at CFA-8.
# Exception entry stores the interrupted {x29, elr} as such a record inside
# pt_regs, so the chain crosses el1 exceptions; entry from el0 leaves a zero
# record, and gdb stops at the zero pc (with "previous frame identical", as
# its "aarch64 stub" unwinder claims an unreadable pc before any CFI is
# consulted, so no row can end the walk quietly). The rule is wrong for the innermost
# frame while a function is still in its prologue or is a leaf.
DWARF_FP, DWARF_LR = 29, 30
CFI_DATA_ALIGN = -8


def aarch64_fp_cfi(dump: "Dump") -> tuple[Any, list[Any]]:
    """(CfiLayout, [CfiRange]) with the frame-record rule over the kernel's
    text and each loaded module's, at runtime addresses."""
    from kvmcore.symbols import cfi

    syms = CodeSymbols(dump)
    lo = syms.address("_stext") or syms.address("_text")
    hi = syms.address("_etext")
    if not lo or not hi or hi <= lo:
        raise UnsupportedError("kallsyms has no _stext/_etext: no kernel text range for CFI",
                               dump.path)
    rule = cfi.CfiRule(b"", "frame-record")
    ranges = [cfi.CfiRange([lo], [rule], hi)]
    try:
        modules = dump.kernel.modules()
    except (KvmcoreError, AttributeError):
        modules = []  # module list unreadable (no data symbols): core text only
    for mod in modules:
        ranges.append(cfi.CfiRange([mod.base], [rule], mod.base + mod.size))
    layout = cfi.CfiLayout(address_size=8, return_column=DWARF_LR, data_align=CFI_DATA_ALIGN,
                           initial=cfi.def_cfa(DWARF_FP, 16)
                           + cfi.saved_at_cfa(DWARF_FP, -16, CFI_DATA_ALIGN)
                           + cfi.saved_at_cfa(DWARF_LR, -8, CFI_DATA_ALIGN))
    return layout, ranges
