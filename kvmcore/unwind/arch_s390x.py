"""s390x kernel backtraces: the back chain, as the kernel's own unwind_bc.c
walks it, with interrupt and program-check frames (pt_regs) crossed.

The kernel is built with -mbackchain -mpacked-stack, so a frame is a
`struct stack_frame` (arch/s390/include/asm/stacktrace.h, 160 bytes =
STACK_FRAME_OVERHEAD): 9 words of scratch/SIE fields, `gprs[10]` (the
callee's save area for r6-r15) at 72 and `back_chain` at 152. A callee saves
its caller's r6-r15 in the caller's frame, so the return address of a frame
(its caller's resume point) is the r14 slot, gprs[8] at 136, *of the caller's
frame*: from a frame at sp, the caller's frame is back_chain(sp) and the
caller's pc is gprs[8] of that frame.

A zero back chain ends the frames of one entry: struct pt_regs follows at
sp + 160 (entry.S clears __SF_BACKCHAIN before it builds them), holding the
interrupted psw and gprs; a psw in problem state ends the walk at user mode.
The offsets come from the dump's types (BTF) when it has them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arches.s390x.cpu import GPRS, PSW_MASK_PSTATE
from ..errors import KvmcoreError
from . import register_unwinder
from .model import Backtrace, Frame
from .stack import StackGuard
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump

STACK_FRAME_OVERHEAD = 160
SF_GPRS = 72  # offsetof(struct stack_frame, gprs): r6..r15
SF_BACKCHAIN = 152
SF_R14 = SF_GPRS + 8 * 8
PT_PSW = 8  # offsetof(struct pt_regs, psw): after args[1]
PT_GPRS = 24
THREAD_SIZE = 16384


class S390xUnwinder:
    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self.sf_gprs, self.sf_backchain = SF_GPRS, SF_BACKCHAIN
        self.pt_psw, self.pt_gprs = PT_PSW, PT_GPRS
        try:
            types = dump.types
            self.sf_gprs = types.offsetof("struct stack_frame", "gprs")
            self.sf_backchain = types.offsetof("struct stack_frame", "back_chain")
        except KvmcoreError:
            pass
        try:
            types = dump.types
            self.pt_psw = types.offsetof("struct pt_regs", "psw")
            self.pt_gprs = types.offsetof("struct pt_regs", "gprs")
        except KvmcoreError:
            pass

    def _add(self, bt: Backtrace, frame: Frame, exact: bool) -> None:
        desc = self.syms.describe(frame.pc) if exact else self.syms.describe_return(frame.pc)
        frame.function, frame.module = desc
        frame.index = len(bt.frames)
        bt.frames.append(frame)

    def _is_text(self, address: int) -> bool:
        return bool(address) and self.syms.function_name(address) is not None

    def pt_regs(self, at: int) -> dict[str, int]:
        mask, addr = self.dump.read_ptrs(at + self.pt_psw, 2)
        regs = dict(zip(GPRS, self.dump.read_ptrs(at + self.pt_gprs, 16)))
        regs["pswm"], regs["pswa"] = mask, addr
        return regs

    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        bt = Backtrace()
        if "pswa" not in regs or "r15" not in regs:
            bt.error = "registers lack pswa/r15"
            return bt
        read = self.dump.read_ptr
        pc, sp = regs["pswa"], regs["r15"]
        guard = StackGuard(sp, THREAD_SIZE, task_stack, self.dump.is_kernel_address)
        self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
        after_regs = True  # pc is an interrupted instruction: r14 may name its caller
        r14 = regs.get("r14")
        while len(bt.frames) < max_frames:
            try:
                if after_regs:
                    after_regs = False
                    # the interrupted function may not have saved r14 yet (a leaf,
                    # or its prologue): its caller is then in r14, as unwind_bc.c
                    # takes it; skipped when it is not code or repeats pc
                    if (
                        r14 is not None
                        and self._is_text(r14)
                        and (self.syms.function_name(r14 - 2) != self.syms.function_name(pc))
                    ):
                        chain = read(sp + self.sf_backchain)
                        caller_ret = read(chain + self.sf_gprs + 8 * 8) if chain else None
                        if r14 != caller_ret:
                            self._add(bt, Frame(0, r14, sp, guessed=True, method="lr"), False)
                chain = read(sp + self.sf_backchain)
            except KvmcoreError as exc:
                bt.error = f"stack frame unreadable: {exc}"
                return bt
            if chain:
                error = guard.advance(sp, chain)
                if error:
                    bt.error = error
                    return bt
                try:
                    ret = read(chain + self.sf_gprs + 8 * 8)
                except KvmcoreError as exc:
                    bt.error = f"stack frame unreadable: {exc}"
                    return bt
                if not self._is_text(ret):
                    # the outermost frame of a stack has no caller
                    if ret:
                        bt.notes.append(f"back chain ends at {chain:#x}: {ret:#x} is not code")
                    return bt
                sp = chain
                self._add(bt, Frame(0, ret, sp, method="backchain"), exact=False)
                continue
            # no back chain: the registers of an interrupt or exception follow
            at = sp + STACK_FRAME_OVERHEAD
            try:
                saved = self.pt_regs(at)
            except KvmcoreError:
                return bt  # the end of the stack
            if saved["pswm"] & PSW_MASK_PSTATE:
                bt.user_regs = saved
                return bt
            if not saved["pswa"] or not self.dump.is_kernel_address(saved["r15"]):
                return bt
            error = guard.advance(sp, saved["r15"], allow_same=True)
            if error:
                bt.error = error
                return bt
            pc, sp, r14 = saved["pswa"], saved["r15"], saved["r14"]
            self._add(
                bt,
                Frame(0, pc, sp, kind="exception", regs=saved, method="pt_regs"),
                exact=True,
            )
            after_regs = True
        bt.error = f"stopped after {max_frames} frames"
        return bt


register_unwinder("s390x", None, S390xUnwinder)
