"""Kernel backtraces from a register set.

`unwind(dump, regs)` walks the kernel stack the registers describe (a CPU's
NT_PRSTATUS, or a sleeping task's switch frame) and returns a Backtrace.
Which unwinder runs is the arch backend's choice (`ArchBackend.unwinder(dump)`,
in arches/); this package holds the shared machinery (ORC tables, frame-pointer
walks, DWARF CFI from a vmlinux's .debug_frame, stack bounds, symbolization).
With a vmlinux, each arch's unwinder asks the CFI first and falls back to its
own method (ORC, frame pointers) where the CFI has no rule; Frame.method says
which one found each frame. An unwinder is built once per dump.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .model import Backtrace, Frame

if TYPE_CHECKING:
    from ..dump import Dump

__all__ = ["Backtrace", "Frame", "unwind", "unwinder_for"]


_CACHE_ATTR = "_kvmcore_unwinder"


def unwinder_for(dump: "Dump") -> Any:
    """The dump's unwinder (built on first use, then kept on the dump)."""
    cached = getattr(dump, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    unwinder = dump.arch.unwinder(dump)
    setattr(dump, _CACHE_ATTR, unwinder)
    return unwinder


def unwind(dump: "Dump", regs: dict[str, int], max_frames: int = 64,
           task_stack: tuple[int, int] | None = None) -> Backtrace:
    """Backtrace of the kernel stack `regs` describe, innermost frame first.

    `task_stack` (start, end), when known, bounds the walk on the task's stack.
    Missing memory or bad unwind data stop the walk with Backtrace.error set.
    """
    return unwinder_for(dump).unwind(regs, max_frames, task_stack)
