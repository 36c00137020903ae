"""Stack bounds shared by the unwinders.

A walk may only move up a stack (towards older frames) and may leave a stack
for another one (IRQ stack -> task stack, exception stack -> IRQ stack) but
never come back to one it left; the number of stacks is bounded too. A stack
is the caller-given range (the task's `stack` .. +THREAD_SIZE) or, for the
others, the THREAD_SIZE-aligned block the stack pointer lies in: task and IRQ
stacks are THREAD_SIZE-sized and aligned (vmap'd stacks), which is all the
walk needs to tell "same stack" from "another stack".
"""

from __future__ import annotations

from collections.abc import Callable

MAX_STACK_SWITCHES = 6


class StackGuard:
    """Checks each new stack pointer of a walk; `advance` returns an error or None."""

    def __init__(
        self,
        sp: int,
        stack_size: int,
        task_stack: tuple[int, int] | None = None,
        is_kernel: Callable[[int], bool] | None = None,
    ) -> None:
        self.stack_size = stack_size
        self.task_stack = task_stack
        self.is_kernel: Callable[[int], bool] = is_kernel or (lambda a: True)
        self.current = self.region(sp)
        self.left: list[tuple[int, int]] = []

    def region(self, sp: int) -> tuple[int, int]:
        ts = self.task_stack
        if ts and ts[0] <= sp < ts[1]:
            return ts
        lo = sp & ~(self.stack_size - 1)
        return lo, lo + self.stack_size

    def contains(self, addr: int, length: int = 1) -> bool:
        lo, hi = self.current
        return lo <= addr and addr + length <= hi

    def advance(self, old_sp: int, new_sp: int, allow_same: bool = False) -> str | None:
        """Accept `new_sp` as the next frame's stack pointer, or say why not."""
        if not self.is_kernel(new_sp):
            return f"stack pointer {new_sp:#x} is not a kernel address"
        lo, hi = self.current
        if lo <= new_sp <= hi:  # hi itself: an empty stack after the last frame
            if new_sp < old_sp or (new_sp == old_sp and not allow_same):
                return (
                    f"stack pointer went from {old_sp:#x} to {new_sp:#x}: "
                    "wrong direction (corrupt stack or bad unwind data)"
                )
            return None
        nxt = self.region(new_sp)
        if nxt in self.left:
            return f"stack pointer {new_sp:#x} returns to a stack the walk already left"
        if len(self.left) >= MAX_STACK_SWITCHES:
            return f"more than {MAX_STACK_SWITCHES} stack switches"
        self.left.append(self.current)
        self.current = nxt
        return None
