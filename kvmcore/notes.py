"""ELF notes and the Linux VMCOREINFO helper variables.

VMCOREINFO is the text note the kernel exports for dump tools:
``OSRELEASE=6.1.0-28-amd64``, ``SYMBOL(init_uts_ns)=ffffffff82a13ea0``,
``OFFSET(list_head.next)=0``, ``SIZE(page)=64``, ``NUMBER(phys_base)=...``,
``LENGTH(free_area)=11``, ``KERNELOFFSET=3c000000`` and so on.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

#: byte order of a dump's words, spelt as int.from_bytes and sys.byteorder spell it
ByteOrder = Literal["little", "big"]

NT_PRSTATUS = 1
NT_PRFPREG = 2
NT_PRPSINFO = 3
NT_TASKSTRUCT = 4
NT_AUXV = 6


@dataclass(frozen=True)
class Note:
    """One ELF note: its owner name, type and descriptor bytes."""

    name: str
    type: int
    desc: bytes


def _align4(n: int) -> int:
    return (n + 3) & ~3


def parse_notes(data: bytes, byteorder: ByteOrder, limit: int = 100_000) -> list[Note]:
    """Parse a PT_NOTE segment. Stops at the first malformed note."""
    notes: list[Note] = []
    off = 0
    while off + 12 <= len(data) and len(notes) < limit:
        namesz = int.from_bytes(data[off : off + 4], byteorder)
        descsz = int.from_bytes(data[off + 4 : off + 8], byteorder)
        ntype = int.from_bytes(data[off + 8 : off + 12], byteorder)
        off += 12
        if namesz == 0 and descsz == 0 and ntype == 0:
            break  # padding
        name_end = off + namesz
        desc_start = off + _align4(namesz)
        desc_end = desc_start + descsz
        if desc_end > len(data):
            break
        name = data[off:name_end].rstrip(b"\0").decode("latin-1")
        notes.append(Note(name, ntype, bytes(data[desc_start:desc_end])))
        off = desc_start + _align4(descsz)
    return notes


class VmcoreInfo:
    """Parsed VMCOREINFO text, with typed accessors for its helper variables."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.entries: dict[str, str] = {}
        #: keys written more than once with different values, each with every
        #: value in order; the kernel writes each key once, so a second value is
        #: damage or a planted line: `entries` keeps the first, callers that
        #: depend on such a key (KERNELOFFSET) refuse it, `info`/`sys` show it
        self.conflicts: dict[str, list[str]] = {}
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if not sep:
                continue
            key, value = key.strip(), value.strip()
            first = self.entries.setdefault(key, value)
            if value != first:
                self.conflicts.setdefault(key, [first]).append(value)

    @classmethod
    def from_bytes(cls, raw: bytes) -> VmcoreInfo:
        return cls(raw.split(b"\0", 1)[0].decode("latin-1"))

    def __contains__(self, key: str) -> bool:
        return key in self.entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.entries)

    def get(self, key: str, default: str | None = None) -> str | None:
        return self.entries.get(key, default)

    def as_dict(self) -> dict[str, str]:
        return dict(self.entries)

    def _int(self, key: str, base: int) -> int | None:
        value = self.entries.get(key)
        if value is None:
            return None
        try:
            return int(value, base)
        except ValueError:
            return None

    def symbol(self, name: str) -> int | None:
        """``SYMBOL(name)``: an address, written in hex without 0x."""
        return self._int(f"SYMBOL({name})", 16)

    def offset(self, struct: str, member: str) -> int | None:
        """``OFFSET(struct.member)``, decimal."""
        return self._int(f"OFFSET({struct}.{member})", 10)

    def size(self, name: str) -> int | None:
        """``SIZE(name)``, decimal."""
        return self._int(f"SIZE({name})", 10)

    def length(self, name: str) -> int | None:
        """``LENGTH(name)``, decimal."""
        return self._int(f"LENGTH({name})", 10)

    def number(self, name: str) -> int | None:
        """``NUMBER(name)``: decimal, except where the kernel prints hex (0x...)."""
        value = self.entries.get(f"NUMBER({name})")
        if value is None:
            return None
        try:
            return int(value, 0) if value.lower().startswith(("0x", "-0x")) else int(value, 10)
        except ValueError:
            try:
                return int(value, 16)
            except ValueError:
                return None

    def hex(self, key: str) -> int | None:
        """A bare hex entry such as KERNELOFFSET or CRASHTIME's neighbours."""
        return self._int(key, 16)

    @property
    def osrelease(self) -> str | None:
        return self.entries.get("OSRELEASE")

    @property
    def page_size(self) -> int | None:
        return self._int("PAGESIZE", 10)

    @property
    def kernel_offset(self) -> int:
        """KASLR offset of the kernel image (0 when absent)."""
        return self._int("KERNELOFFSET", 16) or 0

    @property
    def build_id(self) -> str | None:
        return self.entries.get("BUILD-ID")

    @property
    def crashtime(self) -> int | None:
        return self._int("CRASHTIME", 10)
