"""x86_64: 4- and 5-level paging, 2 MB and 1 GB pages, KASLR, PRSTATUS and
gdb register layouts, the Linux context-switch frame."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable, RadixTranslator, Translator
from kvmcore.registry import ArchBackend, GdbRegister, PrstatusLayout, register_arch
from typing import Iterator

from kvmcore.errors import NotInDumpError, NotMappedError, SymbolError
from kvmcore.freebsd.kva import LazyRootTranslator, coalesce
from kvmcore.freebsd.kva import lookup as freebsd_lookup
from kvmcore.pagetable import MappedRange, Translation

if TYPE_CHECKING:
    from kvmcore.dump import Dump

START_KERNEL_MAP = 0xFFFFFFFF80000000
PRESENT = 1 << 0
PSE = 1 << 7  # a leaf at the PDPT (1 GB) or PD (2 MB) level
ADDR_MASK = 0x000FFFFFFFFFF000

# struct user_regs_struct, the order of elf_prstatus.pr_reg
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
             "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
             "fs_base", "gs_base", "ds", "es", "fs", "gs")


class X86_64Tables(RadixTable):
    entry_size = 8

    def __init__(self, five_level: bool) -> None:
        shifts = (48, 39, 30, 21, 12) if five_level else (39, 30, 21, 12)
        self.levels = [Level(s, 9) for s in shifts]
        self._leaf_ok = {len(shifts) - 3: 30, len(shifts) - 2: 21}  # depth -> PS leaf shift
        self._last = len(shifts) - 1
        self.va_bits = 57 if five_level else 48

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PRESENT:
            return INVALID, 0
        if depth == self._last:
            return LEAF, entry & ADDR_MASK
        shift = self._leaf_ok.get(depth)
        if shift and entry & PSE:
            return LEAF, entry & ADDR_MASK & ~((1 << shift) - 1)
        return TABLE, entry & ADDR_MASK

    def canonical(self, va: int) -> int:
        if va & (1 << (self.va_bits - 1)):
            va |= ~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF
        return va


@register_arch("amd64", "x86-64")
class X86_64(ArchBackend):
    name = "x86_64"
    word_size = 8
    pc_reg, sp_reg, fp_reg = "rip", "rsp", "rbp"
    prstatus_layout = PrstatusLayout(size=336, pid_offset=32, regs_offset=112,
                                     reg_names=USER_REGS, reg_size=8)
    gdb_arch = "i386:x86-64"
    gdb_registers = tuple(
        [GdbRegister(n, 64, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
        + [GdbRegister("rbp", 64, "data_ptr"), GdbRegister("rsp", 64, "data_ptr")]
        + [GdbRegister(f"r{i}", 64, "int64") for i in range(8, 16)]
        + [GdbRegister("rip", 64, "code_ptr"), GdbRegister("eflags", 32, "i386_eflags")]
        + [GdbRegister(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
        # gdb's amd64 target requires the x87 registers in the core feature and
        # the SSE feature; a dump has none of them, so they are sent as unavailable
        + [GdbRegister(f"st{i}", 80, "i387_ext") for i in range(8)]
        + [GdbRegister(n, 32, "int", "float") for n in
           ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
        + [GdbRegister(f"xmm{i}", 128, "vec128", feature="org.gnu.gdb.i386.sse")
           for i in range(16)]
        + [GdbRegister("mxcsr", 32, "i386_mxcsr", "vector", feature="org.gnu.gdb.i386.sse")]
        + [GdbRegister("orig_rax", 64, "int", feature="org.gnu.gdb.i386.linux")]
        + [GdbRegister(n, 64, "int", feature="org.gnu.gdb.i386.segments")
           for n in ("fs_base", "gs_base")])
    gdb_features = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.linux",
                    "org.gnu.gdb.i386.segments")

    def page_table_root(self) -> int:
        """Physical address of the kernel's top-level table (init_top_pgt)."""
        info = self.vmcoreinfo
        if info is None:
            raise UnsupportedError("no VMCOREINFO: cannot locate the kernel page tables "
                                   "(QEMU dumps need -device vmcoreinfo)", self.path)
        root = info.symbol("init_top_pgt") or info.symbol("init_level4_pgt")
        if root is None:
            raise UnsupportedError("VMCOREINFO has no SYMBOL(init_top_pgt)", self.path)
        return root - START_KERNEL_MAP + (info.number("phys_base") or 0)

    def five_level(self) -> bool:
        info = self.vmcoreinfo
        return bool(info and info.number("pgtable_l5_enabled"))

    def full_translator(self) -> Translator:
        if self.mem.facts.os == "freebsd":
            return self.freebsd_full_translator()
        return RadixTranslator(X86_64Tables(self.five_level()), self.page_table_root(),
                               self.mem.read_phys, "little", self.path)

    # -- FreeBSD (translators defined at the end of this module) --------------
    def mini_translator(self) -> Translator:
        return FreeBSDAmd64MiniTranslator(self.mem)

    def freebsd_full_translator(self) -> Translator:
        def make() -> Translator:
            return RadixTranslator(X86_64Tables(False), freebsd_amd64_root(self),
                                   self.mem.read_phys, "little", self.path)

        self._freebsd_lazy = LazyRootTranslator(make, self.path)
        return self._freebsd_lazy

    def set_page_table_root(self, pa: int) -> None:
        """Give a FreeBSD full dump's kernel PML4 physical address explicitly."""
        self.freebsd_root = pa
        lazy = getattr(self, "_freebsd_lazy", None)
        if lazy is not None:
            lazy.reset()

    def linux_switch_frame(self, dump: "Dump", task: Any) -> dict[str, int]:
        """A sleeping task's thread.sp points at its struct inactive_task_frame,
        which __switch_to_asm pushed; its return address is the resume point."""
        types = dump.types
        sp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.sp"))
        frame = "struct inactive_task_frame"
        regs = {"rsp": sp + types.sizeof(frame)}
        for member in types.members(frame):
            if member in ("ret_addr",):
                regs["rip"] = dump.read_ptr(sp + types.offsetof(frame, member))
            elif member in ("bp", "bx", "r12", "r13", "r14", "r15"):
                name = "r" + member if member in ("bp", "bx") else member
                regs[name] = dump.read_ptr(sp + types.offsetof(frame, member))
        return regs


# -- FreeBSD ------------------------------------------------------------------
# amd64 pmap constants (sys/amd64/include/pmap.h, lib/libkvm/kvm_amd64.h)
FREEBSD_KERNBASE = 0xFFFFFFFF80000000
FREEBSD_PG_FRAME = 0x000FFFFFFFFFF000
FREEBSD_PG_PS_FRAME = 0x000FFFFFFFE00000


class FreeBSDAmd64MiniTranslator(Translator):
    """kva -> pa from an amd64 minidump's own kernel map (libkvm's
    _amd64_minidump_vatop): version 1 holds one 4K PTE per page from kernbase,
    version 2+ one PDE per 2 MB (a PS PDE is a 2 MB page, any other points at a
    page-table page that is itself among the dumped pages). The direct map
    [dmapbase, dmapend) is linear: pa = va - dmapbase."""

    def __init__(self, mem: Any) -> None:
        self.mem = mem
        self.hdr = mem.header
        self.path = mem.path

    def _entry(self, va: int, index: int, what: str) -> int:
        entry = self.mem.pmap_entry(index)
        if entry is None:
            raise NotMappedError(f"virtual address {va:#x} lies past the minidump's kernel map "
                                 f"({self.mem.pmap_count} {what}s from {self.hdr.kernbase:#x})",
                                 va, self.path)
        if not entry & PRESENT:
            raise NotMappedError(f"virtual address {va:#x} is not mapped ({what} {index} is "
                                 "invalid)", va, self.path)
        return entry

    def translate(self, va: int) -> Translation:
        hdr = self.hdr
        if va >= hdr.kernbase:
            if hdr.version == 1:
                pte = self._entry(va, (va - hdr.kernbase) >> 12, "PTE")
                return Translation(va, (pte & FREEBSD_PG_FRAME) | (va & 0xFFF), 1 << 12)
            pde = self._entry(va, (va - hdr.kernbase) >> 21, "PDE")
            if pde & PSE:
                return Translation(va, (pde & FREEBSD_PG_PS_FRAME) | (va & 0x1FFFFF), 1 << 21)
            table = pde & FREEBSD_PG_FRAME
            try:
                raw = self.mem.read_phys(table + ((va >> 12) & 511) * 8, 8)
            except NotInDumpError:
                raise NotMappedError(f"virtual address {va:#x}: its page-table page {table:#x} "
                                     "is not in the minidump", va, self.path) from None
            pte = int.from_bytes(raw, "little")
            if not pte & PRESENT:
                raise NotMappedError(f"virtual address {va:#x} is not mapped (PTE invalid)", va,
                                     self.path)
            return Translation(va, (pte & FREEBSD_PG_FRAME) | (va & 0xFFF), 1 << 12)
        if hdr.dmapbase <= va < hdr.dmapend:
            return Translation(va, va - hdr.dmapbase, 1 << 12)
        raise NotMappedError(f"virtual address {va:#x} is neither in the minidump's kernel map "
                             f"(from {hdr.kernbase:#x}) nor in the direct map", va, self.path)

    def _kernel_map(self) -> Iterator[MappedRange]:
        hdr, mem = self.hdr, self.mem
        for index in range(mem.pmap_count):
            entry = mem.pmap_entry(index)
            if not entry & PRESENT:
                continue
            if hdr.version == 1:
                yield MappedRange(hdr.kernbase + (index << 12), entry & FREEBSD_PG_FRAME,
                                  1 << 12, 1 << 12)
                continue
            va = hdr.kernbase + (index << 21)
            if entry & PSE:
                yield MappedRange(va, entry & FREEBSD_PG_PS_FRAME, 1 << 21, 1 << 21)
                continue
            try:
                raw = mem.read_phys(entry & FREEBSD_PG_FRAME, 4096)
            except NotInDumpError:
                continue  # libkvm also skips page-table pages that were not dumped
            for i in range(512):
                pte = int.from_bytes(raw[i * 8:i * 8 + 8], "little")
                if pte & PRESENT:
                    yield MappedRange(va + (i << 12), pte & FREEBSD_PG_FRAME, 1 << 12, 1 << 12)

    def _direct_map(self) -> Iterator[MappedRange]:
        hdr = self.hdr
        for rng in self.mem.ranges():
            if hdr.dmapbase + rng.end <= hdr.dmapend:
                yield MappedRange(hdr.dmapbase + rng.start, rng.start, rng.size, 1 << 12)

    def walk(self) -> Iterator[MappedRange]:
        parts = [self._direct_map(), self._kernel_map()]
        if self.hdr.kernbase < self.hdr.dmapbase:
            parts.reverse()
        for part in parts:
            yield from coalesce(part)


def freebsd_amd64_root(backend: "X86_64") -> int:
    """Physical address of the kernel PML4 of a FreeBSD full dump: set explicitly
    (backend.freebsd_root), else libkvm's bootstrap: the kernel image sits at
    pa = va - kernbase, so KPML4phys (a u64 holding the PML4's pa) is read there."""
    root = getattr(backend, "freebsd_root", None)
    if root is not None:
        return root
    kpml4 = freebsd_lookup(backend, "KPML4phys")
    if kpml4 is None:
        raise SymbolError("FreeBSD full dump: the page-table root is the kernel variable "
                          "KPML4phys; open the dump with the kernel's symbols (kernel or "
                          "kernel.debug) or set it with dump.arch.set_page_table_root(pa)",
                          backend.path)
    kernbase = freebsd_lookup(backend, "kernbase") or FREEBSD_KERNBASE
    return int.from_bytes(backend.mem.read_phys(kpml4 - kernbase, 8), "little")
