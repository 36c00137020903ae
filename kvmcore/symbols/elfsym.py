"""Write a SymbolTable as a minimal ELF symbol file that gdb can load
(`gdb FILE`, `info symbol ADDR`, `info address NAME`, `bt`).

Kernel symbols are written at their link addresses (runtime address minus
the KASLR offset), exactly as a vmlinux has them: the gdb server's qOffsets
reply moves the file's .text by that offset, as it does a vmlinux's, so the
same gdb session lines up with either file. Module symbols keep their runtime
addresses, in sections of their own that qOffsets leaves alone. Each symbol
group gets one SHT_NOBITS allocated section spanning its addresses: gdb maps
minimal symbols to sections and ignores those outside any. An optional
.debug_frame (kvmcore.symbols.cfi, rows from the arch backend) lets gdb
unwind: gdb moves all of a file's FDEs by its .text offset, so they are at
link addresses too (module rows included). Further non-allocated sections
(the .debug_info/.debug_abbrev/.debug_str of kvmcore.types.btfdwarf) are
copied in as given. The file is written with struct
rather than lief: lief edits existing ELFs well but has no simple way to
build one from nothing.
"""

from __future__ import annotations

import os
import struct

from ..errors import SymbolError
from ..registry import get_arch
from .table import Symbol, SymbolTable, display_rank

SHT_PROGBITS, SHT_SYMTAB, SHT_STRTAB, SHT_NOBITS = 1, 2, 3, 8
SHF_WRITE, SHF_ALLOC, SHF_EXECINSTR = 1, 2, 4
STB_LOCAL, STB_GLOBAL = 0, 1
STT_NOTYPE, STT_OBJECT, STT_FUNC = 0, 1, 2


class _Strings:
    def __init__(self) -> None:
        self.data = bytearray(b"\0")
        self.seen: dict[str, int] = {}

    def add(self, s: str) -> int:
        off = self.seen.get(s)
        if off is None:
            off = len(self.data)
            self.data += s.encode("latin-1", "replace") + b"\0"
            self.seen[s] = off
        return off


def write_symbol_file(
    symtab: SymbolTable,
    path: str,
    arch: str,
    kernel_offset: int = 0,
    debug_frame: bytes | None = None,
    debug: dict[str, bytes] | None = None,
    extra: list[Symbol] | None = None,
) -> None:
    """Write `symtab`'s kernel-half and module symbols to an ELF file at `path`; vmlinux
    symbols moved back by `kernel_offset` to their link addresses. `debug_frame`
    (kvmcore.symbols.cfi) becomes a .debug_frame section, for gdb to unwind with;
    `debug` adds more non-allocated sections by name (.debug_info, ...);
    `extra` are kernel symbols `symtab` lacks (at runtime addresses, as the table's)."""
    machine = get_arch(arch).elf_machine
    if not machine:
        raise SymbolError(f"no ELF machine number for architecture {arch!r}", path)
    is64 = symtab.word_size == 8
    floor = symtab.kernel_floor
    low = floor < 1 << (symtab.word_size * 8 - 1)  # s390x: absolute values look like addresses
    groups: dict[str | None, list[Symbol]] = {}
    for sym in [*symtab, *(extra or ())]:
        if (sym.address >= floor or sym.module is not None) and not (low and sym.type in "aA"):
            if sym.module is None and kernel_offset:
                sym = Symbol(sym.name, sym.address - kernel_offset, sym.size, sym.type, None)
            groups.setdefault(sym.module, []).append(sym)
    if not groups:
        raise SymbolError("no kernel symbols to write", path)

    shstr = _Strings()
    strtab = _Strings()
    # (name, type, flags, addr, size) per allocated section, index from 1
    sections: list[tuple[int, int, int, int, int]] = []
    entries: list[tuple[int, int, int, int, int]] = []  # name, value, size, info, shndx
    for module, syms in sorted(groups.items(), key=lambda kv: (kv[0] is not None, kv[0] or "")):
        syms = _sized_aliases(syms)
        lo = min(s.address for s in syms)
        hi = max(s.address + max(s.size, 1) for s in syms)
        name = ".text" if module is None else f".text.{module}"
        sections.append(
            (shstr.add(name), SHT_NOBITS, SHF_ALLOC | SHF_EXECINSTR | SHF_WRITE, lo, hi - lo)
        )
        shndx = len(sections)
        for s in syms:
            stype = STT_FUNC if s.type in "tTwW" else STT_OBJECT
            bind = STB_GLOBAL if s.type.isupper() else STB_LOCAL
            entries.append((strtab.add(s.name), s.address, s.size, (bind << 4) | stype, shndx))
    entries.sort(key=lambda e: e[3] >> 4)  # ELF wants locals first
    first_global = next(
        (i + 1 for i, e in enumerate(entries) if e[3] >> 4 != STB_LOCAL), len(entries) + 1
    )
    e = "<" if symtab_byteorder(arch) == "little" else ">"
    if is64:
        sym_fmt, sym_size = e + "IBBHQQ", 24
        packed = b"\0" * sym_size + b"".join(
            struct.pack(sym_fmt, n, info, 0, sh, v, sz) for n, v, sz, info, sh in entries
        )
    else:
        sym_fmt, sym_size = e + "IIIBBH", 16
        packed = b"\0" * sym_size + b"".join(
            struct.pack(sym_fmt, n, v & 0xFFFFFFFF, sz, info, 0, sh)
            for n, v, sz, info, sh in entries
        )
    symtab_name, strtab_name = shstr.add(".symtab"), shstr.add(".strtab")
    shstrtab_name = shstr.add(".shstrtab")
    nonalloc = {".debug_frame": debug_frame or b"", **(debug or {})}
    extra_names = [(shstr.add(name), data) for name, data in nonalloc.items() if data]

    ehdr_size = 64 if is64 else 52
    shent = 64 if is64 else 40
    off_sym = ehdr_size
    off_str = off_sym + len(packed)
    off_shstr = off_str + len(strtab.data)
    off_extra = []
    pos = off_shstr + len(shstr.data)
    for _name, data in extra_names:
        pos = (pos + 7) & ~7
        off_extra.append(pos)
        pos += len(data)
    off_sh = (pos + 7) & ~7
    n_alloc = len(sections)
    i_strtab, i_shstr = n_alloc + 2, n_alloc + 3
    shnum = n_alloc + 4 + len(extra_names)

    def shdr(
        name: int,
        typ: int,
        flags: int,
        addr: int,
        off: int,
        size: int,
        link: int = 0,
        info: int = 0,
        align: int = 1,
        entsize: int = 0,
    ) -> bytes:
        if is64:
            return struct.pack(
                e + "IIQQQQIIQQ", name, typ, flags, addr, off, size, link, info, align, entsize
            )
        return struct.pack(
            e + "IIIIIIIIII",
            name,
            typ,
            flags,
            addr & 0xFFFFFFFF,
            off,
            size,
            link,
            info,
            align,
            entsize,
        )

    headers = [shdr(0, 0, 0, 0, 0, 0)]
    for sh_name, typ, flags, addr, size in sections:
        headers.append(shdr(sh_name, typ, flags, addr, 0, size, align=16))
    headers.append(
        shdr(
            symtab_name, SHT_SYMTAB, 0, 0, off_sym, len(packed), i_strtab, first_global, 8, sym_size
        )
    )
    headers.append(shdr(strtab_name, SHT_STRTAB, 0, 0, off_str, len(strtab.data)))
    headers.append(shdr(shstrtab_name, SHT_STRTAB, 0, 0, off_shstr, len(shstr.data)))
    for (sh_name, data), off in zip(extra_names, off_extra):
        headers.append(shdr(sh_name, SHT_PROGBITS, 0, 0, off, len(data), align=8))

    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if e == "<" else 2, 1, 0]) + b"\0" * 8
    if is64:
        ehdr = ident + struct.pack(
            e + "HHIQQQIHHHHHH",
            2,
            machine,
            1,
            0,
            0,
            off_sh,
            0,
            ehdr_size,
            0,
            0,
            shent,
            shnum,
            i_shstr,
        )
    else:
        ehdr = ident + struct.pack(
            e + "HHIIIIIHHHHHH",
            2,
            machine,
            1,
            0,
            0,
            off_sh,
            0,
            ehdr_size,
            0,
            0,
            shent,
            shnum,
            i_shstr,
        )
    parts = [ehdr, packed, bytes(strtab.data), bytes(shstr.data)]
    size = sum(map(len, parts))
    for (_name, data), off in zip(extra_names, off_extra):
        parts += [b"\0" * (off - size), data]
        size = off + len(data)
    parts += [b"\0" * (off_sh - size)] + headers
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.writelines(parts)
        os.replace(tmp, path)
    except OSError as exc:
        raise SymbolError(f"cannot write symbol file: {exc}", path) from None


def _sized_aliases(syms: list[Symbol]) -> list[Symbol]:
    """Sizes for unsized code symbols (kallsyms records none): among those
    sharing an address, the one kvmcore shows (SymbolTable's display rank)
    spans up to the next address, the others stay 0. gdb names a pc by a
    symbol whose size covers it before a zero-size one, so it picks the same
    alias kvmcore does (the local __schedule, not the global
    __sched_text_start label at its address)."""
    code = sorted((s for s in syms if s.type in "tTwW" and not s.size), key=lambda s: s.address)
    if not code:
        return syms
    addresses = sorted({s.address for s in syms})
    following = dict(zip(addresses, addresses[1:]))
    chosen: dict[int, Symbol] = {}
    for s in code:
        best = chosen.get(s.address)
        if best is None or display_rank(s.name, s.type, 0) < display_rank(best.name, best.type, 0):
            chosen[s.address] = s
    out = []
    for s in syms:
        if chosen.get(s.address) is s and s.address in following:
            s = Symbol(s.name, s.address, following[s.address] - s.address, s.type, s.module)
        out.append(s)
    return out


def symtab_byteorder(arch: str) -> str:
    """The byte order of the architecture's kernels (s390x: big-endian)."""
    return get_arch(arch).byteorder
