"""Kernel backtraces from a register set.

`unwind(dump, regs)` walks the kernel stack the registers describe (a CPU's
NT_PRSTATUS, or a sleeping task's switch frame) and returns a Backtrace.
Which unwinder runs is the arch backend's choice (`ArchBackend.unwinder(dump)`),
else the arch-keyed table below; an unwinder is built once per dump.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from ..errors import UnsupportedError
from .model import Backtrace, Frame

if TYPE_CHECKING:
    from ..dump import Dump

__all__ = ["Backtrace", "Frame", "unwind", "unwinder_for"]


def _x86_64(dump: "Dump") -> Any:
    from .x86_64 import X86_64Unwinder

    return X86_64Unwinder(dump)


def _aarch64(dump: "Dump") -> Any:
    from .aarch64 import Aarch64Unwinder

    return Aarch64Unwinder(dump)


def _i386(dump: "Dump") -> Any:
    from .i386 import I386Unwinder

    return I386Unwinder(dump)


#: arch name -> unwinder factory, for arches whose backend has no `unwinder` hook
UNWINDERS: dict[str, Callable[["Dump"], Any]] = {
    "x86_64": _x86_64,
    "aarch64": _aarch64,
    "i386": _i386,
    "i686": _i386,
}

_CACHE_ATTR = "_kvmcore_unwinder"


def unwinder_for(dump: "Dump") -> Any:
    """The dump's unwinder (built on first use, then kept on the dump)."""
    cached = getattr(dump, _CACHE_ATTR, None)
    if cached is not None:
        return cached
    hook = getattr(dump.arch, "unwinder", None)
    if hook is not None:
        unwinder = hook(dump)
    else:
        factory = UNWINDERS.get(dump.arch.name)
        if factory is None:
            raise UnsupportedError(f"{dump.arch.name}: no kernel stack unwinder", dump.path)
        unwinder = factory(dump)
    setattr(dump, _CACHE_ATTR, unwinder)
    return unwinder


def unwind(dump: "Dump", regs: dict[str, int], max_frames: int = 64,
           task_stack: tuple[int, int] | None = None) -> Backtrace:
    """Backtrace of the kernel stack `regs` describe, innermost frame first.

    `task_stack` (start, end), when known, bounds the walk on the task's stack.
    Missing memory or bad unwind data stop the walk with Backtrace.error set.
    """
    return unwinder_for(dump).unwind(regs, max_frames, task_stack)
