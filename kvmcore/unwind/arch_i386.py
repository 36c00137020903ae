"""i386 kernel backtraces: the ebp chain (32-bit kernels keep frame pointers)."""

from __future__ import annotations

from . import register_unwinder
from .framepointer import FramePointerUnwinder

# -- kernel backtraces --------------------------------------------------
# i386 backtraces: the ebp chain of {saved ebp, return address} records
# (32-bit kernels are built with frame pointers). Register names as in an
# i386 user_regs_struct: eip, esp, ebp.


class I386Unwinder(FramePointerUnwinder):
    thread_size = 8192  # THREAD_SIZE_ORDER 1

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("xcs", regs.get("cs", 0)) & 3) == 3


register_unwinder("i386", "linux", I386Unwinder)
