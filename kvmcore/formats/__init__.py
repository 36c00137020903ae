"""Dump formats. Each module here registers its PhysicalMemory subclass.

Adding a format is one new module in this package that decorates its class
with `@register_format`; it is found by import, with no edit elsewhere.
"""

from __future__ import annotations

from ..errors import DumpFormatError
from ..fileio import ByteSource, DumpFile
from ..plugins import import_all
from .base import PhysicalMemory, PhysRange

_FORMATS: list[tuple[int, type[PhysicalMemory]]] = []


def register_format(priority: int = 50):
    """Class decorator: lower priority values are probed first."""

    def deco(cls: type[PhysicalMemory]) -> type[PhysicalMemory]:
        _FORMATS.append((priority, cls))
        _FORMATS.sort(key=lambda item: item[0])
        return cls

    return deco


def _load_all() -> None:
    import_all(__name__, frozenset({"base", "vmcoreinfo_scan"}))


def formats() -> list[type[PhysicalMemory]]:
    _load_all()
    return [cls for _, cls in _FORMATS]


def open_source(source: ByteSource, raw_ok: bool = False) -> PhysicalMemory:
    """Pick the format whose probe claims `source` and open it."""
    for cls in formats():
        if cls.format_name == "raw" and not raw_ok:
            continue
        if cls.probe(source):
            return cls(source)
    raise DumpFormatError(
        "not a recognised crash dump (expected ELF vmcore, kdump-compressed, flattened, "
        "FreeBSD minidump or full dump; use --arch to read a raw memory image)",
        source.path,
    )


def open_physical(path: str | list[str] | tuple[str, ...], raw: bool = False) -> PhysicalMemory:
    """Open `path` read-only and return its physical memory.

    A list of paths is the parts of a `makedumpfile --split` dump."""
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            from .kdump import open_split

            return open_split(path)
        path = path[0]
    source = DumpFile(path)
    if source.size < 8 and not raw:
        raise DumpFormatError(f"is too small to be a dump ({source.size} bytes)", path)
    return open_source(source, raw_ok=raw)


__all__ = [
    "PhysicalMemory",
    "PhysRange",
    "register_format",
    "formats",
    "open_physical",
    "open_source",
]
