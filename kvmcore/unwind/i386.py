"""i386 backtraces: the ebp chain of {saved ebp, return address} records
(32-bit kernels are built with frame pointers). Register names as in an
i386 user_regs_struct: eip, esp, ebp."""
from __future__ import annotations

from .framepointer import FramePointerUnwinder


class I386Unwinder(FramePointerUnwinder):
    pc_reg, sp_reg, fp_reg = "eip", "esp", "ebp"
    thread_size = 8192  # THREAD_SIZE_ORDER 1

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("xcs", regs.get("cs", 0)) & 3) == 3
