"""aarch64 backtraces: the x29 frame-record chain (Linux builds arm64 with
frame pointers), return addresses stripped of pointer-authentication codes,
and el1 exception frames crossed through their struct pt_regs.

Exception entry (arch/arm64/kernel/entry.S, kernel_entry) stores the
interrupted {x29, elr} as a frame record inside pt_regs (`stackframe`) and
points x29 at it, so a return address into entry code (el1h_64_sync, ...,
el0t_64_irq) means the next record sits at pt_regs + offsetof(stackframe).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import KvmcoreError
from .framepointer import FramePointerUnwinder

if TYPE_CHECKING:
    from ..dump import Dump

# struct user_pt_regs at the start of struct pt_regs
PT_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")
# offsetof(struct pt_regs, stackframe) in 5.x-6.x (checked: 304 in Debian's 6.1 DWARF)
DEFAULT_STACKFRAME_OFFSET = 304
ENTRY_PREFIXES = ("el1h_64_", "el1t_64_", "el0t_64_", "el0t_32_", "vectors")
PSTATE_MODE_MASK = 0xF  # M[3:0]: 0 = EL0t


class Aarch64Unwinder(FramePointerUnwinder):
    pc_reg, sp_reg, fp_reg, lr_reg = "pc", "sp", "x29", "x30"

    def __init__(self, dump: "Dump") -> None:
        super().__init__(dump)
        self._stackframe_offset: int | None = None
        self.entry_text = (self.syms.address("__entry_text_start"),
                           self.syms.address("__entry_text_end"))

    def clean(self, address: int) -> int:
        strip = getattr(self.dump.arch, "strip_pac", None)
        return strip(address) if strip else address

    @property
    def stackframe_offset(self) -> int:
        if self._stackframe_offset is None:
            offset = DEFAULT_STACKFRAME_OFFSET
            try:
                offset = self.dump.types.offsetof("struct pt_regs", "stackframe")
            except (KvmcoreError, AttributeError, ImportError):
                pass
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

    def exception_regs(self, return_address: int, next_fp: int):
        name = self._entry_name(return_address)
        if name is None:
            return None
        base = next_fp - self.stackframe_offset
        regs = dict(zip(PT_REGS, self.dump.read_ptrs(base, len(PT_REGS))))
        regs["pc"] = self.clean(regs["pc"])
        kind = "interrupt" if ("_irq" in name or "_fiq" in name) else "exception"
        return kind, regs

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("pstate", 0) & PSTATE_MODE_MASK) == 0
