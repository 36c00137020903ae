"""riscv64 kernel backtraces: the s0 frame-pointer chain with the frame record
{saved s0, ra} in the two words below the frame pointer, exception frames
(struct pt_regs) crossed where a return address lies in the kernel's entry
code, leaf functions recognised as the kernel's own walk does; and the
frame-record CFI rows `kvmcore symfile` gives gdb.

The rules follow arch/riscv/kernel/stacktrace.c walk_stackframe (6.x):

- GCC's prologue with frame pointers stores ra at s0-8 and the caller's s0 at
  s0-16, s0 being the caller's sp (the CFA);
- a leaf function stores only the caller's s0, at s0-8, and keeps its return
  address in ra: when the word at fp-8 of the first frame of a register set
  is a plausible frame pointer (above sp, inside its stack, 8-aligned), it is
  the caller's s0 and ra the return address;
- a return address in [handle_exception, ret_from_exception_end) means the
  frame's caller is the exception entry code, whose struct pt_regs sits at
  that frame's stack pointer (the handler's CFA): the walk continues from its
  epc and s0. Saved status.SPP clear means the trap came from user mode.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arches.riscv64.cpu import PT_REGS, SSTATUS_SPP
from ..errors import KvmcoreError
from ..symbols import cfi
from . import register_symfile_cfi, register_unwinder
from .framepointer import FramePointerUnwinder, frame_record_cfi
from .model import Backtrace, Frame, FrameKind
from .stack import StackGuard

if TYPE_CHECKING:
    from ..dump import Dump

CAUSE_INTERRUPT = 1 << 63
ENTRY_NAMES = ("handle_exception", "ret_from_exception", "handle_kernel_stack_overflow")
#: where kernel threads start (6.12: ret_from_fork; later ret_from_fork_kernel_asm)
FORK_NAMES = ("ret_from_fork",)


class Riscv64Unwinder(FramePointerUnwinder):
    lr_reg = "ra"
    record_offset = -16
    crossing_needs_fp = False
    thread_size = 16384  # THREAD_SIZE with 4K pages and KASAN off (16 KiB on rv64)

    def __init__(self, dump: Dump) -> None:
        super().__init__(dump)
        self.entry = (
            self.syms.address("handle_exception"),
            self.syms.address("ret_from_exception_end"),
        )

    # -- hooks ------------------------------------------------------------
    def in_entry(self, address: int) -> bool:
        lo, hi = self.entry
        if lo and hi and lo < hi:
            return lo <= address < hi
        name = self.syms.function_name(address - 1) or ""
        return name.startswith(ENTRY_NAMES)

    def exception_regs_at(
        self, return_address: int, next_fp: int, sp: int
    ) -> tuple[FrameKind, dict[str, int]] | None:
        if not self.in_entry(return_address):
            return None
        regs = dict(zip(PT_REGS, self.dump.read_ptrs(sp, len(PT_REGS))))
        kind: FrameKind = "interrupt" if regs["cause"] & CAUSE_INTERRUPT else "exception"
        return kind, regs

    def is_user(self, regs: dict[str, int]) -> bool:
        return not regs.get("status", SSTATUS_SPP) & SSTATUS_SPP

    def _stop(self, bt: Backtrace, sp: int, fp: int) -> str | None:
        """Why the walk must not read the record below `fp` ("" for a clean end), or None.

        ret_from_fork is the outermost frame of a kernel thread (its s0 holds the
        thread function, not a frame pointer). Otherwise fp must lie on the
        current stack above sp (stacktrace.c fp_is_valid), except that
        call_on_irq_stack's record on the IRQ stack leads back to the task stack."""
        last = (bt.frames[-1].function or "") if bt.frames else ""
        if last.startswith(FORK_NAMES):
            return ""
        if fp & 7:
            return f"frame pointer {fp:#x} is not 8-byte aligned"
        if self._valid_fp(fp, sp) or last.startswith("call_on_irq_stack"):
            return None
        return f"frame pointer {fp:#x} is not on the stack of sp {sp:#x}"

    def _frame_record(
        self, bt: Backtrace, guard: StackGuard, sp: int, fp: int
    ) -> tuple[int, int] | None:
        why = self._stop(bt, sp, fp)
        if why is not None:
            bt.error = why or None
            return None
        return super()._frame_record(bt, guard, sp, fp)

    def _valid_fp(self, value: int, sp: int) -> bool:
        """stacktrace.c fp_is_valid: sp + 16 <= value <= ALIGN(sp, THREAD_SIZE), 8-aligned."""
        top = (sp + self.thread_size - 1) & ~(self.thread_size - 1)
        return sp + 16 <= value <= top and not value & 7

    # -- the walk without CFI -------------------------------------------------
    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        if self.cfi is not None and self.cfi.table is not None:
            return super().unwind(regs, max_frames, task_stack)
        bt = Backtrace()
        if self.cfi is not None and self.cfi.note():
            bt.notes.append(self.cfi.note() or "")
        if any(r not in regs for r in ("pc", "sp", "s0")):
            bt.error = "registers lack pc/sp/s0"
            return bt
        is_kernel = self.dump.is_kernel_address
        pc, sp, fp = regs["pc"], regs["sp"], regs["s0"]
        guard = StackGuard(sp, self.thread_size, task_stack, is_kernel)
        self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
        exact_regs: dict[str, int] | None = regs  # registers of a frame stopped at pc
        while True:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            if not fp or not is_kernel(fp):
                return bt  # end of the chain
            why = self._stop(bt, sp, fp) if exact_regs is None else None
            if why is not None:
                bt.error = why or None
                return bt
            error = guard.advance(sp, fp)  # the record lies below fp, the caller's sp
            if error:
                bt.error = error
                return bt
            try:
                rec_fp, rec_ra = self.dump.read_ptrs(fp - 16, 2)
            except KvmcoreError as exc:
                bt.error = f"frame record unreadable: {exc}"
                return bt
            if exact_regs is not None and self._valid_fp(rec_ra, fp):
                # a leaf: fp-8 holds the caller's s0, the return address is in ra
                next_fp, ret = rec_ra, exact_regs.get("ra", 0)
            else:
                next_fp, ret = rec_fp, rec_ra
                if exact_regs is not None:
                    self._entry_caller(bt, exact_regs, ret)
            exact_regs = None
            if ret == 0:
                return bt  # the final record of a task's stack (ret_from_fork's)
            if not is_kernel(ret):
                bt.error = f"return address {ret:#x} at {fp - 8:#x} is not kernel code"
                return bt
            sp = fp
            self._add(bt, Frame(len(bt.frames), ret, sp, method="fp"), exact=False)
            fp = next_fp
            try:
                crossed = self.exception_regs_at(ret, next_fp, sp)
            except KvmcoreError as exc:
                bt.error = f"exception frame unreadable: {exc}"
                return bt
            if crossed is None:
                continue
            kind, saved = crossed
            if self.is_user(saved):
                bt.user_regs = saved
                return bt
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            self._add(
                bt,
                Frame(
                    len(bt.frames),
                    saved["pc"],
                    saved["sp"],
                    kind=kind,
                    regs=saved,
                    method="pt_regs",
                ),
                exact=True,
            )
            error = guard.advance(sp, saved["sp"], allow_same=True)
            if error:
                bt.error = error
                return bt
            pc, sp, fp = saved["pc"], saved["sp"], saved["s0"]
            exact_regs = saved

    def _entry_caller(self, bt: Backtrace, regs: dict[str, int], recorded: int) -> bool:
        """A function stopped in its prologue (before it saved ra and s0) has its
        caller only in ra: add that caller, marked guessed, when ra is kernel
        code of another function than pc and not what the record holds."""
        ra = regs.get("ra", 0)
        if not ra or ra == recorded or not self.dump.is_kernel_address(ra):
            return False
        name = self.syms.function_name(ra - 1)
        if not name or name == self.syms.function_name(regs["pc"]):
            return False
        self._add(bt, Frame(len(bt.frames), ra, regs["sp"], guessed=True, method="lr"), exact=False)
        return True


# -- DWARF CFI for `kvmcore symfile` -------------------------------------------
# Debian's riscv64 kernels keep frame pointers, so one rule serves all kernel
# text: CFA = s0 (x8), the caller's s0 saved at CFA-16 and ra (x1, the return
# column) at CFA-8; gdb's riscv unwinder takes the caller's sp as the CFA. The
# rule is wrong for the innermost frame while a function is in its prologue and
# for leaf functions (which save no ra), and it does not cross exception
# frames (entry code keeps no frame record): gdb stops there.
DWARF_S0, DWARF_RA = 8, 1


def riscv64_fp_cfi(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """The frame-record rule (see above) for `kvmcore symfile`."""
    return frame_record_cfi(dump, DWARF_S0, DWARF_RA, 0)


register_unwinder("riscv64", "linux", Riscv64Unwinder)
register_symfile_cfi("riscv64", lambda dump: riscv64_fp_cfi(dump) if dump.os == "linux" else None)
