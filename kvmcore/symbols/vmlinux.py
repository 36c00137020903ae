"""A small, fast reader for the parts of a vmlinux ELF the symbol and type
layers need: section headers, .symtab/.strtab, GNU build ids, raw section
bytes (.BTF). Parsing the symbol table with struct.iter_unpack over an mmap
takes a fraction of a second for a 633 MB debug vmlinux, where pyelftools'
per-symbol objects would be much slower; DWARF is never touched here."""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from ..errors import SymbolError
from ..notes import parse_notes
from .table import Symbol, SymbolColumns

SHT_SYMTAB, SHT_NOTE, SHT_NOBITS = 2, 7, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
NT_GNU_BUILD_ID = 3


@dataclass(frozen=True)
class Section:
    index: int
    name: str
    type: int
    flags: int
    addr: int
    offset: int
    size: int
    link: int
    entsize: int


class VmlinuxFile:
    """Read-only view of a kernel ELF image."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        try:
            with open(self.path, "rb") as f:
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError) as exc:
            raise SymbolError(f"cannot read vmlinux: {exc}", self.path) from None
        m = self._map
        if len(m) < 64 or m[:4] != b"\x7fELF":
            raise SymbolError("not an ELF file", self.path)
        self.elf_class = m[4]
        if self.elf_class not in (1, 2):
            raise SymbolError(f"bad ELF class {self.elf_class}", self.path)
        self.is64 = self.elf_class == 2
        self.byteorder = "little" if m[5] == 1 else "big"
        self._e = "<" if m[5] == 1 else ">"
        e = self._e
        if self.is64:
            (self.machine,) = struct.unpack_from(e + "H", m, 18)
            shoff, = struct.unpack_from(e + "Q", m, 40)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", m, 58)
            shfmt = e + "IIQQQQIIQQ"
        else:
            (self.machine,) = struct.unpack_from(e + "H", m, 18)
            shoff, = struct.unpack_from(e + "I", m, 32)
            shentsize, shnum, shstrndx = struct.unpack_from(e + "HHH", m, 46)
            shfmt = e + "IIIIIIIIII"
        if shoff == 0 or shoff + shnum * shentsize > len(m):
            raise SymbolError("ELF section headers missing or beyond end of file", self.path)
        raw = [struct.unpack_from(shfmt, m, shoff + i * shentsize) for i in range(shnum)]
        if shstrndx >= shnum:
            raise SymbolError("ELF section-name table index out of range", self.path)
        names_off, names_size = raw[shstrndx][4], raw[shstrndx][5]
        names = m[names_off:names_off + names_size]
        self.sections: list[Section] = []
        for i, (nm, typ, flags, addr, off, size, link, _info, _align, ent) in enumerate(raw):
            end = names.find(b"\0", nm)
            name = names[nm:end if end >= 0 else len(names)].decode("latin-1")
            self.sections.append(Section(i, name, typ, flags, addr, off, size, link, ent))

    def close(self) -> None:
        self._map.close()

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_bytes(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        if sec.offset + sec.size > len(self._map):
            raise SymbolError(f"section {sec.name} extends past end of file", self.path)
        return self._map[sec.offset:sec.offset + sec.size]

    def build_ids(self) -> list[str]:
        """Every NT_GNU_BUILD_ID in the note sections (a vmlinux may hold several)."""
        ids = []
        for sec in self.sections:
            if sec.type == SHT_NOTE:
                for note in parse_notes(self.section_bytes(sec), self.byteorder):
                    if note.name == "GNU" and note.type == NT_GNU_BUILD_ID:
                        ids.append(note.desc.hex())
        return ids

    def has_symtab(self) -> bool:
        return any(s.type == SHT_SYMTAB for s in self.sections)

    def symbols(self) -> list[Symbol]:
        """The .symtab as Symbols with nm-style type letters, link-time addresses."""
        cols = self.symbol_columns()
        return [Symbol(n, a, z, t) for n, a, z, t in
                zip(cols.names, cols.addresses, cols.sizes or [0] * len(cols), cols.types)]

    def symbol_columns(self) -> SymbolColumns:
        """The .symtab as columns (name, link-time address, size, nm-style
        type letter); section, file, undefined and mapping symbols left out."""
        symtab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            raise SymbolError("vmlinux has no .symtab (stripped)", self.path)
        if symtab.link >= len(self.sections):
            raise SymbolError(".symtab links to a missing string table", self.path)
        strtab = self.sections[symtab.link]
        # one decode of the whole string table, then str slices per name
        text = self.section_bytes(strtab).decode("latin-1")
        data = self.section_bytes(symtab)
        entsize = 24 if self.is64 else 16
        usable = len(data) - len(data) % entsize
        if self.is64:  # st_name, st_info, (st_other), st_shndx, st_value, st_size
            rows = struct.iter_unpack(self._e + "IBxHQQ", data[:usable])
        else:  # st_name, st_value, st_size, st_info, (st_other), st_shndx
            rows = ((n, i, x, v, z) for n, v, z, i, x in
                    struct.iter_unpack(self._e + "IIIBxH", data[:usable]))
        letter_of = _LetterTable(self.sections)
        names: list[str] = []
        addresses: list[int] = []
        sizes: list[int] = []
        types: list[str] = []
        find = text.find
        for name_off, info, shndx, value, size in rows:
            letter = letter_of(info, shndx)
            if letter is None or name_off == 0:
                continue
            end = find("\0", name_off)
            name = text[name_off:end] if end >= 0 else text[name_off:]
            # arm/arm64/riscv mapping symbols ($x, $d, $x.123) mark code/data runs, not functions
            if not name or name[0] == "$":
                continue
            names.append(name)
            addresses.append(value)
            sizes.append(size)
            types.append(letter)
        return SymbolColumns(names, addresses, types, sizes)


class _LetterTable(dict):
    """(st_info, st_shndx) -> nm letter, or None for symbols to leave out;
    memoized, as a kernel has few distinct pairs."""

    def __init__(self, sections: list[Section]) -> None:
        super().__init__()
        self.sections = sections
        self.section_letters = [_section_letter(s) for s in sections]

    def __call__(self, info: int, shndx: int) -> str | None:
        key = info | shndx << 8
        try:
            return self[key]
        except KeyError:
            letter = self[key] = self._letter(info, shndx)
            return letter

    def _letter(self, info: int, shndx: int) -> str | None:
        stype, bind = info & 0xF, info >> 4
        if stype in (STT_SECTION, STT_FILE) or shndx == SHN_UNDEF:
            return None
        if shndx == SHN_ABS:
            letter = "a"
        elif shndx < len(self.sections):
            letter = "t" if stype == STT_FUNC else self.section_letters[shndx]
        else:
            letter = "d"
        if bind == STB_WEAK:
            return "W" if letter in "tT" else "V"
        if bind == STB_GLOBAL:
            return letter.upper()
        return letter


def _section_letter(sec: Section) -> str:
    if sec.flags & SHF_EXECINSTR:
        return "t"
    if sec.type == SHT_NOBITS:
        return "b"
    if not sec.flags & SHF_WRITE:
        return "r"
    return "d"
