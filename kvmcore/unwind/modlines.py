"""Source lines of module code, from the modules' debug files (.ko with DWARF).

A directory of module debug files (Debian's -dbg package ships them under
usr/lib/debug/lib/modules/<release>/, Fedora's as .ko.debug) is searched for
the dump's loaded modules by name (pvpanic_mmio is pvpanic-mmio.ko). A file is
taken when its `.note.gnu.build-id` equals the note the loaded module has in
memory (the kernel keeps it as a section), so a file of another build is not
used; when the module's note cannot be read the file is taken on its name.

A .ko is relocatable (ET_REL): every section starts at 0 and its DWARF
(`.debug_info`, `.debug_line`'s DW_LNE_set_address, `.debug_aranges`,
`.debug_rnglists`) holds section-relative addresses that `.rela.debug_*`
relocate against section symbols. Applied with the sections at 0 (what
pyelftools does), `.text`, `.init.text` and `.exit.text` would all start at
address 0. So each allocated section gets its own place in a private layout
(`ModuleDebugFile.layout`: sections laid out one after the other from
LAYOUT_BASE, as a linker would), the symbol table of an in-memory copy of the
file is moved to that layout, and pyelftools relocates the DWARF against it.
A runtime pc is mapped onto that layout through the module's section
addresses from the dump (`module->sect_attrs`): pc - runtime start of its
section + that section's layout address.

The layout depends on the file only, so what srclines decodes of a .ko is
cached under its own build id in the index cache, as a vmlinux's is.
"""

from __future__ import annotations

import io
import json
import os
import struct
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import indexcache
from ..errors import KvmcoreError, NotFoundError
from .srclines import SHF_ALLOC, SourceIndex, SourceLine, _Ranges

if TYPE_CHECKING:
    from ..dump import Dump
    from ..linux.modules import Module

#: where the private layout starts: not 0 (srclines drops rows at address 0,
#: the place of code a linker discarded), and within 32 bits for 32-bit arches
LAYOUT_BASE = 0x100000
LAYOUT_VERSION = b"modlines-1"
SUFFIXES = (".ko.debug", ".ko")
MAX_FILES = 1 << 16
_CACHE_KEY = "module_lines"
SHN_LORESERVE = 0xFF00
MODULE_STATE_COMING = 1


def module_name(filename: str) -> str | None:
    """lsmod's name of a debug file's name: pvpanic-mmio.ko -> pvpanic_mmio."""
    for suffix in SUFFIXES:
        if filename.endswith(suffix):
            return filename[: -len(suffix)].replace("-", "_")
    return None


def find_debug_files(directory: str) -> dict[str, list[str]]:
    """{module name: [paths]} of the .ko / .ko.debug files under `directory`."""
    out: dict[str, list[str]] = {}
    count = 0
    for root, dirs, files in os.walk(directory):
        dirs.sort()
        for name in sorted(files):
            mod = module_name(name)
            if mod is None:
                continue
            out.setdefault(mod, []).append(os.path.join(root, name))
            count += 1
            if count >= MAX_FILES:
                return out
    return out


@dataclass
class _Section:
    index: int
    name: str
    size: int
    align: int
    flags: int


@dataclass
class ModuleDebugFile:
    """One module debug file: its allocated sections, build id and layout."""

    path: str
    sections: dict[str, _Section]
    build_id: str | None
    #: the raw .note.gnu.build-id section, to compare with the loaded module's
    note: bytes | None
    #: section index -> its address in the private layout
    layout: dict[int, int] = field(default_factory=dict)
    _index: ModuleSourceIndex | None = None

    @classmethod
    def read(cls, path: str) -> ModuleDebugFile:
        from elftools.common.exceptions import ELFError
        from elftools.elf.elffile import ELFFile

        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                if elf["e_type"] != "ET_REL":
                    raise KvmcoreError("not a relocatable module file (ET_REL)", path)
                sections: dict[str, _Section] = {}
                note = None
                for i, sec in enumerate(elf.iter_sections()):
                    h = sec.header
                    if h["sh_flags"] & SHF_ALLOC and h["sh_size"]:
                        sections.setdefault(
                            sec.name,
                            _Section(i, sec.name, h["sh_size"], h["sh_addralign"], h["sh_flags"]),
                        )
                    if sec.name == ".note.gnu.build-id" and h["sh_type"] == "SHT_NOTE":
                        note = sec.data()
        except (OSError, ELFError, struct.error, ValueError) as exc:
            raise KvmcoreError(f"cannot read the module debug file: {exc}", path) from None
        build_id = _note_build_id(note) if note else None
        out = cls(path, sections, build_id, note)
        base = LAYOUT_BASE
        for placed in sorted(sections.values(), key=lambda s: s.index):
            align = max(placed.align, 16)
            base = -(-base // align) * align
            out.layout[placed.index] = base
            base += placed.size
        return out

    def index(self) -> ModuleSourceIndex:
        if self._index is None:
            self._index = ModuleSourceIndex(self)
        return self._index

    def layout_address(self, section: str, offset: int) -> int | None:
        sec = self.sections.get(section)
        if sec is None or not 0 <= offset < sec.size:
            return None
        return self.layout[sec.index] + offset


def _note_build_id(note: bytes) -> str | None:
    """The GNU build id in a .note.gnu.build-id section's bytes (the first note)."""
    if len(note) < 16 or note[12:16] != b"GNU\0":
        return None
    for e in ("<", ">"):
        namesz, descsz, kind = struct.unpack_from(e + "III", note)
        if namesz == 4 and kind == 3 and 16 + descsz <= len(note):
            return note[16 : 16 + descsz].hex()
    return None


class ModuleSourceIndex(SourceIndex):
    """srclines' SourceIndex over a .ko: its DWARF relocated onto the file's
    private layout (an in-memory copy whose symbols are moved there)."""

    def __init__(self, debug: ModuleDebugFile) -> None:
        self.debug = debug
        super().__init__(debug.path, debug.build_id, [])
        aranges = self._cached_aranges()
        self._ranges = sorted(aranges)
        self._starts = [a[0] for a in self._ranges]

    def _identity(self) -> bytes:
        layout = json.dumps(sorted(self.debug.layout.items())).encode()
        return LAYOUT_VERSION + super()._identity() + layout

    def _cached_aranges(self) -> list[tuple[int, int, int]]:
        """(lo, hi, CU offset) in the layout: each CU's code ranges, from its
        top DIE (a .ko has few CUs)."""
        source = indexcache.source_digest(LAYOUT_VERSION, self._identity())
        key = self.cache_key
        raw = indexcache.load(key, "modlines-aranges", source) if key else None
        if raw is not None:
            try:
                return [(int(a), int(b), int(c)) for a, b, c in json.loads(raw)]
            except (ValueError, TypeError):
                pass  # rebuilt below
        try:
            dwarf = self.dwarf()
            out: list[tuple[int, int, int]] = []
            for cu in dwarf.iter_CUs():
                top = cu.get_top_DIE()
                for lo, hi in _Ranges(dwarf, cu, top).of(top):
                    if lo and hi > lo:
                        out.append((lo, hi, cu.cu_offset))
        except KvmcoreError as exc:
            self.error = str(exc)
            return []
        except Exception as exc:  # pyelftools raises many kinds on bad input
            self.error = f"cannot read the DWARF: {exc}"
            return []
        if key:
            indexcache.store(key, "modlines-aranges", source, json.dumps(out).encode())
        return out

    def dwarf(self) -> Any:
        if self._dwarf is None:
            from elftools.elf.elffile import ELFFile

            with open(self.path, "rb") as f:
                data = bytearray(f.read())
            elf = ELFFile(io.BytesIO(bytes(data)))
            if not elf.has_dwarf_info():
                raise KvmcoreError("no DWARF", self.path)
            _move_symbols(elf, data, self.debug.layout)
            self._file = io.BytesIO(bytes(data))
            self._dwarf = ELFFile(self._file).get_dwarf_info(relocate_dwarf_sections=True)
        return self._dwarf


def _move_symbols(elf: Any, data: bytearray, layout: dict[int, int]) -> None:
    """Add its section's layout address to every symbol defined in an
    allocated section, in the file's bytes (what a linker does)."""
    symtab = elf.get_section_by_name(".symtab")
    if symtab is None:
        raise KvmcoreError("no .symtab (the DWARF's relocations need it)", "")
    h = symtab.header
    wide = elf.elfclass == 64
    e = "<" if elf.little_endian else ">"
    entsize = h["sh_entsize"] or (24 if wide else 16)
    # st_value's offset in an entry, and st_shndx's
    value_off, value_fmt = (8, "Q") if wide else (4, "I")
    shndx_off = 6 if wide else 14
    for i in range(h["sh_size"] // entsize):
        off = h["sh_offset"] + i * entsize
        (shndx,) = struct.unpack_from(e + "H", data, off + shndx_off)
        base = layout.get(shndx) if 0 < shndx < SHN_LORESERVE else None
        if base is None:
            continue
        (value,) = struct.unpack_from(e + value_fmt, data, off + value_off)
        mask = (1 << (64 if wide else 32)) - 1
        struct.pack_into(e + value_fmt, data, off + value_off, (value + base) & mask)


# -- the dump's modules ------------------------------------------------------------
class ModuleLines:
    """The debug files of a dump's loaded modules, found in one directory."""

    def __init__(self, dump: Dump, directory: str) -> None:
        self.dump = dump
        self.directory = directory
        self.notes: list[str] = []
        #: module name -> its debug file (only files that match the loaded module)
        self.files: dict[str, ModuleDebugFile] = {}
        self.modules: dict[str, Module] = {}
        try:
            loaded = list(dump.kernel.modules())
        except (KvmcoreError, NotImplementedError) as exc:
            self.notes.append(f"module list unavailable: {exc}")
            loaded = []
        candidates = find_debug_files(directory)
        for mod in loaded:
            self.modules[mod.name] = mod
            paths = candidates.get(mod.name)
            if not paths:
                continue
            chosen = self._match(mod, paths)
            if chosen is not None:
                self.files[mod.name] = chosen

    def _match(self, mod: Module, paths: list[str]) -> ModuleDebugFile | None:
        """The first of `paths` whose build id is the loaded module's."""
        release = self._release()
        # a directory holding several releases: the dump's first
        paths = sorted(paths, key=lambda p: f"/{release}/" not in p if release else False)
        unverified = None
        for path in paths:
            try:
                debug = ModuleDebugFile.read(path)
            except KvmcoreError as exc:
                self.notes.append(f"{mod.name}: {exc}")
                continue
            loaded = self._loaded_note(mod, debug)
            if loaded is None:
                unverified = unverified or debug
                continue
            if loaded == debug.note:
                return debug
            self.notes.append(
                f"{mod.name}: {path} is another build (its build id "
                f"{debug.build_id} is not the loaded module's {_note_build_id(loaded)})"
            )
        if unverified is not None:
            self.notes.append(
                f"{mod.name}: the loaded module's build id cannot be read; "
                f"{unverified.path} is taken on its name"
            )
        return unverified

    def _release(self) -> str | None:
        info = self.dump.vmcoreinfo
        return info.osrelease if info is not None and info.osrelease else None

    def _loaded_note(self, mod: Module, debug: ModuleDebugFile) -> bytes | None:
        addr = mod.sections.get(".note.gnu.build-id")
        if not addr or debug.note is None:
            return None
        try:
            return self.dump.read(addr, len(debug.note))
        except KvmcoreError:
            return None

    def runtime_sections(self, module: str) -> dict[str, int]:
        """{section: runtime address} of a loaded module: those of its
        `sect_attrs`, less the .init ones once its init has run (the kernel
        frees them and may load another module there: qemu_fw_cfg's stale
        .init.text is pvpanic_mmio's .text in the samples), or its base as
        .text when the dump gave no sections."""
        mod = self.modules[module]
        runtime = dict(mod.sections) or {".text": mod.base}
        if self._state(mod) != MODULE_STATE_COMING:
            runtime = {k: v for k, v in runtime.items() if not k.startswith(".init")}
        return runtime

    def _state(self, mod: Module) -> int | None:
        """module->state (0 live, 1 coming: in its init, 2 going), or None."""
        try:
            off = self.dump.types.offsetof("struct module", "state")
            return self.dump.read_u32(mod.address + off)
        except KvmcoreError:
            return None

    # -- lookups -----------------------------------------------------------------
    def layout_address(self, module: str, pc: int) -> tuple[ModuleDebugFile, int] | None:
        """(debug file, address in its layout) of a runtime pc in `module`."""
        debug = self.files.get(module)
        if debug is None or module not in self.modules:
            return None
        for name, start in self.runtime_sections(module).items():
            sec = debug.sections.get(name)
            if sec is None or not start <= pc < start + sec.size:
                continue
            addr = debug.layout_address(name, pc - start)
            if addr is not None:
                return debug, addr
        return None

    def covers(self, pc: int) -> bool:
        """Whether `pc` is in a section of a loaded module that has a debug file."""
        for name, debug in self.files.items():
            for sec, start in self.runtime_sections(name).items():
                found = debug.sections.get(sec)
                if found is not None and start <= pc < start + found.size:
                    return True
        return False

    def lookup(self, module: str, pc: int) -> list[SourceLine]:
        """Innermost first, as SourceIndex.lookup: the functions at `pc`
        (runtime, already pc - 1 for a return address) in `module`."""
        found = self.layout_address(module, pc)
        if found is None:
            return []
        debug, addr = found
        return debug.index().lookup(addr)

    def gdb_commands(self) -> list[str]:
        """`add-symbol-file FILE -s SECTION ADDR ...` for each module with a
        debug file: every allocated section of the file the loaded module
        has an address for, .text first (gdb's own order)."""
        out = []
        for name in sorted(self.files):
            debug = self.files[name]
            runtime = self.runtime_sections(name)
            secs = [s for s in debug.sections if s in runtime]
            secs.sort(key=lambda s: (s != ".text", debug.sections[s].index))
            if ".text" not in secs:
                continue
            words = ["add-symbol-file", _gdb_quote(debug.path)]
            for s in secs:
                words += ["-s", s, f"{runtime[s]:#x}"]
            out.append(" ".join(words))
        return out


def _gdb_quote(path: str) -> str:
    """A file name as gdb's add-symbol-file reads it (its own quoting)."""
    if not any(c in path for c in " \t'\"\\"):
        return path
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def use_module_dir(dump: Dump, directory: str | None) -> None:
    """Take module debug files from `directory` for this dump's backtraces
    (kvmcore.open(module_dir=...), `bt --module-dir`)."""
    if directory is None:
        return
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise NotFoundError("no such directory (--module-dir)", directory)
    if getattr(dump, "module_dir", None) != directory:
        dump.module_dir = directory
        dump.layer_cache.pop(_CACHE_KEY, None)


def module_lines(dump: Dump) -> ModuleLines | None:
    """The dump's ModuleLines (built on first use), or None without a
    module directory."""
    cache = dump.layer_cache
    if _CACHE_KEY in cache:
        cached: ModuleLines | None = cache[_CACHE_KEY]
        return cached
    directory = getattr(dump, "module_dir", None)
    lines = ModuleLines(dump, directory) if directory and dump.os == "linux" else None
    cache[_CACHE_KEY] = lines
    return lines
