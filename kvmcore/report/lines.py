"""Plain-text pieces shared by the report's renderers and the command table's
text views (no rich here: the per-command views must not import it)."""

from __future__ import annotations

from typing import Any


def frame_lines(bt: dict[str, Any]) -> list[str]:
    """A backtrace of the report (or of `bt --json`) as crash-style lines."""
    if not bt.get("available", True):
        return [f"  (backtrace unavailable: {bt['reason']})"]
    out = [f"  (warning: {bt['warning']})"] if bt.get("warning") else []
    for f in bt["frames"]:
        func = f["function"] or "?"
        mod = f" [{f['module']}]" if f["module"] else ""
        guess = " (guess)" if f["guessed"] else ""
        kind = f"  <{f['kind']}>" if f["kind"] not in (None, "normal") else ""
        # functions inlined at the pc come first, innermost first, unnumbered
        # (drgn and gdb show them as frames of their own)
        for inl in f.get("inlined") or ():
            out.append(f"     {'(inlined)':>20} {inl['function']}{mod}{_source(inl)}")
        out.append(
            f" #{f['index']:<2d} [{f['sp'] or '?':>18}] {func}{mod} at {f['pc']}"
            f"{_source(f)}{guess}{kind}"
        )
    if bt.get("stopped"):
        out.append(f"  (stopped: {bt['stopped']})")
    return out


def _source(f: dict[str, Any]) -> str:
    """` at file:line` when the frame (or inlined function) has one."""
    if not f.get("file"):
        return ""
    return f" at {f['file']}:{f['line']}" if f.get("line") else f" at {f['file']}"
