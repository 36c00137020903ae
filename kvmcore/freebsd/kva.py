"""Symbol lookup across the symbol sources the FreeBSD model accepts (a
{name: address} mapping or a kvmcore SymbolTable)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..errors import SymbolError


def symbol_value(source: Any, name: str) -> int | None:
    """Address of `name` in a dict[str, int], a kvmcore SymbolTable, or None."""
    if source is None:
        return None
    try:
        if isinstance(source, Mapping) or hasattr(source, "get"):
            value = source.get(name)
        else:
            value = source.lookup(name)
    except (KeyError, SymbolError):
        return None
    return None if value is None else int(value)
