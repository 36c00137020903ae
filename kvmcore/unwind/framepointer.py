"""Frame-pointer unwinding: a chain of {saved frame pointer, return address}
records, the frame pointer register pointing at the newest one (aarch64's
x29 chain, i386's ebp chain). Arch subclasses say how to read registers,
clean return addresses and cross exception frames."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import KvmcoreError
from .model import Backtrace, Frame
from .stack import StackGuard
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump


class FramePointerUnwinder:
    pc_reg = "pc"
    sp_reg = "sp"
    fp_reg = "fp"
    lr_reg: str | None = None  # link register, for a leaf function's caller
    thread_size = 16384

    def __init__(self, dump: "Dump") -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self.word = dump.word_size

    # -- arch hooks -----------------------------------------------------------
    def clean(self, address: int) -> int:
        """A return address as saved, made a plain code address."""
        return address

    def exception_regs(self, return_address: int, next_fp: int) -> tuple[str, dict[str, int]] | None:
        """(kind, registers) when `return_address` returns into exception entry
        code whose saved registers the record at `next_fp` belongs to."""
        return None

    def is_user(self, regs: dict[str, int]) -> bool:
        return False

    # -- the walk -------------------------------------------------------------
    def unwind(self, regs: dict[str, int], max_frames: int = 64,
               task_stack: tuple[int, int] | None = None) -> Backtrace:
        bt = Backtrace()
        if self.pc_reg not in regs or self.sp_reg not in regs or self.fp_reg not in regs:
            bt.error = f"registers lack {self.pc_reg}/{self.sp_reg}/{self.fp_reg}"
            return bt
        pc, sp, fp = regs[self.pc_reg], regs[self.sp_reg], regs[self.fp_reg]
        guard = StackGuard(sp, self.thread_size, task_stack, self.dump.arch.is_kernel_address)
        self._add(bt, Frame(0, pc, sp), exact=True)
        self._leaf_caller(bt, regs, fp)
        prev = sp
        while fp:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            error = guard.advance(prev, fp, allow_same=(fp == prev))
            if error:
                bt.error = error
                return bt
            try:
                next_fp, ret = self.dump.read_ptrs(fp, 2)
            except KvmcoreError as exc:
                bt.error = f"frame record unreadable: {exc}"
                return bt
            ret = self.clean(ret)
            if ret == 0:
                break  # the final record of a task's stack
            frame_sp = fp + 2 * self.word
            self._add(bt, Frame(len(bt.frames), ret, frame_sp), exact=False)
            prev, fp = fp, next_fp
            if not next_fp or not self.dump.arch.is_kernel_address(next_fp):
                break  # end of the chain (a user-mode frame pointer after entry code)
            try:
                crossed = self.exception_regs(ret, next_fp)
            except KvmcoreError as exc:
                bt.error = f"exception frame unreadable: {exc}"
                return bt
            if crossed is None:
                continue
            kind, saved = crossed
            if self.is_user(saved):
                bt.user_regs = saved
                break
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            self._add(bt, Frame(len(bt.frames), saved[self.pc_reg], saved[self.sp_reg],
                                kind=kind, regs=saved), exact=True)
            self._leaf_caller(bt, saved, saved[self.fp_reg])
            # the record inside the saved registers repeats {fp, pc}: skip it
            fp = saved[self.fp_reg]
            prev = next_fp
        return bt

    def _add(self, bt: Backtrace, frame: Frame, exact: bool) -> None:
        desc = self.syms.describe(frame.pc) if exact else self.syms.describe_return(frame.pc)
        frame.function, frame.module = desc
        frame.index = len(bt.frames)
        bt.frames.append(frame)

    def _leaf_caller(self, bt: Backtrace, regs: dict[str, int], fp: int) -> None:
        """A function stopped before it saved its frame record (a leaf, or at
        its entry) has its caller only in the link register: add that caller,
        marked guessed, when lr is code of another function than pc and not
        the return address the newest record already holds."""
        if not self.lr_reg or self.lr_reg not in regs:
            return
        lr = self.clean(regs[self.lr_reg])
        pc = regs[self.pc_reg]
        if not self.dump.arch.is_kernel_address(lr):
            return
        name = self.syms.function_name(lr - 1)
        if not name or name == self.syms.function_name(pc):
            return
        try:
            recorded = self.clean(self.dump.read_ptrs(fp, 2)[1]) if fp else None
        except KvmcoreError:
            recorded = None
        if recorded == lr:
            return
        self._add(bt, Frame(len(bt.frames), lr, regs[self.sp_reg], guessed=True), exact=False)
