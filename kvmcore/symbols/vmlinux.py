"""A small, fast reader for the parts of a vmlinux ELF the symbol and type
layers need: section headers, .symtab/.strtab, GNU build ids, raw section
bytes (.BTF). Parsing the symbol table with struct.iter_unpack over an mmap
takes a fraction of a second for a 633 MB debug vmlinux, where pyelftools'
per-symbol objects would be much slower; DWARF is never touched here."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .. import indexcache
from ..errors import KvmcoreError, SymbolError
from ..fileio import DumpFile
from ..notes import ByteOrder, parse_notes
from .frozen import FrozenSymbols
from .table import Symbol, SymbolColumns

if TYPE_CHECKING:
    from ..dump import Dump

SHT_SYMTAB, SHT_NOTE, SHT_NOBITS = 2, 7, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
SHN_UNDEF, SHN_ABS, SHN_COMMON = 0, 0xFFF1, 0xFFF2
STT_NOTYPE, STT_OBJECT, STT_FUNC, STT_SECTION, STT_FILE = 0, 1, 2, 3, 4
STB_LOCAL, STB_GLOBAL, STB_WEAK = 0, 1, 2
NT_GNU_BUILD_ID = 3
PT_INTERP = 3
_NOT_A_KERNEL_TYPE = {
    0: "ELF type ET_NONE",
    1: "a relocatable object (a kernel module?)",
    4: "an ELF core file (is it the dump? the dump comes first)",
}
#: sections every Linux vmlinux (any arch) or FreeBSD kernel has, one is enough
KERNEL_SECTIONS = frozenset(
    {
        ".init.text",
        ".head.text",
        "__ksymtab",
        "__ksymtab_gpl",
        "__ksymtab_strings",
        "__ex_table",
        "__param",
        ".data..percpu",
        ".BTF",
        "set_sysinit_set",
        "set_modmetadata_set",
        "set_pcpu",
    }
)


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
    """Read-only view of a kernel ELF image (a vmlinux, a FreeBSD kernel or
    kernel.debug, or a kvmcore symbol file). Anything else, or an ELF whose
    tables run past its end, is a one-line SymbolError naming the file."""

    def __init__(self, path: str) -> None:
        self.path = os.fspath(path)
        try:
            self._file = DumpFile(self.path)  # mmap, or pread when it cannot map
        except KvmcoreError as exc:
            if exc.message == "is empty":
                raise SymbolError("not a vmlinux: the file is empty", self.path) from None
            raise SymbolError(f"cannot read vmlinux: {exc.message}", self.path) from None
        self.size = size = self._file.size
        head = self._read(0, min(size, 64))
        if len(head) < 16 or head[:4] != b"\x7fELF":
            raise SymbolError("not a vmlinux: not an ELF file", self.path)
        self.elf_class = head[4]
        if self.elf_class not in (1, 2) or head[5] not in (1, 2):
            raise SymbolError(
                f"not a vmlinux: bad ELF class {head[4]} / data encoding {head[5]}", self.path
            )
        self.is64 = self.elf_class == 2
        self.byteorder: ByteOrder = "little" if head[5] == 1 else "big"
        self._e = "<" if head[5] == 1 else ">"
        e = self._e
        if len(head) < (64 if self.is64 else 52):
            raise SymbolError(
                f"truncated ELF: {size} bytes, shorter than its ELF header", self.path
            )
        if self.is64:
            self.e_type, self.machine = struct.unpack_from(e + "HH", head, 16)
            phoff, shoff = struct.unpack_from(e + "QQ", head, 32)
            phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", head, 54)
            shfmt, phfmt = e + "IIQQQQIIQQ", e + "I"
        else:
            self.e_type, self.machine = struct.unpack_from(e + "HH", head, 16)
            phoff, shoff = struct.unpack_from(e + "II", head, 28)
            phentsize, phnum, shentsize, shnum, shstrndx = struct.unpack_from(e + "HHHHH", head, 42)
            shfmt, phfmt = e + "IIIIIIIIII", e + "I"
        kind = _NOT_A_KERNEL_TYPE.get(self.e_type)
        if kind:
            raise SymbolError(f"not a vmlinux: {kind}", self.path)
        shsize = struct.calcsize(shfmt)
        if shoff == 0 or shnum == 0:
            raise SymbolError("not a vmlinux: the ELF has no section headers", self.path)
        if shentsize < shsize:
            raise SymbolError(
                f"corrupt ELF: section header size {shentsize}, expected {shsize}", self.path
            )
        if shoff + shnum * shentsize > size:
            raise SymbolError(
                f"truncated or corrupt ELF: its section header table ({shnum} x {shentsize} "
                f"bytes at {shoff:#x}) runs past the end of the file ({size:#x} bytes)",
                self.path,
            )
        table = self._read(shoff, shnum * shentsize)
        raw = [struct.unpack_from(shfmt, table, i * shentsize) for i in range(shnum)]
        if shstrndx >= shnum:
            raise SymbolError("corrupt ELF: section-name table index out of range", self.path)
        names_off, names_size = raw[shstrndx][4], raw[shstrndx][5]
        names = self._read(names_off, names_size) if names_off + names_size <= size else b""
        self.sections: list[Section] = []
        for i, (nm, typ, flags, addr, off, sz, link, _info, _align, ent) in enumerate(raw):
            end = names.find(b"\0", nm)
            name = names[nm : end if end >= 0 else len(names)].decode("latin-1")
            sec = Section(i, name, typ, flags, addr, off, sz, link, ent)
            if typ != SHT_NOBITS and sz and off + sz > size:
                raise SymbolError(
                    f"truncated or corrupt ELF: section {name or i} ({sz:#x} bytes at "
                    f"{off:#x}) runs past the end of the file ({size:#x} bytes)",
                    self.path,
                )
            self.sections.append(sec)
        # a relocatable ppc64 kernel links an .interp section into its image
        # (no PT_INTERP): a kernel's own sections say it is one
        kernel = any(s.name in ("__ksymtab", "__ksymtab_strings") for s in self.sections)
        interp = not kernel and any(s.name == ".interp" for s in self.sections)
        if not interp and phoff and phentsize >= 4 and phoff + phnum * phentsize <= size:
            ph = self._read(phoff, phnum * phentsize)
            interp = any(
                struct.unpack_from(phfmt, ph, i * phentsize)[0] == PT_INTERP for i in range(phnum)
            )
        if interp:
            raise SymbolError(
                "not a vmlinux: a user-space program (it names an ELF interpreter)", self.path
            )
        if not self._looks_like_a_kernel():
            raise SymbolError(
                "not a vmlinux: no kernel sections (.init.text, __ksymtab, set_sysinit_set, "
                "...) and no section at a kernel address",
                self.path,
            )

    def _looks_like_a_kernel(self) -> bool:
        if any(s.name in KERNEL_SECTIONS for s in self.sections):
            return True
        # a kernel is linked in the top half of the address space on every arch
        # kvmcore reads (kvmcore's own symbol files have only .text there)
        top = 1 << (63 if self.is64 else 31)
        return any(s.flags & SHF_ALLOC and s.addr >= top for s in self.sections)

    def _read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise SymbolError(
                f"truncated or corrupt ELF: read of {length:#x} bytes at "
                f"{offset:#x} runs past the end of the file",
                self.path,
            )
        try:
            return self._file.pread(offset, length)
        except KvmcoreError as exc:
            raise SymbolError(f"cannot read vmlinux: {exc.message}", self.path) from None

    def close(self) -> None:
        self._file.close()

    def section(self, name: str) -> Section | None:
        for s in self.sections:
            if s.name == name:
                return s
        return None

    def section_bytes(self, sec: Section) -> bytes:
        if sec.type == SHT_NOBITS:
            return b""
        if sec.offset + sec.size > self.size:
            raise SymbolError(f"section {sec.name} extends past end of file", self.path)
        return self._read(sec.offset, sec.size)

    def section_view(self, sec: Section) -> bytes | memoryview:
        """The section's bytes without a copy where the file is mapped (for
        hashing), else as section_bytes."""
        if sec.type == SHT_NOBITS or not self._file.mapped:
            return self.section_bytes(sec)
        if sec.offset + sec.size > self.size:
            raise SymbolError(f"section {sec.name} extends past end of file", self.path)
        return self._file.view()[sec.offset : sec.offset + sec.size]

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
        return [
            Symbol(n, a, z, t)
            for n, a, z, t in zip(
                cols.names, cols.addresses, cols.sizes or [0] * len(cols), cols.types
            )
        ]

    def symbol_columns(self) -> SymbolColumns:
        """The .symtab as columns (name, link-time address, size, nm-style
        type letter); section, file, undefined and mapping symbols left out.
        In the order of frozen_symbols(), whose cached form they come from."""
        return self.frozen_symbols().columns(0)

    def frozen_symbols(self, floor: int | None = None) -> FrozenSymbols:
        """The .symtab as FrozenSymbols at link-time addresses (`floor`: the
        arch's lowest kernel address, None for the upper half). Kept in the
        build-id index cache (kvmcore.indexcache): decoding and indexing a debug
        vmlinux's .symtab takes ~0.4 s, loading it from the cache ~0.01 s."""
        symtab = next((s for s in self.sections if s.type == SHT_SYMTAB), None)
        if symtab is None:
            raise SymbolError("vmlinux has no .symtab (stripped)", self.path)
        if symtab.link >= len(self.sections):
            raise SymbolError(".symtab links to a missing string table", self.path)
        strtab = self.sections[symtab.link]
        word_size = 8 if self.is64 else 4
        ids = self.build_ids() if indexcache.enabled() else []
        build_id = ids[0] if ids else None
        if build_id:
            # the letters depend on the sections' types and flags too
            layout = repr(([(s.type, s.flags) for s in self.sections], floor)).encode()
            source = indexcache.source_digest(
                SYMBOL_CACHE_NAME.encode(),
                self._e.encode(),
                layout,
                self.section_view(symtab),
                self.section_view(strtab),
            )
            cached = indexcache.load(build_id, SYMBOL_CACHE_NAME, source)
            frozen = FrozenSymbols.from_bytes(cached) if cached is not None else None
            if frozen is not None and frozen.word_size == word_size:
                return frozen
        data = self.section_bytes(symtab)
        strings = self.section_bytes(strtab)
        frozen = FrozenSymbols.freeze(self._decode_symtab(data, strings), 0, word_size, floor)
        if build_id:
            indexcache.store(build_id, SYMBOL_CACHE_NAME, source, frozen.to_bytes())
        return frozen

    def _decode_symtab(self, data: bytes, strings: bytes) -> SymbolColumns:
        # one decode of the whole string table, then str slices per name
        text = strings.decode("latin-1")
        entsize = 24 if self.is64 else 16
        usable = len(data) - len(data) % entsize
        if self.is64:  # st_name, st_info, (st_other), st_shndx, st_value, st_size
            rows = struct.iter_unpack(self._e + "IBxHQQ", data[:usable])
        else:  # st_name, st_value, st_size, st_info, (st_other), st_shndx
            rows = (
                (n, i, x, v, z)
                for n, v, z, i, x in struct.iter_unpack(self._e + "IIIBxH", data[:usable])
            )
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


def dump_frozen_symbols(dump: Dump, image: VmlinuxFile) -> FrozenSymbols:
    """`image.frozen_symbols()` for `dump`'s architecture, loaded once per open
    dump (the KASLR check and the symbol table both need them): read only."""
    key = f"vmlinux-symbols:{image.path}"
    frozen = dump.layer_cache.get(key)
    if frozen is None:
        frozen = dump.layer_cache[key] = image.frozen_symbols(dump.arch.kernel_start)
    return frozen


#: the frozen .symtab in the build-id index cache
SYMBOL_CACHE_NAME = "vmlinux-symbols.v2"


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
