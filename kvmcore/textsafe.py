"""Text from a dump, made safe to show on a terminal.

A task's comm, the kernel log, OSRELEASE, module and symbol names are all
bytes the dumped machine chose; an ESC in any of them, printed raw, is a
terminal escape sequence (set the window title, rewrite the screen, OSC 8
links, on some terminals worse). `printable()` shows every control
character instead, as `ps` and journalctl do: C0 (0x00-0x1f), DEL and C1
(0x80-0x9f) as `\\xNN`, keeping only tab (and newline where a text is
multi-line, such as a log record). Unicode bidirectional and line-separator
controls, which reorder or split what the reader sees, become `\\uNNNN`.
"""

from __future__ import annotations

import re
from typing import Any

_BIDI = "\u200e\u200f\u202a-\u202e\u2066-\u2069\u2028\u2029\u061c"
_UNSAFE = re.compile(f"[\\x00-\\x08\\x0a-\\x1f\\x7f-\\x9f{_BIDI}]")
_UNSAFE_KEEP_NL = re.compile(f"[\\x00-\\x08\\x0b-\\x1f\\x7f-\\x9f{_BIDI}]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def printable(s: str, newlines: bool = False) -> str:
    """`s` with control characters shown as escapes; tab kept, newline kept
    only when `newlines` (multi-line text such as a log record)."""
    if not isinstance(s, str):
        s = str(s)
    pattern = _UNSAFE_KEEP_NL if newlines else _UNSAFE
    return pattern.sub(_escape, s) if pattern.search(s) else s


def is_printable(s: str, newlines: bool = False) -> bool:
    """True when printable(s) would change nothing."""
    return (_UNSAFE_KEEP_NL if newlines else _UNSAFE).search(s) is None


def printable_tree(value: Any, newlines: bool = False) -> Any:
    """A copy of a JSON-like value (dicts, lists, strings, numbers) with every
    string, keys included, passed through printable()."""
    search = (_UNSAFE_KEEP_NL if newlines else _UNSAFE).search

    def walk(v: Any) -> Any:
        # exact types first: `ps` of 10,000 tasks is 200,000 values
        t = type(v)
        if t is str:
            return printable(v, newlines) if search(v) else v
        if t is int or t is bool or v is None or t is float:
            return v
        if t is dict:
            return {walk(k): walk(x) for k, x in v.items()}
        if t is list:
            return [walk(x) for x in v]
        if isinstance(v, str):
            return printable(v, newlines)
        if isinstance(v, dict):
            return {walk(k): walk(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return type(v)(walk(x) for x in v)
        return v

    return walk(value)
