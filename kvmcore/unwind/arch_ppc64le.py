"""ppc64le kernel backtraces: the ELFv2 back chain with exception frames
(pt_regs marked "regshere") crossed, as the kernel's show_stack walks it.

r1 points at the current frame, whose first word is the back chain (the
caller's r1); a function saves its return address (LR) in its caller's
frame at 16 (STACK_FRAME_LR_SAVE). So from a frame at sp, the caller's frame
is *sp and the caller's pc is the word at *sp + 16.

Exception entry builds a frame whose word at STACK_FRAME_MARKER holds
STACK_FRAME_REGS_MARKER ("REGS" in 6.1, "regshere" since 6.2) with struct
pt_regs after it: at 96 and
112 up to Linux 6.1 (STACK_FRAME_OVERHEAD 112), at 32 and 48 since 6.2
(STACK_INT_FRAME_MARKER / STACK_INT_FRAME_REGS). A msr with MSR_PR set there
is user mode: the walk ends.

On pseries a panicking CPU ends in the firmware's `ibm,os-term` (RTAS, in
real mode): its pc is firmware code (QEMU's RTAS blob at 0x2ffff000), not the
kernel's. enter_rtas left a frame at r1 (and saved r1 in paca->saved_r1), so
the walk starts there: the frame at pc is shown as firmware, the callers come
from the back chain.

Also the unwind rows `kvmcore symfile` gives gdb (see ppc64_backchain_cfi).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..arches.ppc64le.cpu import MSR_PR, PT_REGS
from ..errors import KvmcoreError
from ..symbols import cfi
from . import register_symfile_cfi, register_unwinder
from .framepointer import text_ranges
from .model import Backtrace, Frame
from .stack import StackGuard
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump

LR_SAVE = 16
#: STACK_FRAME_REGS_MARKER as read in a word: "regshere", or the bytes "REGS"
#: (0x52454753 stored from 6.1's exception_marker; 6.12 on ppc64le stores
#: 0x53474552, seen in the sample's syscall frames)
REGS_MARKERS = (0x7265677368657265, 0x53474552, 0x52454753)
#: (marker offset, pt_regs offset) in an exception frame: 6.1 and older, 6.2+
MARKER_LAYOUTS = ((96, 112), (32, 48))


def marker_layouts(dump: Dump) -> tuple[tuple[int, int], ...]:
    """The exception-frame layouts to look for: the one of the dump's kernel
    when its release is known, else both. Trying both on a known kernel is
    wrong: a 64-byte frame's word at 96 can be the next frame's marker (at
    its 32), which made a syscall's last frame look like the entry frame."""
    info = dump.vmcoreinfo
    release = (info.osrelease if info is not None else None) or ""
    m = re.match(r"(\d+)\.(\d+)", release)
    if m is None:
        return MARKER_LAYOUTS
    return (MARKER_LAYOUTS[0],) if (int(m[1]), int(m[2])) < (6, 2) else (MARKER_LAYOUTS[1],)


THREAD_SIZE = 16384


class Ppc64Unwinder:
    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self._saved_r1: int | None | bool = False
        self.layouts = marker_layouts(dump)

    def _add(self, bt: Backtrace, frame: Frame, exact: bool) -> None:
        desc = self.syms.describe(frame.pc) if exact else self.syms.describe_return(frame.pc)
        frame.function, frame.module = desc
        frame.index = len(bt.frames)
        bt.frames.append(frame)

    def _is_text(self, address: int) -> bool:
        return (
            bool(address)
            and self.dump.is_kernel_address(address)
            and self.syms.function_name(address) is not None
        )

    def exception_regs(self, sp: int) -> dict[str, int] | None:
        """The pt_regs of the exception frame at `sp`, when it is one."""
        for marker_at, regs_at in self.layouts:
            try:
                if self.dump.read_ptr(sp + marker_at) not in REGS_MARKERS:
                    continue
                values = self.dump.read_ptrs(sp + regs_at, len(PT_REGS))
            except KvmcoreError:
                return None
            return dict(zip(PT_REGS, values))
        return None

    def _paca_saved_r1(self, regs: dict[str, int]) -> int | None:
        """paca->saved_r1 of the CPU whose paca r13 points at."""
        paca = regs.get("r13", 0)
        if not self.dump.is_kernel_address(paca):
            return None
        try:
            off = self.dump.types.offsetof("struct paca_struct", "saved_r1")
            value = self.dump.read_ptr(paca + off)
        except KvmcoreError:
            return None
        return value if self.dump.is_kernel_address(value) else None

    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        bt = Backtrace()
        if "nip" not in regs or "r1" not in regs:
            bt.error = "registers lack nip/r1"
            return bt
        is_kernel = self.dump.is_kernel_address
        read = self.dump.read_ptr
        pc, sp = regs["nip"], regs["r1"]
        lr = regs.get("lr")
        if not self._is_text(pc):
            # firmware (pseries RTAS ibm,os-term) or real mode: start from the
            # frame the kernel left at r1 (else the one enter_rtas saved in the paca)
            if not is_kernel(sp):
                saved = self._paca_saved_r1(regs)
                if saved is None:
                    bt.error = f"pc {pc:#x} is not kernel code and r1 {sp:#x} no kernel stack"
                    self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
                    return bt
                sp = saved
                bt.notes.append("r1 from paca->saved_r1 (the CPU was in firmware)")
            else:
                bt.notes.append(f"pc {pc:#x} is firmware code: callers from the kernel's r1")
            lr = None  # firmware's lr says nothing of the kernel's frames
        guard = StackGuard(sp, THREAD_SIZE, task_stack, is_kernel)
        self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
        first = True
        while len(bt.frames) < max_frames:
            crossed = None if first else self.exception_regs(sp)
            first = False
            if crossed is not None:
                if crossed["msr"] & MSR_PR:
                    bt.user_regs = crossed
                    return bt
                error = guard.advance(sp, crossed["r1"])
                if error:
                    bt.error = error
                    return bt
                pc, sp, lr = crossed["nip"], crossed["r1"], crossed["lr"]
                self._add(
                    bt,
                    Frame(0, pc, sp, kind="exception", regs=crossed, method="pt_regs"),
                    exact=True,
                )
                if len(bt.frames) >= max_frames:
                    break
            try:
                chain = read(sp)
                ret = read(chain + LR_SAVE) if chain and is_kernel(chain) else 0
            except KvmcoreError as exc:
                bt.error = f"stack frame unreadable: {exc}"
                return bt
            if lr is not None:
                # a function interrupted before it saved LR (a leaf, or its
                # prologue) has its caller only in lr: add that, marked guessed
                if (
                    self._is_text(lr)
                    and lr != ret
                    and (self.syms.function_name(lr - 4) != self.syms.function_name(pc))
                ):
                    self._add(bt, Frame(0, lr, sp, guessed=True, method="lr"), exact=False)
                lr = None
            if not chain or not is_kernel(chain):
                return bt  # the end of the chain
            error = guard.advance(sp, chain)
            if error:
                bt.error = error
                return bt
            if not self._is_text(ret):
                if ret:
                    bt.notes.append(f"back chain ends at {chain:#x}: {ret:#x} is not code")
                return bt
            sp = chain
            self._add(bt, Frame(0, ret, sp, method="backchain"), exact=False)
        bt.error = f"stopped after {max_frames} frames"
        return bt


# -- DWARF CFI for `kvmcore symfile` -------------------------------------------
# gdb's rs6000 prologue analyser, given symbols alone, stops after a few
# frames ("frame did not save the PC"). One rule serves all kernel code, the
# back chain as show_stack follows it, as DWARF expressions on r1 (this
# frame's sp):
#   the frame at r1 holds the exception marker (STACK_FRAME_REGS_MARKER at
#     the kernel version's marker offset): struct pt_regs follows it; the
#     caller is the interrupted context: CFA = its gpr[1], pc its nip, lr its
#     link, r0 and r2-r31 its gprs; with MSR_PR set (user mode) the CFA is r1
#     itself, below the caller frame's, so gdb stops there ("previous frame
#     inner to this frame");
#   else: CFA = *r1 (the back chain: the caller's sp), the return address at
#     CFA + 16 (LR_SAVE in the caller's frame), other registers unchanged.
# The return address column is a number gdb maps to no register (67), so
# that pc and lr can differ across an exception frame. The rule is wrong for
# the innermost frame while a function is in its prologue or keeps no frame.
DWARF_R1, DWARF_LR, DWARF_RA = 1, 65, 67
PT_NIP, PT_MSR, PT_LINK = 8 * 32, 8 * 33, 8 * 36  # struct pt_regs after gpr[32]


def ppc64_backchain_cfi(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """The back-chain rule (see above) over kernel and module text."""
    marker_at, regs_at = marker_layouts(dump)[-1]
    order = dump.byteorder

    def if_zero_else(test: bytes, when_zero: bytes, otherwise: bytes) -> bytes:
        return cfi.if_zero_else(test, when_zero, otherwise, order)

    def word(at: int) -> bytes:
        return cfi.breg(DWARF_R1, at) + cfi.deref()

    # 0 when the word at the marker offset is one of REGS_MARKERS
    not_exception = word(marker_at) + cfi.differs_from_all(REGS_MARKERS)
    user = word(regs_at + PT_MSR) + cfi.mask(MSR_PR)
    chain = word(0)
    cfa = if_zero_else(
        not_exception,
        if_zero_else(user, word(regs_at + 8 * DWARF_R1), cfi.breg(DWARF_R1, 0)),
        chain,
    )
    rule = cfi.def_cfa_expression(cfa)
    rule += cfi.saved_at(
        DWARF_RA,
        if_zero_else(
            not_exception, cfi.breg(DWARF_R1, regs_at + PT_NIP), chain + cfi.plus(LR_SAVE)
        ),
    )
    rule += cfi.saved_at(
        DWARF_LR,
        if_zero_else(
            not_exception, cfi.breg(DWARF_R1, regs_at + PT_LINK), chain + cfi.plus(LR_SAVE)
        ),
    )
    rule += cfi.value_is(DWARF_R1, cfi.plus(0))
    for n in (0, *range(2, 32)):
        rule += cfi.value_is(n, if_zero_else(not_exception, word(regs_at + 8 * n), cfi.breg(n, 0)))
    layout = cfi.CfiLayout(address_size=8, return_column=DWARF_RA, data_align=-8, byteorder=order)
    return layout, text_ranges(dump, cfi.CfiRule(rule, "backchain"))


register_unwinder("ppc64le", None, Ppc64Unwinder)
register_symfile_cfi(
    "ppc64le", lambda dump: ppc64_backchain_cfi(dump) if dump.os == "linux" else None
)
