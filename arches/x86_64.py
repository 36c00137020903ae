"""x86_64: 4- and 5-level paging, 2 MB and 1 GB pages, KASLR, PRSTATUS and
gdb register layouts, the Linux context-switch frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterator

from kvmcore.errors import (KvmcoreError, NotInDumpError, NotMappedError, SymbolError,
                            UnsupportedError)
from kvmcore.freebsd.kva import LazyRootTranslator
from kvmcore.freebsd.kva import lookup as freebsd_lookup
from kvmcore.freebsd.pcb import pcb_member_offset
from kvmcore.pagetable import (INVALID, LEAF, TABLE, Level, MappedRange, RadixTable, coalesce,
                               RadixTranslator, Translation, Translator)
from kvmcore.registry import ArchBackend, GdbRegister, PrstatusLayout, register_arch
from kvmcore.unwind import orc
from kvmcore.unwind.dwarf_cfi import CfiRegisters, DwarfCfi
from kvmcore.unwind.framepointer import FramePointerUnwinder
from kvmcore.unwind.model import Backtrace, Frame
from kvmcore.unwind.stack import StackGuard
from kvmcore.unwind.symbolic import CodeSymbols

if TYPE_CHECKING:
    from kvmcore.dump import Dump

START_KERNEL_MAP = 0xFFFFFFFF80000000
FREEBSD_PCB = ("r15", "r14", "r13", "r12", "rbp", "rsp", "rbx", "rip")
FREEBSD_KERNEL_CS, FREEBSD_KERNEL_SS = 0x20, 0x28  # GSEL(GCODE_SEL/GDATA_SEL, SEL_KPL)
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
    elf_machine = 62  # EM_X86_64
    freebsd_machine = "amd64"
    kallsyms_absolute_percpu = True
    prstatus_layout = PrstatusLayout(size=336, pid_offset=32, regs_offset=112,
                                     reg_names=USER_REGS, reg_size=8)
    vmcoreinfo_keys = ("SYMBOL(init_top_pgt)", "NUMBER(pgtable_l5_enabled)")
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

    def recovered_registers(self, dump: "Dump", frames: list[Any]) -> dict[str, int]:
        """rbp for the first of `frames`: rbp is callee-saved and code compiled
        without frame pointers leaves it alone, so it is the frame pointer of the
        first outer function whose ORC entry computes its CFA from rbp:
        CFA - sp_offset, with CFA the stack pointer of the frame after it."""
        from kvmcore.unwind import unwinder_for

        try:
            table = getattr(unwinder_for(dump), "_orc", None)
        except KvmcoreError:
            return {}
        if table is None:
            return {}
        for inner, outer in zip(frames, frames[1:4]):
            entry = table.find(inner.pc - 1)
            if entry is None:
                return {}
            if entry.bp_reg != orc.REG_UNDEFINED and entry.sp_reg != orc.REG_BP:
                return {}  # this frame saved rbp: the debugger finds it on the stack
            if entry.sp_reg == orc.REG_BP:
                return {"rbp": (outer.sp - entry.sp_offset) & 0xFFFFFFFFFFFFFFFF}
        return {}

    def unwinder(self, dump: "Dump") -> "X86_64Unwinder | FreeBSDAmd64Unwinder":
        # FreeBSD has no ORC; its amd64 kernel keeps frame pointers (ddb and
        # kgdb walk the rbp chain), which beats the ORC path's stack scan
        if dump.os == "freebsd":
            return FreeBSDAmd64Unwinder(dump)
        return X86_64Unwinder(dump)

    def symfile_cfi(self, dump: "Dump") -> tuple[Any, list[Any]] | None:
        """DWARF CFI rows for the symbol file, from the kernel's ORC tables
        (Linux only; see orc_cfi_ranges at the end of this module)."""
        if dump.os != "linux":
            return None
        return orc_cfi_ranges(dump)

    def freebsd_pcb_registers(self, read: Any, pcb: int, types: Any) -> dict[str, int]:
        """amd64 struct pcb: "(*) used by kernel debuggers, ABI preserved": eight
        words from offset 0 (r15 r14 r13 r12 rbp rsp rbx rip), or where types say."""
        regs = {}
        for i, name in enumerate(FREEBSD_PCB):
            off = pcb_member_offset(types, f"pcb_{name}")
            regs[name] = int.from_bytes(read(pcb + (8 * i if off is None else off), 8), "little")
        regs["cs"], regs["ss"] = FREEBSD_KERNEL_CS, FREEBSD_KERNEL_SS
        return regs

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


# -- kernel backtraces --------------------------------------------------
# x86_64 backtraces: ORC from the dump, with a stack scan for code ORC does
# not cover (modules, BPF) or when the tables are missing.
# 
# One step of the walk follows the kernel's own unwinder (arch/x86/kernel/
# unwind_orc.c): the entry for the current ip gives the caller's stack pointer
# (CFA) as a register plus offset, then by type: CALL - the return address sits
# just below the CFA; REGS - a full struct pt_regs sits at the CFA (an exception
# or interrupt entry) and the interrupted ip/sp/bp come from it; REGS_PARTIAL -
# only the hardware iret frame (ip, cs, flags, sp, ss) is there. The walk ends at
# an END entry or when the saved registers are user mode (cs & 3).

THREAD_SIZE = 16384  # PAGE_SIZE << 2 (kernels without KASAN); also the IRQ stack size
# struct pt_regs, in arch register names (same order as user_regs_struct's first 21)
PT_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax", "rcx",
           "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss")
IRET_FRAME = ("rip", "cs", "eflags", "rsp", "ss")
# ORC sp_reg values read from a full pt_regs of the current frame
ORC_REG_NAMES = {orc.REG_DX: "rdx", orc.REG_DI: "rdi", orc.REG_R10: "r10", orc.REG_R13: "r13"}
INTERRUPT_ENTRY_PREFIXES = ("asm_sysvec_", "asm_common_interrupt", "asm_spurious_interrupt",
                            "irq_entries_start", "spurious_entries_start")
MAX_SCAN_WORDS = THREAD_SIZE // 8
KERNEL_TEXT_START = 0xFFFFFFFF80000000


@dataclass
class _State:
    ip: int
    sp: int
    bp: int
    regs: dict[str, int] | None  # full pt_regs of this frame, if it was entered through them
    signal: bool  # ip is exact (not a return address)
    known: dict[str, int] | None = None  # every register recovered (given, or by CFI)


@dataclass
class _Step:
    state: _State | None = None
    kind: str = "normal"
    frame_regs: dict[str, int] | None = None
    guessed: bool = False
    allow_same_sp: bool = False
    end: bool = False
    user_regs: dict[str, int] | None = None
    error: str | None = None
    method: str = "orc"  # how this step found the caller (Frame.method)


def call_before(dump: "Dump", addr: int) -> int | None:
    """What the instruction ending at `addr` calls: its target for `e8 rel32`,
    INDIRECT for `ff /2` (register, disp8 and disp32 forms), None if it is no
    call (so `addr` is no return address)."""
    if addr < KERNEL_TEXT_START:
        return None
    try:
        code = dump.read(addr - 7, 7)
    except KvmcoreError:
        return None
    if code[2] == 0xE8:
        return (addr + int.from_bytes(code[3:7], "little", signed=True)) & 0xFFFFFFFFFFFFFFFF
    for back in (2, 3, 4, 6, 7):  # ff modrm [sib] [disp8|disp32]
        op, modrm = code[7 - back], code[8 - back]
        if op == 0xFF and (modrm >> 3) & 7 == 2:
            mod = modrm >> 6
            length = {3: 2, 1: 3, 2: 6, 0: 2}[mod] + (1 if mod != 3 and modrm & 7 == 4 else 0)
            if length == back:
                return INDIRECT
    return None


INDIRECT = -1
# calls through these reach their real target indirectly (retpolines, static calls)
INDIRECT_TARGET_PREFIXES = ("__x86_indirect_", "__SCT__", "__x86_return_thunk")


def _base_name(name: str | None) -> str | None:
    return name.split(".", 1)[0] if name else name


class X86_64Unwinder:
    """Unwinds kernel stacks of one x86_64 dump."""

    def __init__(self, dump: "Dump") -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self._orc: orc.OrcTable | None = None
        self.orc_error: str | None = None
        # with a vmlinux, its .debug_frame first (loaded on the first unwind)
        self.cfi = DwarfCfi(dump, CFI_REGISTERS) if getattr(dump, "vmlinux", None) else None
        try:
            self._orc = orc.OrcTable(dump, self.syms)
        except KvmcoreError as exc:
            self.orc_error = str(exc)

    # -- the walk ------------------------------------------------------------
    def unwind(self, regs: dict[str, int], max_frames: int = 64,
               task_stack: tuple[int, int] | None = None) -> Backtrace:
        bt = Backtrace()
        if "rip" not in regs or "rsp" not in regs:
            bt.error = "registers lack rip/rsp"
            return bt
        state = _State(regs["rip"], regs["rsp"], regs.get("rbp", 0), dict(regs), True, dict(regs))
        if (regs.get("cs", 0) & 3) == 3:
            bt.user_regs = dict(regs)  # the CPU was in user mode: no kernel frames
            return bt
        guard = StackGuard(state.sp, THREAD_SIZE, task_stack, self.dump.arch.is_kernel_address)
        step = _Step(state=state, method="registers")
        while True:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                break
            bt.frames.append(self._frame(len(bt.frames), state, step))
            step = self._next(state, guard)
            if step.user_regs is not None:
                bt.user_regs = step.user_regs
            if step.end:
                break
            if step.error:
                bt.error = step.error
                break
            error = guard.advance(state.sp, step.state.sp, step.allow_same_sp)
            if error:
                bt.error = error
                break
            state = step.state
        if self._orc is None and self.orc_error:
            bt.notes.append(f"ORC unavailable ({self.orc_error}); frames found by stack scan")
        if self.cfi is not None and self.cfi.note():
            bt.notes.append(self.cfi.note())
        return bt

    def _frame(self, index: int, state: _State, step: _Step) -> Frame:
        # a return address names the call before it: a call to a noreturn function
        # at the very end of a function must not be credited to the next one
        describe = self.syms.describe if state.signal else self.syms.describe_return
        function, module = describe(state.ip)
        return Frame(index, state.ip, state.sp, function, module, step.guessed, step.kind,
                     step.frame_regs, step.method)

    def _next(self, state: _State, guard: StackGuard) -> _Step:
        if self.cfi is not None:
            step = self._cfi_step(state)
            if step is not None:
                return step
        entry = None
        if self._orc is not None:
            entry = self._orc.find(state.ip if state.signal else state.ip - 1)
        if entry is None:
            return self._scan(state, guard)
        if entry.type == orc.END:
            return _Step(end=True)
        if entry.type == orc.UNDEFINED:
            # e.g. crash_setup_regs' _THIS_IP_ label past a function's last
            # instruction (kdump's panic CPU): the kernel would give up; scan
            return self._scan(state, guard)
        guessed = False
        if entry.sp_reg in (orc.REG_BP, orc.REG_BP_INDIRECT) and not guard.contains(state.bp, 8):
            # bp was lost (a frame crossed by stack scan clobbered it): place it
            # so that CFA - 8 is the nearest return address above sp
            bp = self._guess_bp(state, guard, entry)
            if bp is None:
                return _Step(error=f"frame pointer {state.bp:#x} at {state.ip:#x} is off the stack")
            state = _State(state.ip, state.sp, bp, state.regs, state.signal)
            guessed = True
        try:
            step = self._orc_step(state, entry)
        except KvmcoreError as exc:
            return _Step(error=f"stack memory unreadable: {exc}")
        step.guessed = step.guessed or guessed
        return step

    def _cfi_step(self, state: _State) -> _Step | None:
        """The caller by the vmlinux's CFI, or None when it has no rule for
        this ip (entry code, modules) or its rules cannot be followed here:
        ORC decides then."""
        known = state.known
        if known is None:
            known = dict(state.regs or {})
            known.update(rip=state.ip, rsp=state.sp, rbp=state.bp)
        try:
            found = self.cfi.caller(known, state.ip, state.signal)
        except KvmcoreError:
            return None
        if found is None or found.return_address is None:
            return None  # no FDE, or the CFI leaves the caller undefined: ORC decides
        if found.return_address == 0:
            return _Step(end=True)
        regs = found.regs
        return _Step(state=_State(found.return_address, found.cfa, regs.get("rbp", state.bp),
                                  None, False, regs), method="cfi")

    def _guess_bp(self, state: _State, guard: StackGuard, entry: orc.OrcEntry) -> int | None:
        if entry.sp_reg != orc.REG_BP:
            return None
        found = self._find_return(state.sp, guard, state.ip)
        return None if found is None else found[1] + 8 - entry.sp_offset

    def _orc_step(self, state: _State, entry: orc.OrcEntry) -> _Step:
        read = self.dump.read_u64
        reg = entry.sp_reg
        if reg == orc.REG_SP:
            cfa = state.sp + entry.sp_offset
        elif reg == orc.REG_BP:
            cfa = state.bp + entry.sp_offset
        elif reg == orc.REG_SP_INDIRECT:
            cfa = read(state.sp) + entry.sp_offset
        elif reg == orc.REG_BP_INDIRECT:
            cfa = read(state.bp + entry.sp_offset)
        elif reg in ORC_REG_NAMES:
            if not state.regs or ORC_REG_NAMES[reg] not in state.regs:
                return _Step(error=f"ORC needs {ORC_REG_NAMES[reg]} at {state.ip:#x}, "
                                   "which no saved register block holds")
            cfa = state.regs[ORC_REG_NAMES[reg]] + entry.sp_offset
        else:
            return _Step(error=f"unknown ORC sp_reg {reg} at {state.ip:#x}")
        cfa &= 0xFFFFFFFFFFFFFFFF

        step = _Step()
        new_regs: dict[str, int] | None = None
        if entry.type == orc.CALL:
            ip, sp, signal = read(cfa - 8), cfa, False
        elif entry.type == orc.REGS:
            values = self.dump.read_ptrs(cfa, len(PT_REGS))
            new_regs = dict(zip(PT_REGS, values))
            ip, sp, signal = new_regs["rip"], new_regs["rsp"], True
            step.frame_regs = new_regs
            step.kind = self._entry_kind(state.ip)
        else:  # REGS_PARTIAL: the iret frame only
            values = self.dump.read_ptrs(cfa, len(IRET_FRAME))
            partial = dict(zip(IRET_FRAME, values))
            ip, sp, signal = partial["rip"], partial["rsp"], True
            step.frame_regs = partial
            step.kind = self._entry_kind(state.ip)
            step.allow_same_sp = True
        if step.frame_regs is not None and step.frame_regs.get("cs", 0) & 3:
            step.user_regs = step.frame_regs
            step.end = True
            return step

        bp = state.bp
        if entry.bp_reg == orc.REG_UNDEFINED:
            if new_regs is not None:
                bp = new_regs["rbp"]
        elif entry.bp_reg == orc.REG_PREV_SP:
            bp = read(cfa + entry.bp_offset)
        elif entry.bp_reg == orc.REG_BP:
            bp = read(state.bp + entry.bp_offset)
        if ip == 0:
            step.end = True
            return step
        step.state = _State(ip, sp, bp, new_regs, signal)
        return step

    def _entry_kind(self, ip: int) -> str:
        name = self.syms.function_name(ip) or ""
        return "interrupt" if name.startswith(INTERRUPT_ENTRY_PREFIXES) else "exception"

    # -- the heuristic for code without ORC ----------------------------------
    def _scan(self, state: _State, guard: StackGuard) -> _Step:
        """Find the nearest word above sp that is a return address (follows a
        call instruction); the frame it starts is marked guessed."""
        found = self._find_return(state.sp, guard, state.ip)
        if found is None:
            name = self.syms.describe(state.ip)[0] or f"{state.ip:#x}"
            return _Step(error=f"no unwind data for {name} and no return address on its stack")
        value, slot = found
        return _Step(state=_State(value, slot + 8, state.bp, None, False), guessed=True,
                     method="scan")

    def _find_return(self, sp: int, guard: StackGuard, callee: int | None = None
                     ) -> tuple[int, int] | None:
        """(return address, its slot) above sp for a frame of the function at
        `callee`: the first word that follows a call to that function, or an
        indirect call; failing both, the first that follows any call (words
        left by earlier, finished calls are what this sorts out)."""
        lo, hi = guard.current
        end = min(hi, sp + MAX_SCAN_WORDS * 8)
        if not lo <= sp < end:
            return None
        try:
            words = self.dump.read_ptrs(sp, (end - sp) // 8)
        except KvmcoreError:
            return None
        want_start = self.syms.function_start(callee) if callee is not None else None
        want_name = _base_name(self.syms.function_name(callee)) if callee is not None else None
        fallback = None
        for i, value in enumerate(words):
            if not self._is_text(value):
                continue
            target = call_before(self.dump, value)
            if target is None:
                continue
            hit = (value, sp + 8 * i)
            if callee is None or target == INDIRECT or target == want_start:
                return hit
            tname = self.syms.function_name(target)
            if tname and (tname.startswith(INDIRECT_TARGET_PREFIXES) or _base_name(tname) == want_name):
                return hit
            if fallback is None:
                fallback = hit
        return fallback

    def _is_text(self, addr: int) -> bool:
        if addr < KERNEL_TEXT_START:
            return False
        if self._orc is not None and self._orc.covers(addr):
            return True
        function, _ = self.syms.describe(addr)
        return function is not None


# -- FreeBSD backtraces -------------------------------------------------------
FREEBSD_KSTACK_SIZE = 4 * 4096  # KSTACK_PAGES (sys/amd64/include/param.h)


class FreeBSDAmd64Unwinder(FramePointerUnwinder):
    """The rbp chain of a FreeBSD amd64 kernel (built with frame pointers):
    {saved rbp, return address} records from the thread's PCB rbp. Trap
    frames (calltrap, fast_syscall) are not crossed: the walk ends where the
    chain leaves the kernel stack."""

    pc_reg, sp_reg, fp_reg = "rip", "rsp", "rbp"
    thread_size = FREEBSD_KSTACK_SIZE

    def is_user(self, regs: dict[str, int]) -> bool:
        return bool(regs.get("cs", 0) & 3)


# -- DWARF CFI from ORC, for `kvmcore symfile` ----------------------------------
# gdb cannot unwind a Debian amd64 kernel from symbols alone (no frame
# pointers). Each ORC entry becomes one row of DWARF call-frame information
# (kvmcore.symbols.cfi encodes them), saying what the kernel's own unwinder
# does for that address:
#   CALL: CFA = the ORC base (sp_reg + sp_offset, the caller's sp), return
#     address at CFA-8, rbp as bp_reg says.
#   REGS: a struct pt_regs at the ORC base (the CFA of this entry frame): every
#     register it holds is saved there; the return address is the interrupted
#     rip, or 0 when cs says user mode (gdb then shows one "0x0 in ??" frame
#     and stops, as it does with the vmlinux). Not marked as a signal frame:
#     that would make gdb take the interrupted rip as exact rather than look
#     it up at rip-1, but it prints the entry frame as "<signal handler
#     called>" instead of its name and, after a user-mode interrupt, unwinds
#     the zero pc with its prologue heuristics into garbage frames.
#   REGS_PARTIAL: the same with the 5-word iret frame only.
#   END / UNDEFINED: the return address is undefined, so gdb stops there.
# Syscall entries and ret_from_fork hold user (or zeroed kthread) pt_regs
# only: they end the walk like END, as the kernel's unwinder does.
DWARF_REGS = {"rax": 0, "rdx": 1, "rcx": 2, "rbx": 3, "rsi": 4, "rdi": 5, "rbp": 6, "rsp": 7,
              **{f"r{i}": i for i in range(8, 16)}, "rip": 16, "eflags": 49, "cs": 51, "ss": 52}
DWARF_RA = DWARF_REGS["rip"]
# the general registers and rip, for unwinding with the vmlinux's .debug_frame
CFI_REGISTERS = CfiRegisters({num: name for name, num in DWARF_REGS.items() if num <= DWARF_RA},
                             sp_column=DWARF_REGS["rsp"], pc_name="rip")
ORC_DWARF_REG = {orc.REG_SP: 7, orc.REG_BP: 6, orc.REG_DX: 1, orc.REG_DI: 5, orc.REG_R10: 10,
                 orc.REG_R13: 13}
CFI_DATA_ALIGN = -8
USER_ENTRY_SYMBOLS = frozenset((
    "entry_SYSCALL_64", "entry_SYSCALL_64_safe_stack", "entry_SYSCALL_64_after_hwframe",
    "entry_SYSCALL_compat", "entry_SYSCALL_compat_safe_stack",
    "entry_SYSCALL_compat_after_hwframe", "entry_SYSENTER_compat",
    "entry_SYSENTER_compat_after_hwframe", "entry_INT80_compat", "ret_from_fork"))


def _orc_base(entry: orc.OrcEntry) -> bytes | None:
    """CFA instructions putting the ORC base address in the CFA, or None."""
    from kvmcore.symbols import cfi

    reg, off = entry.sp_reg, entry.sp_offset
    if reg in ORC_DWARF_REG:
        return cfi.def_cfa(ORC_DWARF_REG[reg], off)
    if reg == orc.REG_SP_INDIRECT:
        return cfi.def_cfa_expression(cfi.breg(7, 0) + cfi.deref() + cfi.plus(off))
    if reg == orc.REG_BP_INDIRECT:
        return cfi.def_cfa_expression(cfi.breg(6, off) + cfi.deref())
    return None


def _if_kernel_mode(cs_at: int, kernel: bytes, user: bytes) -> bytes:
    """Expression (CFA pushed): `kernel` when the cs saved at CFA+cs_at is
    kernel mode, else `user` (each replaces the CFA with one value)."""
    from kvmcore.symbols import cfi

    test = bytes([cfi.DW_OP_dup]) + cfi.plus(cs_at) + cfi.deref() + bytes([cfi.DW_OP_lit0 + 3,
                                                                             cfi.DW_OP_and])
    return cfi.if_zero_else(test, kernel, user)


def _interrupted(saved: tuple[str, ...]) -> bytes:
    """Rules for the rip and rsp saved in a pt_regs/iret frame at the CFA. In
    user mode the caller is not kernel code, and gdb should stop after one
    "0x0 in ??" frame without an error: rip is 0 (gdb stops at a zero pc) and
    rsp the address of the frame's last word (ss): gdb's fallback unwinder
    for pc 0 reads a word there when it checks why the walk stopped, and a
    user sp would be "inner" to the kernel stack, which gdb reports."""
    from kvmcore.symbols import cfi

    cs_at = 8 * saved.index("cs")
    rip = _if_kernel_mode(cs_at, cfi.plus(8 * saved.index("rip")) + cfi.deref(),
                          bytes([cfi.DW_OP_drop, cfi.DW_OP_lit0]))
    rsp = _if_kernel_mode(cs_at, cfi.plus(8 * saved.index("rsp")) + cfi.deref(),
                          cfi.plus(8 * len(saved) - 8))
    return cfi.value_is(DWARF_RA, rip) + cfi.value_is(DWARF_REGS["rsp"], rsp)


def orc_cfi_rule(entry: orc.OrcEntry, user_entry: bool = False) -> Any:
    """The CfiRule of one ORC entry (see the comment above)."""
    from kvmcore.symbols import cfi

    base = _orc_base(entry)
    kind = entry.type
    if base is None or kind in (orc.END, orc.UNDEFINED) or (user_entry and kind in
                                                            (orc.REGS, orc.REGS_PARTIAL)):
        return cfi.CfiRule(cfi.def_cfa(7, 8) + cfi.undefined(DWARF_RA)
                           + cfi.same_value(6), "call")
    if kind == orc.CALL:
        return cfi.CfiRule(base + cfi.saved_at_cfa(DWARF_RA, -8, CFI_DATA_ALIGN)
                           + _bp_rule(entry), "call")
    if kind == orc.REGS:
        code = bytearray(base)
        for i, name in enumerate(PT_REGS):
            if name in DWARF_REGS and name not in ("rip", "rsp"):
                code += cfi.saved_at_cfa(DWARF_REGS[name], 8 * i, CFI_DATA_ALIGN)
        if entry.bp_reg != orc.REG_UNDEFINED:
            code += _bp_rule(entry)
        return cfi.CfiRule(bytes(code) + _interrupted(PT_REGS), "regs")
    # REGS_PARTIAL: the iret frame
    code = bytearray(base)
    for i, name in enumerate(IRET_FRAME):
        if name not in ("rip", "rsp"):
            code += cfi.saved_at_cfa(DWARF_REGS[name], 8 * i, CFI_DATA_ALIGN)
    code += _bp_rule(entry)
    return cfi.CfiRule(bytes(code) + _interrupted(IRET_FRAME), "iret")


def _bp_rule(entry: orc.OrcEntry) -> bytes:
    from kvmcore.symbols import cfi

    if entry.bp_reg == orc.REG_PREV_SP:  # saved at the ORC base (CFA) + bp_offset
        return cfi.saved_at_cfa(6, entry.bp_offset, CFI_DATA_ALIGN)
    if entry.bp_reg == orc.REG_BP:  # saved at the current rbp + bp_offset
        return cfi.saved_at(6, cfi.breg(6, entry.bp_offset))
    return cfi.same_value(6)


def orc_cfi_ranges(dump: "Dump") -> tuple[Any, list[Any]]:
    """(CfiLayout, [CfiRange]) for the core kernel's and each loaded module's
    ORC table, at runtime addresses."""
    from kvmcore.symbols import cfi

    syms = CodeSymbols(dump)
    table = orc.OrcTable(dump, syms)  # UnsupportedError when the dump has no ORC
    tables = [(table.ips, table.entries_at, max(table.ranges[-1][1], table.ips[-1] + 1))]
    tables += [(ips, at, hi) for _, hi, ips, at in table.modules]
    entries: dict[bytes, orc.OrcEntry] = {}
    plain: dict[bytes, Any] = {}  # rules of CALL/END/UNDEFINED entries, by raw entry
    entry_frames: dict[tuple[bytes, bool], Any] = {}  # REGS rules, by (raw, user entry)
    ranges = []
    for ips, entries_at, end in tables:
        raw = dump.read(entries_at, 6 * len(ips))
        out = []
        for i in range(len(ips)):
            word = raw[6 * i:6 * i + 6]
            rule = plain.get(word)
            if rule is None:
                entry = entries.get(word)
                if entry is None:
                    entry = entries[word] = orc.decode_entry(word, table.new_layout)
                if entry.type in (orc.REGS, orc.REGS_PARTIAL):  # few: the name decides
                    user = (syms.function_name(ips[i]) or "").split(".")[0] in USER_ENTRY_SYMBOLS
                    rule = entry_frames.get((word, user))
                    if rule is None:
                        rule = entry_frames[(word, user)] = orc_cfi_rule(entry, user)
                else:
                    rule = plain[word] = orc_cfi_rule(entry)
            out.append(rule)
        ranges.append(cfi.CfiRange(list(ips), out, end))
    layout = cfi.CfiLayout(address_size=8, return_column=DWARF_RA, data_align=CFI_DATA_ALIGN,
                           initial=cfi.def_cfa(7, 8) + cfi.saved_at_cfa(DWARF_RA, -8,
                                                                        CFI_DATA_ALIGN))
    return layout, ranges
