"""A raw physical memory image: file offset N is physical address N.

Only used when the user names the architecture (`--arch`), since any file
"looks raw". The image has no notes, so its VMCOREINFO is found the way the
kernel left it: the text buffer (OSRELEASE=..., SYMBOL(...)=...) in memory.
"""

from __future__ import annotations

import re

from ..fileio import ByteSource
from . import register_format
from .base import PhysicalMemory, PhysRange

SCAN_CHUNK = 8 << 20
VMCOREINFO_RE = re.compile(rb"OSRELEASE=[\x21-\x7e]{1,64}\n(?:[\x20-\x7e]{1,200}\n){8,}")


@register_format(priority=99)
class RawImage(PhysicalMemory):
    format_name = "raw"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return True  # anything can be a raw image: open_source asks only with --arch

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source)
        raw = self._find_vmcoreinfo()
        if raw is not None:
            self.metadata["vmcoreinfo_raw"] = raw
            self.metadata["vmcoreinfo_found_at"] = self._found_at
            self.facts.os = "linux"
            info = self.vmcoreinfo
            if info and info.page_size:
                self.facts.page_size = info.page_size

    def _find_vmcoreinfo(self) -> bytes | None:
        """The first VMCOREINFO text in the image (bounded: one pass, chunked)."""
        self._found_at = None
        size = self.source.size
        off = 0
        overlap = 16 << 10
        while off < size:
            data = self.source.pread(off, min(SCAN_CHUNK + overlap, size - off))
            m = VMCOREINFO_RE.search(data)
            if m and b"SYMBOL(" in m.group(0):
                self._found_at = off + m.start()
                return m.group(0)
            off += SCAN_CHUNK
        return None

    def ranges(self) -> list[PhysRange]:
        return [PhysRange(0, self.source.size)]

    def read_phys(self, pa: int, length: int) -> bytes:
        from ..errors import NotInDumpError

        if pa < 0 or pa + length > self.source.size:
            raise NotInDumpError(
                f"physical address {pa:#x} is beyond the end of the raw image", pa, self.path
            )
        return self.source.pread(pa, length)

    def file_offset(self, pa: int) -> int | None:
        return pa

    def describe(self) -> str:
        return "raw physical memory image"
