"""x86_64 kernel backtraces.

Linux: the kernel's ORC tables read from the dump (kvmcore.unwind.orc), the
vmlinux's DWARF CFI first when one is given, a stack scan for code neither
covers (modules without ORC, BPF), pt_regs crossed at exception and interrupt
entries. FreeBSD: the rbp chain (its amd64 kernel keeps frame pointers).
Also the unwind rows `kvmcore symfile` gives gdb (kvmcore.unwind.orc_cfi).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..arches.x86_64.cpu import IRET_FRAME, PT_REGS
from ..errors import KvmcoreError
from . import orc, register_symfile_cfi, register_unwinder
from .dwarf_cfi import DwarfCfi
from .framepointer import FramePointerUnwinder
from .model import Backtrace, Frame, FrameKind
from .orc_cfi import orc_cfi_ranges
from .stack import StackGuard
from .symbolic import CodeSymbols
from .x86_stack import function_entries

if TYPE_CHECKING:
    from ..dump import Dump


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
# ORC sp_reg values read from a full pt_regs of the current frame
ORC_REG_NAMES = {orc.REG_DX: "rdx", orc.REG_DI: "rdi", orc.REG_R10: "r10", orc.REG_R13: "r13"}
INTERRUPT_ENTRY_PREFIXES = (
    "asm_sysvec_",
    "asm_common_interrupt",
    "asm_spurious_interrupt",
    "irq_entries_start",
    "spurious_entries_start",
)
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
    kind: FrameKind = "normal"
    frame_regs: dict[str, int] | None = None
    guessed: bool = False
    allow_same_sp: bool = False
    end: bool = False
    user_regs: dict[str, int] | None = None
    error: str | None = None
    method: str = "orc"  # how this step found the caller (Frame.method)


def call_before(dump: Dump, addr: int) -> int | None:
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

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self._orc: orc.OrcTable | None = None
        #: per function start: the entries function_entries() made, or None
        self._synthesized: dict[int, dict[int, orc.OrcEntry] | None] = {}
        self.orc_error: str | None = None
        # with a vmlinux, its .debug_frame first (loaded on the first unwind)
        self.cfi = DwarfCfi(dump, dump.arch.dwarf) if dump.vmlinux and dump.arch.dwarf else None
        try:
            self._orc = orc.OrcTable(dump, self.syms)
        except KvmcoreError as exc:
            self.orc_error = str(exc)

    # -- the walk ------------------------------------------------------------
    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        bt = Backtrace()
        if "rip" not in regs or "rsp" not in regs:
            bt.error = "registers lack rip/rsp"
            return bt
        state = _State(regs["rip"], regs["rsp"], regs.get("rbp", 0), dict(regs), True, dict(regs))
        if (regs.get("cs", 0) & 3) == 3:
            bt.user_regs = dict(regs)  # the CPU was in user mode: no kernel frames
            return bt
        guard = StackGuard(state.sp, THREAD_SIZE, task_stack, self.dump.is_kernel_address)
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
            assert step.state is not None  # a step that neither ends nor fails has the caller
            error = guard.advance(state.sp, step.state.sp, step.allow_same_sp)
            if error:
                bt.error = error
                break
            state = step.state
        if self._orc is None and self.orc_error:
            bt.notes.append(f"ORC unavailable ({self.orc_error}); frames found by stack scan")
        if self.cfi is not None and (note := self.cfi.note()):
            bt.notes.append(note)
        return bt

    def _frame(self, index: int, state: _State, step: _Step) -> Frame:
        # a return address names the call before it: a call to a noreturn function
        # at the very end of a function must not be credited to the next one
        describe = self.syms.describe if state.signal else self.syms.describe_return
        function, module = describe(state.ip)
        return Frame(
            index,
            state.ip,
            state.sp,
            function,
            module,
            step.guessed,
            step.kind,
            step.frame_regs,
            step.method,
        )

    def _next(self, state: _State, guard: StackGuard) -> _Step:
        if self.cfi is not None:
            step = self._cfi_step(self.cfi, state)
            if step is not None:
                return step
        entry = None
        method = "orc"
        if self._orc is not None:
            entry = self._orc.find(state.ip if state.signal else state.ip - 1)
            if entry is None or entry.type == orc.UNDEFINED:
                # a function objtool skipped (kdump's panic CPU saves its pc in
                # __crash_kexec, which has no ORC): the entry objtool would
                # have written, from its code
                found = self.uncovered_entry(state.ip)
                if found is not None:
                    entry, method = found, "code"
        if entry is None:
            return self._scan(state, guard)
        if entry.type == orc.END:
            return _Step(end=True)
        if entry.type == orc.UNDEFINED:
            # ORC says the caller cannot be known from here: the kernel would
            # give up; scan
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
        if method != "orc":
            step.method = method
        return step

    def uncovered_entry(self, ip: int) -> orc.OrcEntry | None:
        """The ORC entry objtool would have written for `ip` (an instruction
        start: an exact pc or a return address), when the function holding it
        has no entry at all in tables that cover its text; else None."""
        table = self._orc
        bounds = self.syms.function_bounds(ip)
        if table is None or bounds is None or not table.covers(ip):
            return None
        start, end = bounds
        if start in self._synthesized:
            entries = self._synthesized[start]
        else:
            entries = None
            if not table.has_entry_in(start, end):
                try:
                    entries = function_entries(self.dump.read(start, end - start), start)
                except KvmcoreError:
                    entries = None
            self._synthesized[start] = entries
        return entries.get(ip) if entries else None

    def _cfi_step(self, cfi: DwarfCfi, state: _State) -> _Step | None:
        """The caller by the vmlinux's CFI, or None when it has no rule for
        this ip (entry code, modules) or its rules cannot be followed here:
        ORC decides then."""
        known = state.known
        if known is None:
            known = dict(state.regs or {})
            known.update(rip=state.ip, rsp=state.sp, rbp=state.bp)
        try:
            found = cfi.caller(known, state.ip, state.signal)
        except KvmcoreError:
            return None
        if found is None or found.return_address is None:
            return None  # no FDE, or the CFI leaves the caller undefined: ORC decides
        if found.return_address == 0:
            return _Step(end=True)
        regs = found.regs
        return _Step(
            state=_State(
                found.return_address, found.cfa, regs.get("rbp", state.bp), None, False, regs
            ),
            method="cfi",
        )

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
                return _Step(
                    error=f"ORC needs {ORC_REG_NAMES[reg]} at {state.ip:#x}, "
                    "which no saved register block holds"
                )
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

    def _entry_kind(self, ip: int) -> FrameKind:
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
        return _Step(
            state=_State(value, slot + 8, state.bp, None, False), guessed=True, method="scan"
        )

    def _find_return(
        self, sp: int, guard: StackGuard, callee: int | None = None
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
            if callee is None or target in (INDIRECT, want_start):
                return hit
            tname = self.syms.function_name(target)
            if tname and (
                tname.startswith(INDIRECT_TARGET_PREFIXES) or _base_name(tname) == want_name
            ):
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

    # -- for a debugger handed a frame ---------------------------------------
    def recovered_registers(self, frames: list[Frame]) -> dict[str, int]:
        """rbp for the first of `frames` (a backtrace's tail): rbp is
        callee-saved and code compiled without frame pointers leaves it alone,
        so it is the frame pointer of the first outer function whose ORC entry
        computes its CFA from rbp: CFA - sp_offset, with CFA the stack pointer
        of the frame after it."""
        table = self._orc
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


# -- FreeBSD backtraces -------------------------------------------------------
FREEBSD_KSTACK_SIZE = 4 * 4096  # KSTACK_PAGES (sys/amd64/include/param.h)


class FreeBSDAmd64Unwinder(FramePointerUnwinder):
    """The rbp chain of a FreeBSD amd64 kernel (built with frame pointers):
    {saved rbp, return address} records from the thread's PCB rbp. Trap
    frames (calltrap, fast_syscall) are not crossed: the walk ends where the
    chain leaves the kernel stack."""

    thread_size = FREEBSD_KSTACK_SIZE

    def is_user(self, regs: dict[str, int]) -> bool:
        return bool(regs.get("cs", 0) & 3)


register_unwinder("x86_64", "linux", X86_64Unwinder)
register_unwinder("x86_64", "freebsd", FreeBSDAmd64Unwinder)


def _symfile_cfi(dump: Dump) -> tuple[Any, list[Any]] | None:
    return orc_cfi_ranges(dump) if dump.os == "linux" else None


register_symfile_cfi("x86_64", _symfile_cfi)
