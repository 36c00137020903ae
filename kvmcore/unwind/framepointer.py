"""Frame-pointer unwinding: a chain of {saved frame pointer, return address}
records, the frame pointer register pointing at the newest one (aarch64's
x29 chain, i386's and FreeBSD amd64's ebp/rbp chain). Arch subclasses say how
to clean return addresses and cross exception frames."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import KvmcoreError, UnsupportedError
from ..symbols import cfi
from .dwarf_cfi import DwarfCfi
from .model import Backtrace, Frame, FrameKind
from .stack import StackGuard
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump


class FramePointerUnwinder:
    """The walk; the register names come from the dump's Arch. With a vmlinux
    (and the arch's DWARF register numbering), frames are found by its
    .debug_frame first, the frame-pointer chain where it has no FDE."""

    lr_reg: str | None = None  # link register, for a leaf function's caller
    thread_size = 16384
    #: where a frame record sits relative to the frame pointer: 0 when fp points
    #: at it (aarch64, i386, amd64); riscv64's fp is the frame's CFA, with the
    #: record {fp, ra} in the two words below it (-16)
    record_offset = 0
    #: exception frames are found through the frame pointer (aarch64's pt_regs
    #: stackframe); False: through the stack pointer alone (riscv64), so a user
    #: frame pointer restored by the CFI does not hide them
    crossing_needs_fp = True

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self.syms = CodeSymbols(dump)
        self.word = dump.word_size
        arch = dump.arch
        self.pc_reg, self.sp_reg, self.fp_reg = arch.pc_reg, arch.sp_reg, arch.fp_reg
        self.cfi = DwarfCfi(dump, arch.dwarf) if arch.dwarf is not None and dump.vmlinux else None

    # -- arch hooks -----------------------------------------------------------
    def clean(self, address: int) -> int:
        """A return address as saved, made a plain code address."""
        return address

    def exception_regs(
        self, return_address: int, next_fp: int
    ) -> tuple[FrameKind, dict[str, int]] | None:
        """(kind, registers) when `return_address` returns into exception entry
        code whose saved registers the record at `next_fp` belongs to."""
        return None

    def exception_regs_at(
        self, return_address: int, next_fp: int, sp: int
    ) -> tuple[FrameKind, dict[str, int]] | None:
        """exception_regs, also told the stack pointer of the frame that
        `return_address` returns to (riscv64 finds struct pt_regs there)."""
        return self.exception_regs(return_address, next_fp)

    def is_user(self, regs: dict[str, int]) -> bool:
        return False

    # -- the walk -------------------------------------------------------------
    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace:
        bt = Backtrace()
        if self.pc_reg not in regs or self.sp_reg not in regs or self.fp_reg not in regs:
            bt.error = f"registers lack {self.pc_reg}/{self.sp_reg}/{self.fp_reg}"
            return bt
        if self.cfi is not None:
            if self.cfi.table is not None:
                return self._unwind_cfi(self.cfi, regs, max_frames, task_stack)
            note = self.cfi.note()
            if note:
                bt.notes.append(note)
        pc, sp, fp = regs[self.pc_reg], regs[self.sp_reg], regs[self.fp_reg]
        guard = StackGuard(sp, self.thread_size, task_stack, self.dump.is_kernel_address)
        self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
        self._leaf_caller(bt, regs, fp)
        prev = sp
        while fp:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            record = self._frame_record(bt, guard, prev, fp)
            if record is None:
                return bt
            next_fp, ret = record
            if ret == 0:
                break  # the final record of a task's stack
            frame_sp = fp + self.record_offset + 2 * self.word
            self._add(bt, Frame(len(bt.frames), ret, frame_sp, method="fp"), exact=False)
            prev, fp = fp, next_fp
            if not next_fp or not self.dump.is_kernel_address(next_fp):
                break  # end of the chain (a user-mode frame pointer after entry code)
            try:
                crossed = self.exception_regs_at(ret, next_fp, frame_sp)
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
            self._add(
                bt,
                Frame(
                    len(bt.frames),
                    saved[self.pc_reg],
                    saved[self.sp_reg],
                    kind=kind,
                    regs=saved,
                    method="pt_regs",
                ),
                exact=True,
            )
            self._leaf_caller(bt, saved, saved[self.fp_reg])
            # the record inside the saved registers repeats {fp, pc}: skip it
            fp = saved[self.fp_reg]
            prev = next_fp
        return bt

    def _frame_record(
        self, bt: Backtrace, guard: StackGuard, sp: int, fp: int
    ) -> tuple[int, int] | None:
        """The {next fp, return address} record at fp, once the stack guard allows
        the step from sp; None (with bt.error set) when it does not or the record
        is unreadable. A return address of 0 ends a task's stack."""
        error = guard.advance(sp, fp, allow_same=(fp == sp))
        if error:
            bt.error = error
            return None
        try:
            next_fp, ret = self.dump.read_ptrs(fp + self.record_offset, 2)
        except KvmcoreError as exc:
            bt.error = f"frame record unreadable: {exc}"
            return None
        return next_fp, self.clean(ret)

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
        if not self.dump.is_kernel_address(lr):
            return
        name = self.syms.function_name(lr - 1)
        if not name or name == self.syms.function_name(pc):
            return
        try:
            recorded = (
                self.clean(self.dump.read_ptrs(fp + self.record_offset, 2)[1]) if fp else None
            )
        except KvmcoreError:
            recorded = None
        if recorded == lr:
            return
        self._add(
            bt, Frame(len(bt.frames), lr, regs[self.sp_reg], guessed=True, method="lr"), exact=False
        )

    # -- the walk with DWARF CFI ---------------------------------------------
    def _unwind_cfi(
        self,
        cfi: DwarfCfi,
        regs: dict[str, int],
        max_frames: int,
        task_stack: tuple[int, int] | None,
    ) -> Backtrace:
        """Each frame's caller from the vmlinux's CFI when an FDE covers its
        pc; else (entry and other asm code) from the frame-pointer record, with
        exception frames crossed as the plain walk does."""
        bt = Backtrace()
        is_kernel = self.dump.is_kernel_address
        known = dict(regs)
        pc, sp = regs[self.pc_reg], regs[self.sp_reg]
        exact = True  # pc is the interrupted instruction, not a return address
        via_record = False  # this frame was found through a frame record (sp estimated)
        guard = StackGuard(sp, self.thread_size, task_stack, is_kernel)
        self._add(bt, Frame(0, pc, sp, method="registers"), exact=True)
        while True:
            if len(bt.frames) >= max_frames:
                bt.error = f"stopped after {max_frames} frames"
                return bt
            fp = known.get(self.fp_reg, 0)
            if not exact and ((fp and is_kernel(fp)) or not self.crossing_needs_fp):
                try:
                    crossed = self.exception_regs_at(pc, fp, sp)
                except KvmcoreError as exc:
                    bt.error = f"exception frame unreadable: {exc}"
                    return bt
                if crossed is not None:
                    kind, saved = crossed
                    if self.is_user(saved):
                        bt.user_regs = saved
                        return bt
                    error = guard.advance(sp, saved[self.sp_reg], allow_same=True)
                    if error:
                        bt.error = error
                        return bt
                    known, pc, sp = dict(saved), saved[self.pc_reg], saved[self.sp_reg]
                    exact, via_record = True, False
                    self._add(
                        bt,
                        Frame(len(bt.frames), pc, sp, kind=kind, regs=saved, method="pt_regs"),
                        exact=True,
                    )
                    continue
            try:
                found = cfi.caller(known, pc, exact)
            except KvmcoreError:
                found = None  # rules that read unmapped memory: let the frame record decide
            if (
                found is not None
                and not found.return_address
                and via_record
                and fp
                and is_kernel(fp)
            ):
                # this frame was reached through a frame record, so sp is only
                # fp + 2 words, exact for a 16-byte frame, not for a callee with
                # locals: a rule based on sp reads the wrong slots. An "outermost
                # frame" answer then defers to the chain of records.
                found = None
            if found is not None:
                if found.return_address is None:
                    return bt  # the CFI marks the outermost frame
                ret = self.clean(found.return_address)
                if ret == 0:
                    return bt
                if not is_kernel(ret):
                    bt.error = f"CFI gives return address {ret:#x}, not kernel code"
                    return bt
                error = guard.advance(sp, found.cfa, allow_same=exact)
                if error:
                    bt.error = error
                    return bt
                known = dict(found.regs)
                known[self.pc_reg] = pc = ret
                sp, exact, via_record = found.cfa, False, False
                self._add(bt, Frame(len(bt.frames), pc, sp, method="cfi"), exact=False)
                continue
            # no FDE: the frame record at fp
            if exact:
                self._leaf_caller(bt, known, fp)
            if not fp or not is_kernel(fp):
                return bt  # end of the chain (a user-mode frame pointer after entry code)
            record = self._frame_record(bt, guard, sp, fp)
            if record is None:
                return bt
            next_fp, ret = record
            if ret == 0:
                return bt  # the final record of a task's stack
            pc, sp, exact, via_record = ret, fp + self.record_offset + 2 * self.word, False, True
            known = {self.pc_reg: pc, self.sp_reg: sp, self.fp_reg: next_fp}
            self._add(bt, Frame(len(bt.frames), pc, sp, method="fp"), exact=False)


def text_ranges(dump: Dump, rule: cfi.CfiRule) -> list[cfi.CfiRange]:
    """`rule` over the kernel's text (_stext/_text to _etext), its init text
    and each loaded module's text, at runtime addresses: the rows of an arch whose one unwind rule
    serves all kernel code (frame records, back chains)."""
    syms = CodeSymbols(dump)
    lo = syms.address("_stext") or syms.address("_text")
    hi = syms.address("_etext")
    if not lo or not hi or hi <= lo:
        raise UnsupportedError(
            "kallsyms has no _stext/_etext: no kernel text range for CFI", dump.path
        )
    ranges = [cfi.CfiRange([lo], [rule], hi)]
    init_lo, init_hi = syms.address("_sinittext"), syms.address("_einittext")
    if init_lo and init_hi and lo <= hi <= init_lo < init_hi:
        # init code (start_kernel, at the bottom of swapper/0's stack)
        ranges.append(cfi.CfiRange([init_lo], [rule], init_hi))
    try:
        modules = dump.kernel.modules()
    except KvmcoreError:
        modules = []  # module list unreadable (no data symbols): core text only
    for mod in modules:
        ranges.append(cfi.CfiRange([mod.base], [rule], mod.base + mod.size))
    return ranges


def frame_record_cfi(
    dump: Dump, fp_column: int, ra_column: int, cfa_offset: int
) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """Unwind rows for `kvmcore symfile` on a kernel that keeps frame records
    {caller's fp, return address} just below the CFA: one rule over the
    kernel's text and each loaded module's, at runtime addresses. CFA = fp +
    `cfa_offset`; the caller's fp is saved at CFA-16, the return address at
    CFA-8. Wrong for the innermost frame while a function is still in its
    prologue or is a leaf."""
    ranges = text_ranges(dump, cfi.CfiRule(b"", "frame-record"))
    align = -dump.word_size
    layout = cfi.CfiLayout(
        address_size=dump.word_size,
        return_column=ra_column,
        data_align=align,
        initial=cfi.def_cfa(fp_column, cfa_offset)
        + cfi.saved_at_cfa(fp_column, -16, align)
        + cfi.saved_at_cfa(ra_column, -8, align),
    )
    return layout, ranges
