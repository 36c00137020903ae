"""KernelAddressSpace: reads kernel virtual memory through an arch translator."""
from __future__ import annotations

from typing import Iterator

from .errors import NotInDumpError, PageExcludedError
from .formats.base import PhysicalMemory
from .translate import MappedRange, Translation, Translator


class KernelAddressSpace:
    """Kernel virtual memory of one dump: translate, read, walk."""

    def __init__(self, mem: PhysicalMemory, translator: Translator, word_size: int) -> None:
        self.mem = mem
        self.translator = translator
        self.word_size = word_size
        self.mask = (1 << (word_size * 8)) - 1

    def translate(self, va: int) -> Translation:
        va &= self.mask
        t = self.translator.translate(va)
        return Translation(va, t.pa, t.page_size, self.mem.file_offset(t.pa))

    def read(self, va: int, length: int, zero_excluded: bool = False) -> bytes:
        """Read `length` bytes at kernel virtual address `va`. With
        `zero_excluded`, pages a filtered dump left out read as zeros: right for
        kernel objects on pages makedumpfile dropped as zero-filled (dump level
        bit 1), as crash's --zero_excluded does."""
        va &= self.mask
        if length <= 0:
            return b""
        parts: list[bytes] = []
        while length > 0:
            t = self.translator.translate(va)
            chunk = min(length, t.page_size - (t.pa & (t.page_size - 1)))
            try:
                parts.append(self.mem.read_phys(t.pa, chunk))
            except PageExcludedError as exc:
                if zero_excluded:
                    parts.append(self._zero_filled(t.pa, chunk))
                    va = (va + chunk) & self.mask
                    length -= chunk
                    continue
                raise PageExcludedError(
                    f"virtual address {va:#x} (physical {t.pa:#x}) was excluded from the dump "
                    "by filtering", va, exc.path) from None
            except NotInDumpError as exc:
                raise NotInDumpError(
                    f"virtual address {va:#x} maps to physical {t.pa:#x}, which is not in the dump",
                    va, exc.path) from None
            va = (va + chunk) & self.mask
            length -= chunk
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def _zero_filled(self, pa: int, length: int) -> bytes:
        out = bytearray()
        while length > 0:
            n = min(length, 4096 - (pa & 0xFFF))
            try:
                out += self.mem.read_phys(pa, n)
            except PageExcludedError:
                out += bytes(n)
            pa += n
            length -= n
        return bytes(out)

    def walk_pages(self) -> Iterator[MappedRange]:
        return self.translator.walk()
