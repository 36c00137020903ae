"""System.map: `address type name` lines, link-time addresses."""

from __future__ import annotations

import os

from ..errors import SymbolError
from .table import Symbol

MAX_LINES = 5_000_000


def read_system_map(path: str) -> list[Symbol]:
    """Parse a System.map; lines that do not fit are skipped."""
    try:
        with open(path, "rb") as f:
            text = f.read()
    except OSError as exc:
        raise SymbolError(f"cannot read System.map: {exc}", path) from None
    out: list[Symbol] = []
    for n, line in enumerate(text.splitlines()):
        if n >= MAX_LINES:
            raise SymbolError(f"more than {MAX_LINES} lines: not a System.map", path)
        parts = line.split()
        if len(parts) < 3 or len(parts[1]) != 1:
            continue
        try:
            addr = int(parts[0], 16)
        except ValueError:
            continue
        out.append(Symbol(parts[2].decode("latin-1"), addr, 0, parts[1].decode("latin-1")))
    if not out:
        raise SymbolError("no symbols found: not a System.map", path)
    return out


def find_system_map(vmlinux: str, release: str | None) -> str | None:
    """A System.map next to the vmlinux: System.map-<release> or System.map."""
    folder = os.path.dirname(os.path.abspath(vmlinux))
    base = os.path.basename(vmlinux)
    candidates = []
    if release:
        candidates.append(f"System.map-{release}")
    if base.startswith("vmlinux-"):
        candidates.append("System.map-" + base[len("vmlinux-") :])
    candidates.append("System.map")
    for name in candidates:
        path = os.path.join(folder, name)
        if os.path.isfile(path):
            return path
    return None
