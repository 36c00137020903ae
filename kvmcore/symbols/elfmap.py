"""pyelftools' ELFFile reading DWARF sections in place from a memory map.

ELFFile.get_dwarf_info copies each whole debug section into a BytesIO before
one DIE is decoded: for a debug vmlinux that is ~200 MB (.debug_info) copied
twice, 0.7 s and most of the peak memory of a command that needs one CU
(srclines' file:line, the DWARF types of a kernel without BTF)."""

from __future__ import annotations

import mmap
import os
from typing import Any

# reads this large go through pread, not the map: the pages of a map count in
# the process's RSS as long as it is mapped, a page-cache copy's do not
PREAD_BYTES = 1 << 16


class _MappedStream:
    """A read-only file-like window [start, start + size) of a memory map of
    the file open as `fd`: what pyelftools reads a DWARF section through
    (seek, tell, read)."""

    def __init__(self, mapped: mmap.mmap, fd: int, start: int, size: int) -> None:
        self._map, self._fd, self._start, self._size, self._pos = mapped, fd, start, size, 0

    def seek(self, pos: int, whence: int = 0) -> int:
        base = (0, self._pos, self._size)[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def tell(self) -> int:
        return self._pos

    def pread(self, offset: int, size: int) -> bytes:
        """`size` bytes at `offset` of the section (fewer at its end), copied
        by pread: for a scan that touches much of the section once."""
        size = max(0, min(size, self._size - offset))
        return os.pread(self._fd, size, self._start + offset) if size else b""

    def cstring(self, offset: int) -> bytes:
        """The NUL-terminated string at `offset` (a .debug_str entry), by
        pread: a name from each of thousands of places in the section
        would map (and keep in RSS) most of its pages."""
        out = b""
        while offset < self._size:
            chunk = self.pread(offset, 256)
            end = chunk.find(b"\0")
            if end >= 0:
                return out + chunk[:end]
            out += chunk
            offset += len(chunk)
        return out

    def read(self, n: int | None = -1) -> bytes:
        end = self._size if n is None or n < 0 else min(self._size, self._pos + n)
        if end <= self._pos:
            return b""
        if end - self._pos >= PREAD_BYTES:
            data = os.pread(self._fd, end - self._pos, self._start + self._pos)
        else:
            data = self._map[self._start + self._pos : self._start + end]
        self._pos = end
        return data


def mapped_elf_file(file: Any) -> Any:
    """pyelftools' ELFFile whose DWARF sections are read in place from a
    memory map of the file. ELFFile copies each whole section into a BytesIO
    first: for a debug vmlinux that is ~200 MB (.debug_info) copied twice
    before one CU is decoded, 0.7 s and most of a `bt`'s peak memory.
    Sections that need relocating or are compressed are still read its way."""
    from elftools.dwarf.dwarfinfo import DebugSectionDescriptor
    from elftools.elf.elffile import ELFFile

    class MappedELFFile(ELFFile):
        def _read_dwarf_section(self, section: Any, relocate_dwarf_sections: bool) -> Any:
            if (
                relocate_dwarf_sections
                or self.has_phantom_bytes()
                or section.compressed
                or section["sh_type"] == "SHT_NOBITS"
            ):
                return super()._read_dwarf_section(section, relocate_dwarf_sections)
            start, size = section["sh_offset"], section.data_size
            return DebugSectionDescriptor(
                stream=_MappedStream(mapped, file.fileno(), start, size),  # type: ignore[arg-type]
                name=section.name,
                global_offset=start,
                size=size,
                address=section["sh_addr"],
            )

    mapped = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
    return MappedELFFile(file)
