"""VMCOREINFO found in the dumped memory, for dumps that carry no note of it.

A QEMU dump made without `-device vmcoreinfo` (and Xen's dump-core, and QEMU's
dumps of targets that have no vmcoreinfo device) has no VMCOREINFO note, but
the kernel keeps its own: `vmcoreinfo_note`, an ELF note (kernel/crash_core.c
append_elf_note: n_namesz 11, n_descsz the text's length, n_type 0, the name
"VMCOREINFO\\0" padded to 12 bytes) whose text starts with "OSRELEASE=". The
scan looks for the name and checks the header before it in both byte orders;
the raw text buffer (`vmcoreinfo_data`) has no header, so it does not match.
Copies that disagree make the dump ambiguous: an error, never a guess.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import AddressError, DumpFormatError
from ..notes import VmcoreInfo

if TYPE_CHECKING:
    from .base import PhysicalMemory

NAME = b"VMCOREINFO\0"
NAME_PADDED = 12
MAX_TEXT = 1 << 16  # VMCOREINFO_BYTES is one page; allow a 64K page
CHUNK = 4 << 20
PAGE = 4096


def _chunk(mem: PhysicalMemory, pa: int, length: int) -> bytes:
    """`length` bytes at `pa`, pages the dump lacks read as zeros."""
    try:
        return mem.read_phys(pa, length)
    except AddressError:
        out = bytearray()
        for page in range(pa, pa + length, PAGE):
            n = min(PAGE, pa + length - page)
            try:
                out += mem.read_phys(page, n)
            except AddressError:
                out += bytes(n)
        return bytes(out)


def _note_at(mem: PhysicalMemory, name_pa: int) -> tuple[bytes, str] | None:
    """(text, byte order of its header) of a VMCOREINFO note whose name lies
    at `name_pa`, or None when the bytes there are not such a note. The
    header's byte order is the kernel's (ppc64 probes tell LE from BE by it)."""
    if name_pa < 12:
        return None
    try:
        header = mem.read_phys(name_pa - 12, 12)
    except AddressError:
        return None
    for order in ("little", "big"):
        namesz, descsz, ntype = (int.from_bytes(header[i : i + 4], order) for i in (0, 4, 8))
        if namesz != len(NAME) or ntype != 0 or not 0 < descsz <= MAX_TEXT:
            continue
        try:
            text = mem.read_phys(name_pa + NAME_PADDED, descsz)
        except AddressError:
            return None
        return (text, order) if text.startswith(b"OSRELEASE=") else None
    return None


def find_vmcoreinfo(mem: PhysicalMemory) -> tuple[VmcoreInfo, int] | None:
    """(VMCOREINFO, physical address of its note) found in `mem`, or None;
    the note header's byte order goes to mem.metadata["vmcoreinfo_byteorder"].
    Raises DumpFormatError when several copies disagree."""
    found: dict[bytes, int] = {}
    orders: dict[bytes, str] = {}
    overlap = len(NAME) - 1
    for rng in mem.ranges():
        pa = rng.start
        while pa < rng.end:
            n = min(CHUNK + overlap, rng.end - pa)
            data = _chunk(mem, pa, n)
            pos = data.find(NAME)
            while pos >= 0:
                hit = _note_at(mem, pa + pos)
                if hit is not None:
                    text = hit[0].split(b"\0", 1)[0]
                    found.setdefault(text, pa + pos - 12)
                    orders.setdefault(text, hit[1])
                pos = data.find(NAME, pos + 1)
            pa += CHUNK
    if not found:
        return None
    if len(found) > 1:
        where = ", ".join(f"{at:#x}" for at in sorted(found.values()))
        raise DumpFormatError(
            f"the dump has no VMCOREINFO note and its memory holds {len(found)} "
            f"VMCOREINFO notes that disagree (at physical {where})",
            mem.path,
        )
    text, at = next(iter(found.items()))
    mem.metadata["vmcoreinfo_byteorder"] = orders[text]
    return VmcoreInfo.from_bytes(text), at
