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

Also the unwind rows `kvmcore symfile` gives gdb (see s390x_backchain_cfi).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arches.s390x.cpu import GPRS, PSW_MASK_PSTATE
from ..errors import KvmcoreError
from ..symbols import cfi
from . import register_symfile_cfi, register_unwinder
from .framepointer import text_ranges
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


def frame_offsets(dump: Dump) -> tuple[int, int, int, int]:
    """offsetof stack_frame.gprs and .back_chain, pt_regs.psw and .gprs: from
    the dump's types when it has them, else the 6.x layout."""
    sf_gprs, sf_backchain, pt_psw, pt_gprs = SF_GPRS, SF_BACKCHAIN, PT_PSW, PT_GPRS
    try:
        types = dump.types
        sf_gprs = types.offsetof("struct stack_frame", "gprs")
        sf_backchain = types.offsetof("struct stack_frame", "back_chain")
    except KvmcoreError:
        pass
    try:
        types = dump.types
        pt_psw = types.offsetof("struct pt_regs", "psw")
        pt_gprs = types.offsetof("struct pt_regs", "gprs")
    except KvmcoreError:
        pass
    return sf_gprs, sf_backchain, pt_psw, pt_gprs


class S390xUnwinder:
    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self.sf_gprs, self.sf_backchain, self.pt_psw, self.pt_gprs = frame_offsets(dump)

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


# -- DWARF CFI for `kvmcore symfile` -------------------------------------------
# gdb's own s390 unwinders fail on a kernel from symbols alone: its prologue
# analyser needs function bounds it does not get ("PC not saved"), and its
# back-chain unwinder reads the chain at offset 0 of the frame, where the
# standard ABI keeps it; the kernel is built with -mpacked-stack, which moves
# it to 152. One rule serves all kernel code, the back chain as unwind_bc.c
# follows it, evaluated by gdb as DWARF expressions (r15 is this frame's sp):
#   bc = *(r15 + 152)
#   bc != 0: CFA = bc + 160 (the ABI's CFA: the caller's sp + 160); the
#     return address (r14, the return column) is the caller's r14 slot,
#     *(bc + 136); r6-r13 keep their values (gdb cannot tell which of them
#     a function saved: the ABI's call-saved default).
#   bc == 0: struct pt_regs at r15 + 160 (an interrupt or program check):
#     CFA = its r15 + 160, the return address its psw address (0 when the
#     psw is in problem state: gdb shows one "0x0 in ??" frame and stops),
#     r6-r13 its gprs.
# The rule is wrong for the innermost frame while a function is in its
# prologue (before it stored its back chain) or keeps no frame (a leaf).
DWARF_R14, DWARF_R15 = 14, 15


def s390x_backchain_cfi(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """The back-chain rule (see above) over kernel and module text."""
    sf_gprs, sf_backchain, pt_psw, pt_gprs = frame_offsets(dump)
    pt = STACK_FRAME_OVERHEAD  # struct pt_regs follows a zero back chain's frame

    def if_zero_else(test: bytes, when_zero: bytes, otherwise: bytes) -> bytes:
        return cfi.if_zero_else(test, when_zero, otherwise, "big")

    def bc() -> bytes:
        return cfi.breg(DWARF_R15, sf_backchain) + cfi.deref()

    def pt_gpr(n: int) -> bytes:
        return cfi.breg(DWARF_R15, pt + pt_gprs + 8 * n) + cfi.deref()

    user = cfi.breg(DWARF_R15, pt + pt_psw) + cfi.deref() + cfi.mask(PSW_MASK_PSTATE)
    # a user-mode psw: a CFA below the caller frame's ends the walk there
    # ("previous frame inner to this frame"), where a zero pc would make
    # gdb's s390 stub unwinder fail with an error ("PC not saved")
    cfa = if_zero_else(
        bc(),
        if_zero_else(user, pt_gpr(15) + cfi.plus(STACK_FRAME_OVERHEAD), cfi.breg(DWARF_R15, 0)),
        bc() + cfi.plus(STACK_FRAME_OVERHEAD),
    )
    # where the return address is: a location (DW_CFA_expression), as gdb
    # files a val_expression under the unadjusted column, where its s390
    # return column (adjusted to r14's lower-half number) does not see it;
    # the zero back chain slot itself stands for the 0 of a user-mode psw
    ret_at = if_zero_else(
        bc(),
        if_zero_else(user, cfi.breg(DWARF_R15, pt + pt_psw + 8), cfi.breg(DWARF_R15, sf_backchain)),
        bc() + cfi.plus(sf_gprs + 8 * (14 - 6)),
    )
    rule = cfi.def_cfa_expression(cfa) + cfi.saved_at(DWARF_R14, ret_at)
    rule += cfi.value_is(DWARF_R15, cfi.plus(-STACK_FRAME_OVERHEAD))
    for n in range(6, 14):
        rule += cfi.value_is(n, if_zero_else(bc(), pt_gpr(n), cfi.breg(n, 0)))
    layout = cfi.CfiLayout(address_size=8, return_column=DWARF_R14, data_align=-8, byteorder="big")
    return layout, text_ranges(dump, cfi.CfiRule(rule, "backchain"))


register_unwinder("s390x", None, S390xUnwinder)
register_symfile_cfi(
    "s390x", lambda dump: s390x_backchain_cfi(dump) if dump.os == "linux" else None
)
