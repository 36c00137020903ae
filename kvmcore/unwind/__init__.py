"""Kernel backtraces from a register set.

`unwind(dump, regs)` walks the kernel stack the registers describe (a CPU's
NT_PRSTATUS, or a sleeping task's switch frame) and returns a Backtrace;
`backtrace(dump, task)` does it for a task of the kernel model.

Unwinders register here per (architecture, OS) from the modules named
`arch_<name>.py` in this package, beside the shared machinery they use (ORC
tables, frame-pointer walks, DWARF CFI from a vmlinux's .debug_frame, stack
bounds, symbolization). With a vmlinux, each unwinder asks the CFI first and
falls back to its own method (ORC, frame pointers) where the CFI has no rule;
Frame.method says which one found each frame. An unwinder is built once per
dump. The same modules register the unwind rows `kvmcore symfile` writes for
gdb (`symfile_cfi`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import UnsupportedError
from .model import Backtrace, Frame, InlinedFrame

if TYPE_CHECKING:
    from ..dump import Dump

__all__ = [
    "Backtrace",
    "Frame",
    "InlinedFrame",
    "Unwinder",
    "backtrace",
    "make_unwinder",
    "register_symfile_cfi",
    "register_unwinder",
    "symfile_cfi",
    "use_module_dir",
    "unwind",
    "unwinder_for",
]


class Unwinder(Protocol):
    """What an architecture's unwinder does."""

    def unwind(
        self, regs: dict[str, int], max_frames: int = 64, task_stack: tuple[int, int] | None = None
    ) -> Backtrace: ...


UnwinderFactory = Callable[["Dump"], Unwinder]
SymfileCfi = Callable[["Dump"], Any]

_UNWINDERS: dict[tuple[str, str | None], UnwinderFactory] = {}
_SYMFILE_CFI: dict[str, SymfileCfi] = {}


def register_unwinder(arch: str, os: str | None, factory: UnwinderFactory) -> None:
    """`factory(dump)` unwinds `arch` kernels of `os` ("linux", "freebsd";
    None: any OS without one of its own)."""
    _UNWINDERS[(arch, os)] = factory


def register_symfile_cfi(arch: str, rows: SymfileCfi) -> None:
    """`rows(dump)` gives (CfiLayout, [CfiRange]) for `kvmcore symfile`, or None."""
    _SYMFILE_CFI[arch] = rows


@cache
def _load_all() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("arch_"):
            importlib.import_module(f"{__name__}.{info.name}")


def _factory(arch: str, os: str | None) -> UnwinderFactory | None:
    return _UNWINDERS.get((arch, os)) or _UNWINDERS.get((arch, None))


def make_unwinder(dump: Dump) -> Unwinder:
    """A new unwinder for the dump's architecture and OS: from the module
    named after the architecture (arch_<name>) when it registers one, else
    from whichever module does (each costs ~3 ms to import)."""
    arch = dump.arch.name
    factory = _factory(arch, dump.os)
    if factory is None and importlib.util.find_spec(f"{__name__}.arch_{arch}") is not None:
        importlib.import_module(f"{__name__}.arch_{arch}")
        factory = _factory(arch, dump.os)
    if factory is None:
        _load_all()
        factory = _factory(arch, dump.os)
    if factory is None:
        raise UnsupportedError(
            f"{arch}: no kernel stack unwinder for {dump.os or 'this OS'}", dump.path
        )
    return factory(dump)


def unwinder_for(dump: Dump) -> Unwinder:
    """The dump's unwinder (built on first use, then kept by the dump)."""
    cached = dump.layer_cache.get("unwinder")
    if cached is None:
        cached = dump.layer_cache["unwinder"] = make_unwinder(dump)
    return cached


def unwind(
    dump: Dump,
    regs: dict[str, int],
    max_frames: int = 64,
    task_stack: tuple[int, int] | None = None,
    lines: bool = True,
) -> Backtrace:
    """Backtrace of the kernel stack `regs` describe, innermost frame first.

    `task_stack` (start, end), when known, bounds the walk on the task's stack.
    Missing memory or bad unwind data stop the walk with Backtrace.error set.
    With `lines` and DWARF at hand (a vmlinux, module debug files), frames get
    their file:line and the functions inlined at their pcs (srclines).
    """
    bt = unwinder_for(dump).unwind(regs, max_frames, task_stack)
    if lines:
        from .srclines import annotate

        annotate(dump, bt)
    return bt


def use_module_dir(dump: Dump, directory: str | None) -> None:
    """Take module debug files (.ko with DWARF) from `directory` for the
    file:line of module frames (kvmcore.unwind.modlines)."""
    from .modlines import use_module_dir as use

    use(dump, directory)


def backtrace(dump: Dump, task: Any, max_frames: int = 64, lines: bool = True) -> Backtrace:
    """The backtrace of a task of the kernel model (Linux task, FreeBSD
    thread), from its registers: its CPU's when it was running, else those
    its last context switch saved."""
    return unwind(dump, task.registers(), max_frames=max_frames, lines=lines)


def symfile_cfi(dump: Dump) -> Any:
    """(CfiLayout, [CfiRange]) of unwind rows for gdb, or None when the arch
    registers none."""
    _load_all()
    rows = _SYMFILE_CFI.get(dump.arch.name)
    return rows(dump) if rows is not None else None


def recovered_registers(dump: Dump, frames: list[Frame]) -> dict[str, int]:
    """Callee-saved registers known for the first of `frames` (a backtrace's
    tail) beyond its pc and sp, for a debugger handed that frame; the
    unwinder's answer when it has one (x86_64's ORC places rbp), else none."""
    unwinder = unwinder_for(dump)
    recover = getattr(unwinder, "recovered_registers", None)  # optional for unwinders
    return dict(recover(frames)) if recover is not None else {}
