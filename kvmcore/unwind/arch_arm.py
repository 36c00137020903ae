"""arm (32-bit) kernel backtraces through the kernel's ARM EHABI unwind tables.

Debian's armmp kernels are built with CONFIG_ARM_UNWIND (no frame pointers):
the linker collects one `.ARM.exidx` entry per function between
__start_unwind_idx and __stop_unwind_idx, and the kernel unwinds its own
stacks from them (arch/arm/kernel/unwind.c). This walk reads the same table
from the dump and follows the same rules:

- an entry is two words: the function's address as a prel31 offset, then
  EXIDX_CANTUNWIND (1: the end of a stack, e.g. ret_fast_syscall,
  ret_from_fork), an inline compact model (bit 31 set: personality 0, up to
  three opcode bytes), or a prel31 pointer to an `.ARM.extab` entry holding a
  compact model (0x80: personality 0, three bytes; 0x81: personality 1, two
  bytes and bits 23:16 more words);
- the opcodes: 00xxxxxx vsp += x*4+4; 01xxxxxx vsp -= x*4+4; 1000iiii iiiiiiii
  pop r4-r15 under a mask (vsp set to the popped sp when sp is in it);
  1001nnnn vsp = r[n]; 1010Lnnn pop r4-r[4+n] (and r14 with L); 10110000
  finish; 10110001 pop r0-r3 under a mask; 10110010 uleb vsp += 0x204 + uleb*4;
  anything else (VFP pops) refuses, as the kernel does;
- the caller's pc is the popped pc, else the (possibly popped) lr.

A return address is looked up at address - 1, so a call at a function's very
end (sysrq_handle_crash's noreturn call to panic) is named for its caller,
where the kernel's own dump names the next function. Entry code
(__entry_text_start..__entry_text_end) is crossed as crash does: a return
address into an *_svc exception handler means struct pt_regs sits at that
frame's stack pointer, and the walk goes on from the interrupted registers;
pt_regs of user mode end the walk (Backtrace.user_regs). The IRQ stack is
left through call_with_stack's own unwind entry (`.setfp`).

With a vmlinux whose .debug_frame covers a frame's pc, that frame is unwound
by the CFI first (the shared path), by the table where it has no FDE. The
table is also what `kvmcore symfile` gives gdb, as DWARF CFI
(kvmcore.unwind.exidx_cfi).

A CPU caught in another mode than SVC (QEMU stopped the panicking CPU on the
IRQ vector while panic() waits with interrupts enabled) has only that mode's
banked sp and lr in NT_PRSTATUS: the kernel's sp is lost. The interrupted pc
is lr - 4; the rest of the trace is then found by a scan of the running
task's stack for the deepest return-address slot from which the table walk
reaches the end of the stack, each such frame marked guessed.
"""

from __future__ import annotations

import bisect
import contextlib
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..arches.arm.cpu import CORE_REGS, CPSR_MODE_MASK, PT_REGS, USR_MODE
from ..errors import KvmcoreError
from ..symbols import cfi
from . import register_symfile_cfi, register_unwinder
from .dwarf_cfi import DwarfCfi
from .model import Backtrace, Frame, FrameKind
from .stack import StackGuard
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump

MASK32 = 0xFFFFFFFF
EXIDX_CANTUNWIND = 1
THREAD_SIZE = 8192  # THREAD_SIZE_ORDER 1 (and the IRQ stacks, IRQ_STACK_SIZE)
SVC_MODE = 0x13
#: exception modes whose sp and lr are banked: (name, offset of the interrupted pc from lr)
BANKED_MODES = {0x11: ("fiq", 4), 0x12: ("irq", 4), 0x17: ("abort", 8), 0x1B: ("undef", 4)}
VECTORS = (0xFFFF0000, 0xFFFF1000)  # the high vector page
MAX_OPCODE_WORDS = 8
#: functions that never return, called from code outside the kernel mapping
OUTERMOST = ("secondary_start_kernel", "start_kernel")
R = {name: i for i, name in enumerate(CORE_REGS)}
SP, LR, PC = 13, 14, 15


def prel31(word: int, at: int) -> int:
    """The address a prel31 field at `at` points to."""
    offset = word & 0x7FFFFFFF
    if offset & 0x40000000:
        offset -= 0x80000000
    return (at + offset) & MASK32


class UnwindRefused(Exception):
    """The entry's opcodes cannot be followed (the kernel refuses them too)."""


@dataclass
class Step:
    """One frame unwound: the caller's registers (r0-r15 as known)."""

    regs: dict[int, int]
    sp: int
    pc: int


class ExidxTable:
    """The kernel's .ARM.exidx entries, read from the dump once."""

    def __init__(self, dump: Dump, start: int, stop: int) -> None:
        self.dump = dump
        raw = dump.read(start, stop - start)
        n = len(raw) // 8
        words = struct.unpack(f"<{2 * n}I", raw[: 8 * n])
        self.functions = [prel31(words[2 * i], start + 8 * i) for i in range(n)]
        self.insns = [words[2 * i + 1] for i in range(n)]
        self.start = start

    def __len__(self) -> int:
        return len(self.functions)

    def lookup(self, pc: int) -> tuple[int, int, int] | None:
        """(function address, insn word, address of the insn word) of the entry
        covering pc, or None below the first entry."""
        i = bisect.bisect_right(self.functions, pc) - 1
        if i < 0:
            return None
        return self.functions[i], self.insns[i], self.start + 8 * i + 4

    def opcodes(self, insn: int, at: int) -> list[int] | None:
        """The opcode bytes of an entry (None for EXIDX_CANTUNWIND)."""
        if insn == EXIDX_CANTUNWIND:
            return None
        if insn & 0x80000000:
            words = [insn]
        else:
            extab = prel31(insn, at)
            words = [self.dump.read_u32(extab)]
        first = words[0]
        if first & 0xFF000000 == 0x80000000:
            byte, entries = 2, 1
        elif first & 0xFF000000 == 0x81000000:
            byte, entries = 1, 1 + ((first >> 16) & 0xFF)
            if entries > MAX_OPCODE_WORDS:
                raise UnwindRefused(f"extab entry with {entries} words")
            if entries > 1:
                words += self.dump.read_ptrs(extab + 4, entries - 1)
        else:
            raise UnwindRefused(f"unsupported personality routine (word {first:#010x})")
        out = []
        for w, word in enumerate(words[:entries]):
            for b in range(byte if w == 0 else 3, -1, -1):
                out.append((word >> (8 * b)) & 0xFF)
        return out


class ArmUnwinder:
    """The EHABI table walk (with a vmlinux's CFI first where it has an FDE)."""

    thread_size = THREAD_SIZE

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self.cfi = DwarfCfi(dump, dump.arch.dwarf) if dump.arch.dwarf and dump.vmlinux else None
        self._table: ExidxTable | None = None
        self.table_error: str | None = None
        self._table_loaded = False
        self.entry_text = (
            self.syms.address("__entry_text_start"),
            self.syms.address("__entry_text_end"),
        )

    # -- the table ------------------------------------------------------------
    @property
    def table(self) -> ExidxTable | None:
        if not self._table_loaded:
            self._table_loaded = True
            start = self.syms.address("__start_unwind_idx")
            stop = self.syms.address("__stop_unwind_idx")
            if not start or not stop or stop <= start:
                self.table_error = (
                    "no __start_unwind_idx/__stop_unwind_idx symbols (kallsyms lacks them "
                    "without CONFIG_KALLSYMS_ALL): give the vmlinux or --system-map System.map"
                )
                return None
            try:
                self._table = ExidxTable(self.dump, start, stop)
            except KvmcoreError as exc:
                self.table_error = f"unwind table unreadable: {exc}"
        return self._table

    def step(self, regs: dict[int, int], pc: int, exact: bool, bounds: tuple[int, int]) -> Step:
        """The caller of the frame at `pc` with registers `regs` (by number)."""
        table = self.table
        if table is None:
            raise UnwindRefused(self.table_error or "no unwind table")
        hit = table.lookup(pc if exact or self._entry_start(pc) else pc - 1)
        if hit is None:
            raise UnwindRefused(f"no unwind entry for {pc:#x}")
        _, insn, at = hit
        ops = table.opcodes(insn, at)
        if ops is None:
            raise StopIteration  # EXIDX_CANTUNWIND: the outermost frame
        vrs = dict(regs)
        vrs[PC] = 0
        low, high = bounds
        i = 0

        def pop(reg: int) -> None:
            vsp = vrs[SP]
            if not low <= vsp < high:
                raise UnwindRefused(f"pop from {vsp:#x} outside the stack")
            vrs[reg] = self.dump.read_u32(vsp)
            vrs[SP] = (vsp + 4) & MASK32

        while i < len(ops):
            op = ops[i]
            i += 1
            if op & 0xC0 == 0x00:
                vrs[SP] = (vrs[SP] + ((op & 0x3F) << 2) + 4) & MASK32
            elif op & 0xC0 == 0x40:
                vrs[SP] = (vrs[SP] - ((op & 0x3F) << 2) - 4) & MASK32
            elif op & 0xF0 == 0x80:
                if i >= len(ops):
                    raise UnwindRefused("truncated pop")
                mask = ((op << 8) | ops[i]) & 0x0FFF
                i += 1
                if not mask:
                    raise UnwindRefused("refuse to unwind (pop mask 0)")
                vsp = vrs[SP]
                loaded_sp = None
                for bit in range(12):
                    if mask & (1 << bit):
                        if not low <= vsp < high:
                            raise UnwindRefused(f"pop from {vsp:#x} outside the stack")
                        value = self.dump.read_u32(vsp)
                        vsp += 4
                        if bit + 4 == SP:
                            loaded_sp = value
                        else:
                            vrs[bit + 4] = value
                vrs[SP] = loaded_sp if loaded_sp is not None else vsp & MASK32
            elif op & 0xF0 == 0x90 and op & 0x0D != 0x0D:
                reg = op & 0x0F
                if reg not in vrs:
                    raise UnwindRefused(f"vsp = r{reg}, which this frame does not know")
                vrs[SP] = vrs[reg]
                # .setfp: call_with_stack's frame leads back from the IRQ stack to
                # the task stack (the stack guard checks the switch)
                low = vrs[SP] & ~(self.thread_size - 1)
                high = low + self.thread_size
            elif op & 0xF0 == 0xA0:
                for reg in range(4, 5 + (op & 7)):
                    pop(reg)
                if op & 0x08:
                    pop(LR)
            elif op == 0xB0:
                break
            elif op == 0xB1:
                if i >= len(ops):
                    raise UnwindRefused("truncated pop")
                mask = ops[i]
                i += 1
                if not mask or mask & 0xF0:
                    raise UnwindRefused("spare pop mask")
                for reg in range(4):
                    if mask & (1 << reg):
                        pop(reg)
            elif op == 0xB2:
                uleb = shift = 0
                while True:
                    if i >= len(ops):
                        raise UnwindRefused("truncated uleb128")
                    byte = ops[i]
                    i += 1
                    uleb |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                vrs[SP] = (vrs[SP] + 0x204 + (uleb << 2)) & MASK32
            else:
                raise UnwindRefused(f"unhandled unwind opcode {op:#04x}")
            if not low <= vrs[SP] <= high:
                raise UnwindRefused(f"sp {vrs[SP]:#x} left the stack")
        if vrs[PC] == 0:
            if LR not in vrs:
                raise UnwindRefused("the return address is in lr, which this frame lost")
            vrs[PC] = vrs[LR]
        if vrs[PC] == pc and vrs[SP] == regs.get(SP):
            raise UnwindRefused("unwinding went nowhere")
        return Step(vrs, vrs[SP], vrs[PC])

    # -- helpers ----------------------------------------------------------------
    def _bounds(self, sp: int, task_stack: tuple[int, int] | None) -> tuple[int, int]:
        if task_stack and task_stack[0] <= sp < task_stack[1]:
            return task_stack
        lo = sp & ~(self.thread_size - 1)
        return lo, lo + self.thread_size

    def _in_entry(self, pc: int) -> bool:
        lo, hi = self.entry_text
        return bool(lo and hi and lo <= pc < hi)

    def _entry_start(self, pc: int) -> bool:
        """A return address that is the first instruction of entry code: the
        syscall table's handlers return to ret_fast_syscall (lr set by `badr`),
        not after a call."""
        if not self._in_entry(pc):
            return False
        table = self.table
        hit = table.lookup(pc) if table is not None else None
        return hit is not None and hit[0] == pc

    def _add(self, bt: Backtrace, frame: Frame, exact: bool) -> None:
        exact = exact or self._entry_start(frame.pc)
        desc = self.syms.describe(frame.pc) if exact else self.syms.describe_return(frame.pc)
        frame.function, frame.module = desc
        frame.index = len(bt.frames)
        bt.frames.append(frame)

    def _exception(self, pc: int, sp: int) -> tuple[FrameKind, dict[str, int]] | None:
        """pt_regs at sp when return address pc lies in an *_svc/*_usr exception handler."""
        if not self._in_entry(pc):
            return None
        name = (self.syms.function_name(pc - 1) or "").split("+")[0]
        if not name.endswith(("_svc", "_usr")):
            return None
        regs = dict(zip(PT_REGS, self.dump.read_ptrs(sp, len(PT_REGS))))
        kind: FrameKind = "interrupt" if ("irq" in name or "fiq" in name) else "exception"
        return kind, regs

    def _cfi_step(self, regs: dict[int, int], pc: int, exact: bool) -> Step | None:
        if self.cfi is None or self.cfi.table is None:
            return None
        named = {CORE_REGS[n]: v for n, v in regs.items()}
        named["pc"] = pc
        try:
            found = self.cfi.caller(named, pc, exact)
        except KvmcoreError:
            return None
        if found is None or found.return_address is None:
            return None
        out = {R[n]: v for n, v in found.regs.items() if n in R}
        out[SP] = found.cfa
        return Step(out, found.cfa, found.return_address & MASK32)

    # -- the walk -------------------------------------------------------------
    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        bt = Backtrace()
        if "pc" not in regs or "sp" not in regs:
            bt.error = "registers lack pc/sp"
            return bt
        mode = regs.get("cpsr", SVC_MODE) & CPSR_MODE_MASK
        if mode in BANKED_MODES and VECTORS[0] <= regs["pc"] < VECTORS[1]:
            return self._unwind_banked(regs, mode, max_frames, bt)
        known = {R[n]: v for n, v in regs.items() if n in R}
        return self._walk(bt, known, regs["pc"], True, max_frames, task_stack, guessed=False)

    def _walk(
        self,
        bt: Backtrace,
        known: dict[int, int],
        pc: int,
        exact: bool,
        max_frames: int,
        task_stack: tuple[int, int] | None,
        guessed: bool,
        first_method: str = "registers",
    ) -> Backtrace:
        sp = known[SP]
        guard = StackGuard(sp, self.thread_size, task_stack, self.dump.is_kernel_address)
        self._add(bt, Frame(0, pc, sp, guessed=guessed, method=first_method), exact=exact)
        if self.table is None and (self.cfi is None or self.cfi.table is None):
            bt.error = self.table_error
            return bt
        while True:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            if not exact:
                try:
                    crossed = self._exception(pc, sp)
                except KvmcoreError as exc:
                    bt.error = f"exception frame unreadable: {exc}"
                    return bt
                if crossed is not None:
                    kind, saved = crossed
                    if saved["cpsr"] & CPSR_MODE_MASK == USR_MODE:
                        bt.user_regs = saved
                        return bt
                    error = guard.advance(sp, saved["sp"], allow_same=True)
                    if error:
                        bt.error = error
                        return bt
                    known = {R[n]: v for n, v in saved.items() if n in R}
                    pc, sp, exact = saved["pc"], saved["sp"], True
                    self._add(
                        bt,
                        Frame(0, pc, sp, kind=kind, regs=saved, guessed=guessed, method="pt_regs"),
                        exact=True,
                    )
                    continue
            method = "cfi"
            try:
                step = self._cfi_step(known, pc, exact)
                if step is None:
                    method = "exidx"
                    step = self.step(known, pc, exact, guard.current)
            except StopIteration:  # EXIDX_CANTUNWIND: the end of the stack
                if self._in_entry(pc):
                    with contextlib.suppress(KvmcoreError):
                        # vector_swi pushed the syscall's 5th/6th arguments (S_OFF,
                        # 8 bytes) below the user pt_regs
                        saved = dict(zip(PT_REGS, self.dump.read_ptrs(sp + 8, len(PT_REGS))))
                        if saved["cpsr"] & CPSR_MODE_MASK == USR_MODE:
                            bt.user_regs = saved
                return bt
            except UnwindRefused as exc:
                bt.error = str(exc)
                return bt
            except KvmcoreError as exc:
                bt.error = f"unwind read failed: {exc}"
                return bt
            if step.pc == 0:
                return bt
            if not self.dump.is_kernel_address(step.pc):
                if (self.syms.function_name(pc) or "").startswith(OUTERMOST):
                    return bt  # a secondary CPU's first frame returns to its idmap'd startup
                bt.error = f"return address {step.pc:#x} is not kernel code"
                return bt
            error = guard.advance(sp, step.sp, allow_same=exact)
            if error:
                bt.error = error
                return bt
            known, pc, sp, exact = step.regs, step.pc, step.sp, False
            self._add(bt, Frame(0, pc, sp, guessed=guessed, method=method), exact=False)

    # -- a CPU caught in a banked exception mode ----------------------------------
    def _unwind_banked(
        self, regs: dict[str, int], mode: int, max_frames: int, bt: Backtrace
    ) -> Backtrace:
        name, back = BANKED_MODES[mode]
        pc = (regs["lr"] - back) & MASK32
        bt.notes.append(
            f"the CPU was entering its {name} vector: its kernel sp and lr are banked and "
            f"not in the dump; frame #0 is the interrupted pc (lr_{name} - {back}), the "
            "others come from a scan of the running task's stack (guessed)"
        )
        self._add(bt, Frame(0, pc, regs["sp"], method="registers"), exact=True)
        stack = self._running_stack(regs)
        if stack is None:
            bt.error = "cannot tell which task's stack to scan"
            return bt
        lo, hi = stack
        try:
            words = self.dump.read_ptrs(lo, (hi - lo) // 4)
        except KvmcoreError as exc:
            bt.error = f"stack unreadable: {exc}"
            return bt
        best: tuple[int, Backtrace] | None = None
        for i, word in enumerate(words):
            if not self._is_text(word) or self._call_target(word) is None:
                continue
            slot_sp = lo + 4 * i + 4
            trial = Backtrace()
            known = {SP: slot_sp, LR: word}
            self._walk(
                trial, known, word, False, max_frames, stack, guessed=True, first_method="scan"
            )
            mismatches = self._chain_faults(trial)
            if mismatches is None:
                continue
            if best is None or mismatches < best[0]:
                best = (mismatches, trial)
                if not mismatches:
                    break
        if best is None:
            bt.error = "no return address on the task's stack leads to the end of the stack"
            return bt
        frames = best[1].frames
        at_entry = self._function_start(pc) == pc
        for k, frame in enumerate(frames):
            first = bt.frames[0]
            own = {r: regs[r] for r in CORE_REGS[:13]}  # r0-r12 are the dump's own
            svc = (regs.get("cpsr", SVC_MODE) & ~CPSR_MODE_MASK) | SVC_MODE
            if frame.pc != pc:
                exact = frame.kind != "normal"
                if not at_entry or k + 1 >= len(frames):
                    continue
                if self._function_start(frame.pc if exact else frame.pc - 1) != pc:
                    continue
                # the CPU was caught on the first instruction of a function whose
                # earlier run left this (stale) frame: frame #0 is a new call from
                # the next frame of the chain, so its sp is that frame's and its
                # lr that frame's pc
                caller = frames[k + 1]
                first.regs = {**own, "sp": caller.sp, "lr": caller.pc, "pc": pc, "cpsr": svc}
                first.sp, first.guessed = caller.sp, True
                frames = frames[k + 1 :]
                break
            if frame.kind != "normal" and frame.regs:
                # an earlier interrupt of the same instruction left its pt_regs on the
                # stack: the frames above it are those of the code now interrupted, and
                # its sp and lr are frame #0's
                first.regs = {**frame.regs, **own, "pc": pc}
                first.sp = frame.regs["sp"]
            else:
                # a return address equal to the interrupted pc: the function at pc
                # called one that returned there (an earlier interrupt of that callee
                # left the stale frames above this one), so this frame's sp is frame
                # #0's; its lr is not known
                first.regs = {**own, "sp": frame.sp, "pc": pc, "cpsr": svc}
                first.sp = frame.sp
            first.guessed = True
            frames = frames[k + 1 :]
            break
        for frame in frames:
            frame.index = len(bt.frames)
            bt.frames.append(frame)
        return bt

    def _call_target(self, ret: int) -> int | None:
        """The target of the call before return address `ret` (-1 for an indirect
        call), or None when the instruction before it is no call (ARM state:
        BL, BLX immediate, BLX register)."""
        try:
            insn = self.dump.read_u32(ret - 4)
        except KvmcoreError:
            return None
        if insn & 0x0F000000 == 0x0B000000 and insn >> 28 != 0xF:  # BL<cond>
            offset = (insn & 0x00FFFFFF) << 2
            if offset & 0x02000000:
                offset -= 0x04000000
            return (ret - 4 + 8 + offset) & MASK32
        if insn & 0xFE000000 == 0xFA000000:  # BLX immediate (to Thumb)
            offset = ((insn & 0x00FFFFFF) << 2) | ((insn >> 23) & 2)
            if offset & 0x02000000:
                offset -= 0x04000000
            return (ret - 4 + 8 + offset) & MASK32
        if insn & 0x0FFFFFF0 == 0x012FFF30:  # BLX register
            return -1
        return None

    def _chain_faults(self, trial: Backtrace) -> int | None:
        """How many direct calls in a scanned chain do not call the frame below
        them (stale frames; tail calls also count), or None when the chain is
        not a whole stack: it must end cleanly in entry code, and every return
        address must follow a call."""
        frames = trial.frames
        if trial.error is not None or len(frames) < 2:
            return None
        if not (trial.user_regs is not None or self._in_entry(frames[-1].pc)):
            return None
        faults = 0
        for callee, caller in zip(frames, frames[1:]):
            if caller.kind != "normal" or callee.kind != "normal":
                continue
            if self._in_entry(caller.pc):
                continue
            target = self._call_target(caller.pc)
            if target is None:
                return None
            if target == -1:
                continue
            start = self._function_start(callee.pc - (0 if callee.index == 0 else 1))
            if start is not None and start != target:
                faults += 1
        return faults

    def _function_start(self, pc: int) -> int | None:
        table = self.table
        hit = table.lookup(pc) if table is not None else None
        return hit[0] if hit is not None else None

    def _is_text(self, address: int) -> bool:
        lo, hi = self.syms.address("_stext"), self.syms.address("_etext")
        return bool(lo and hi and lo < address < hi)

    def _running_stack(self, regs: dict[str, int]) -> tuple[int, int] | None:
        """The stack of the task that ran on the CPU these registers are from."""
        with contextlib.suppress(KvmcoreError, AttributeError):
            kernel = self.dump.kernel
            for cpu, state in kernel.cpu_registers.items():
                if state.regs == regs or state.regs.items() <= regs.items():
                    task = kernel.running_task(cpu)
                    if task is None:
                        return None
                    base = self.dump.read_ptr(
                        task.address + self.dump.types.offsetof("struct task_struct", "stack")
                    )
                    return base, base + self.thread_size
        return None


def _symfile_cfi(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]] | None:
    """The rows `kvmcore symfile` gives gdb: this table's entries as DWARF
    CFI (kvmcore.unwind.exidx_cfi)."""
    if dump.os != "linux":
        return None
    from .exidx_cfi import exidx_cfi_ranges

    return exidx_cfi_ranges(dump)


register_unwinder("arm", "linux", ArmUnwinder)
register_symfile_cfi("arm", _symfile_cfi)
