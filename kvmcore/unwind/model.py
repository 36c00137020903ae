"""What an unwind produces: frames and the backtrace that holds them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FrameKind = Literal["normal", "exception", "interrupt"]


@dataclass
class InlinedFrame:
    """A function inlined at a frame's pc: where in it the pc is (for the
    innermost), else the line of the inlined call it made."""

    function: str
    file: str | None = None
    line: int | None = None


@dataclass
class Frame:
    """One stack frame. `regs` is set for frames entered through a saved
    register block (pt_regs): the registers of the interrupted code."""

    index: int
    pc: int
    sp: int
    function: str | None = None
    module: str | None = None
    guessed: bool = False
    kind: FrameKind = "normal"
    regs: dict[str, int] | None = None
    #: how the walk found this frame: "registers" (the given register set),
    #: "cfi" (the vmlinux's DWARF CFI), "orc", "fp" (frame-pointer record),
    #: "pt_regs" (a saved register block), "lr" (link register), "scan",
    #: "code" (ORC entries made from the code of a function objtool skipped)
    method: str = ""
    #: source file and line of the pc in this frame's function (for a return
    #: address: of the call), from DWARF; with inlined functions at the pc, the
    #: line of the outermost inlined call
    file: str | None = None
    line: int | None = None
    #: the functions inlined at the pc, innermost first (drgn's and gdb's
    #: inline frames, which come before this frame)
    inlined: list[InlinedFrame] = field(default_factory=list)

    def __str__(self) -> str:
        where = self.function or "?"
        if self.module:
            where += f" [{self.module}]"
        mark = "?" if self.guessed else " "
        extra = f" <{self.kind}>" if self.kind != "normal" else ""
        src = f" at {self.file}:{self.line}" if self.file else ""
        return f"#{self.index:<2} {mark}{self.pc:#018x} sp={self.sp:#018x} {where}{extra}{src}"


@dataclass
class Backtrace:
    """Frames innermost first; `error` says why the walk stopped early, if it did."""

    frames: list[Frame] = field(default_factory=list)
    error: str | None = None
    #: the user-mode registers the walk ended at (syscall or user interrupt), if any
    user_regs: dict[str, int] | None = None
    #: remarks on how the walk was done (e.g. "ORC unavailable; stack scan")
    notes: list[str] = field(default_factory=list)

    def functions(self) -> list[str | None]:
        """Bare function names (without +off/size), innermost first."""
        return [f.function.split("+", 1)[0] if f.function else None for f in self.frames]

    def __str__(self) -> str:
        lines = [str(f) for f in self.frames]
        if self.error:
            lines.append(f"(stopped: {self.error})")
        return "\n".join(lines)
