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
    if isinstance(value, str):
        return printable(value, newlines)
    if isinstance(value, dict):
        return {printable_tree(k, newlines): printable_tree(v, newlines) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(printable_tree(v, newlines) for v in value)
    return value
