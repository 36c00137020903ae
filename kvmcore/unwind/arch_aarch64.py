"""aarch64 kernel backtraces: the frame-record chain with PAC stripping and
el1 exception frames crossed (Linux and FreeBSD), and the frame-record CFI
rows `kvmcore symfile` gives gdb."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..arches.aarch64.cpu import PSTATE_MODE_MASK, PT_REGS
from ..errors import KvmcoreError
from ..symbols import cfi
from . import register_symfile_cfi, register_unwinder
from .framepointer import FramePointerUnwinder, frame_record_cfi
from .model import FrameKind

if TYPE_CHECKING:
    from ..dump import Dump


def pac_mask(dump: Dump) -> int:
    """The bits a pointer-authentication code may occupy in a kernel address:
    VMCOREINFO's KERNELPACMASK (Linux), the top 16 bits on FreeBSD."""
    if dump.os == "freebsd":
        return FREEBSD_KERNEL_VA_TOP
    info = dump.vmcoreinfo
    return ((info.number("KERNELPACMASK") if info else None) or 0) & 0xFFFFFFFFFFFFFFFF


# -- kernel backtraces --------------------------------------------------
# aarch64 backtraces: the x29 frame-record chain (Linux builds arm64 with
# frame pointers), return addresses stripped of pointer-authentication codes,
# and el1 exception frames crossed through their struct pt_regs.
#
# Exception entry (arch/arm64/kernel/entry.S, kernel_entry) stores the
# interrupted {x29, elr} as a frame record inside pt_regs (`stackframe`) and
# points x29 at it, so a return address into entry code (el1h_64_sync, ...,
# el0t_64_irq) means the next record sits at pt_regs + offsetof(stackframe).


# offsetof(struct pt_regs, stackframe) in 5.x-6.x (checked: 304 in Debian's 6.1 DWARF)
DEFAULT_STACKFRAME_OFFSET = 304
ENTRY_PREFIXES = ("el1h_64_", "el1t_64_", "el0t_64_", "el0t_32_", "vectors")
# FreeBSD arm64 kernels use 48-bit VAs from VM_MIN_KERNEL_ADDRESS
# 0xffff000000000000: the top 16 bits of a kernel address are all ones,
# whatever a pointer-authentication code put there
FREEBSD_KERNEL_VA_TOP = 0xFFFF000000000000


class Aarch64Unwinder(FramePointerUnwinder):
    lr_reg = "x30"

    def __init__(self, dump: Dump) -> None:
        super().__init__(dump)
        self._stackframe_offset: int | None = None
        self.entry_text = (
            self.syms.address("__entry_text_start"),
            self.syms.address("__entry_text_end"),
        )
        self.pac_mask = pac_mask(dump)

    def clean(self, address: int) -> int:
        """Remove a pointer-authentication code from a kernel return address."""
        return address | self.pac_mask if self.pac_mask else address

    @property
    def stackframe_offset(self) -> int:
        if self._stackframe_offset is None:
            offset = DEFAULT_STACKFRAME_OFFSET
            with contextlib.suppress(KvmcoreError):
                offset = self.dump.types.offsetof("struct pt_regs", "stackframe")
            self._stackframe_offset = offset
        return self._stackframe_offset

    def _entry_name(self, address: int) -> str | None:
        lo, hi = self.entry_text
        name = self.syms.function_name(address - 1) or ""
        if lo and hi:
            return name if lo <= address < hi else None
        # no section bounds: the asm entry points by name (not their C *_handler)
        if name.startswith(ENTRY_PREFIXES) and not name.endswith("_handler"):
            return name
        return None

    def exception_regs(
        self, return_address: int, next_fp: int
    ) -> tuple[FrameKind, dict[str, int]] | None:
        name = self._entry_name(return_address)
        if name is None:
            return None
        base = next_fp - self.stackframe_offset
        regs = dict(zip(PT_REGS, self.dump.read_ptrs(base, len(PT_REGS))))
        regs["pc"] = self.clean(regs["pc"])
        kind: FrameKind = "interrupt" if ("_irq" in name or "_fiq" in name) else "exception"
        return kind, regs

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("pstate", 0) & PSTATE_MODE_MASK) == 0


# -- DWARF CFI for `kvmcore symfile` -------------------------------------------
# gdb-multiarch does not unwind an arm64 kernel from symbols alone (its
# prologue analyser, with no function sizes and no debug info, repeats one
# frame). Linux arm64 keeps frame pointers, so one rule serves all kernel
# text: x29 points at the frame record {caller's x29, return address}, so
# CFA = x29 + 16, x29 saved at CFA-16 and x30 (the return column) at CFA-8.
# Exception entry stores the interrupted {x29, elr} as such a record inside
# pt_regs, so the chain crosses el1 exceptions; entry from el0 leaves a zero
# record, and gdb stops at the zero pc (with "previous frame identical", as
# its "aarch64 stub" unwinder claims an unreadable pc before any CFI is
# consulted, so no row can end the walk quietly). The rule is wrong for the innermost
# frame while a function is still in its prologue or is a leaf.
DWARF_FP, DWARF_LR = 29, 30


def aarch64_fp_cfi(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """The frame-record rule (see above) for `kvmcore symfile`."""
    return frame_record_cfi(dump, DWARF_FP, DWARF_LR, 16)


register_unwinder("aarch64", None, Aarch64Unwinder)
register_symfile_cfi("aarch64", lambda dump: aarch64_fp_cfi(dump) if dump.os == "linux" else None)
