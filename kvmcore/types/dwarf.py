"""DWARF types from a debug vmlinux, through pyelftools, indexed lazily.

Setting up pyelftools' DWARF for a 633 MB debug vmlinux is quick once its
relocation pass is turned off (the .rela sections of a linked vmlinux are
for the kernel's own relocator, not for DWARF); walking every DIE is what
costs. So the index maps type names to (CU offset, DIE offset) by walking
only the top-level DIEs of each CU, one CU at a time and only as far as the
name asked for, without pyelftools (kvmcore.symbols.dwarfscan and
dwarfunit: ~1 ms a kernel CU, each CU read by pread so that a scan's pages
do not stay mapped); the index and how far it got are cached per build id
under ${KVMCORE_CACHE:-~/.cache/kvmcore}/index/<build-id>/types.json, so a
second open neither re-parses nor re-scans. `build_full_index()` finishes
the scan (~4 s for an i386 or armhf kernel, 2,200-2,800 CUs).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Any

from ..cachedir import index_dir
from ..errors import TypeInfoError
from ..symbols.dwarfscan import Unscannable, section_strings, unit_top_level_dies
from ..symbols.dwarfunit import HEADER_BYTES, read_abbrev_table, unit_header
from .model import VOID, Member, Type

if TYPE_CHECKING:
    from elftools.dwarf.die import DIE

INDEX_VERSION = 1
# keyed by DIE.tag as pyelftools types it (an int for a tag it does not know)
_SPACES: dict[str | int | None, str] = {
    "DW_TAG_structure_type": "struct",
    "DW_TAG_union_type": "union",
    "DW_TAG_enumeration_type": "enum",
    "DW_TAG_typedef": "typedef",
    "DW_TAG_base_type": "base",
}
_TYPE_TAGS = frozenset(k for k in _SPACES if isinstance(k, str))
_QUALIFIERS = {
    "DW_TAG_const_type": "const",
    "DW_TAG_volatile_type": "volatile",
    "DW_TAG_restrict_type": "restrict",
    "DW_TAG_typedef": "typedef",
    "DW_TAG_atomic_type": "volatile",
}
MAX_ARRAY_DIMS = 16


def _read(stream: Any, offset: int, size: int) -> bytes:
    """Bytes of a section: by pread from a kvmcore.symbols.elfmap stream (a
    scan reads each unit once: mapped, its pages would stay in RSS)."""
    pread = getattr(stream, "pread", None)
    if pread is not None:
        return pread(offset, size)
    stream.seek(offset)
    return bytes(stream.read(size))


def _type_dies(
    dwarf: Any, offset: int, strings: Any = None, line_strings: Any = None
) -> tuple[int, list[tuple[int, Any, str | None, bool]]]:
    """(the unit's size, and (offset, tag, name, is a declaration) of its
    top-level named-type DIEs) for the unit at `offset` of .debug_info:
    skipped through undecoded (kvmcore.symbols.dwarfscan, with its header
    and abbreviations read by kvmcore.symbols.dwarfunit: no pyelftools
    object, ~10x faster than its walk), else walked with pyelftools.
    `strings` and `line_strings` (section_strings of .debug_str and
    .debug_line_str, made once for many units: they keep what they decoded)."""
    info, abbrev = dwarf.debug_info_sec, dwarf.debug_abbrev_sec
    little = dwarf.config.little_endian
    try:
        header = unit_header(_read(info.stream, offset, HEADER_BYTES), offset, little)
        abbrevs = read_abbrev_table(
            lambda at, n: _read(abbrev.stream, at, n), header.abbrev_offset, abbrev.size
        )
        return header.size, unit_top_level_dies(
            header,
            _read(info.stream, offset, header.size),
            abbrevs,
            _TYPE_TAGS,
            little,
            strings or section_strings(dwarf.debug_str_sec, dwarf.get_string_from_table),
            line_strings
            or section_strings(dwarf.debug_line_str_sec, dwarf.get_string_from_linetable),
            names=True,
        )
    except Unscannable:
        pass
    cu = dwarf.get_CU_at(offset)
    out = []
    for die in cu.get_top_DIE().iter_children():
        if die.tag in _TYPE_TAGS:
            name = die.attributes.get("DW_AT_name")
            declaration = "DW_AT_declaration" in die.attributes
            text = name.value.decode("latin-1") if name is not None else None
            out.append((die.offset, die.tag, text, declaration))
    return cu.size, out


class DwarfTypes:
    """Types of one vmlinux's DWARF; keys are (CU offset, DIE offset)."""

    name = "dwarf"

    def __init__(self, path: str, word_size: int, build_id: str) -> None:
        from ..symbols.elfmap import mapped_elf_file

        self.path = path
        self.word_size = word_size
        self.build_id = build_id
        # open for the object's lifetime: pyelftools reads the DWARF lazily from it
        self._file = open(path, "rb")  # noqa: SIM115
        try:
            elf = mapped_elf_file(self._file)  # sections read in place, not copied
            if not elf.has_dwarf_info():
                raise TypeInfoError("vmlinux has no DWARF (.debug_info)", path)
            t0 = time.monotonic()
            self._dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
            self.setup_seconds = time.monotonic() - t0
            info_sec = self._dwarf.debug_info_sec
            if info_sec is None:  # has_dwarf_info() counts a lone .eh_frame too
                raise TypeInfoError("vmlinux has no DWARF (.debug_info)", path)
        except TypeInfoError:
            self._file.close()
            raise
        except Exception as exc:  # pyelftools raises many kinds on bad input
            self._file.close()
            raise TypeInfoError(f"cannot read DWARF: {exc}", path) from None
        self._debug_info_size = info_sec.size
        self.index_path = os.path.join(index_dir(build_id), "types.json")
        self._names: dict[str, list[int]] = {}
        self._strings: tuple[Any, Any] | None = None  # the scan's name readers, made on first use
        self._next_cu = 0
        self._complete = False
        self._load_index()
        self._cache: dict[Hashable, Type] = {}
        self._enums: dict[str, tuple[Type, int]] | None = None
        self.scan_seconds = 0.0

    @classmethod
    def open(cls, path: str, word_size: int = 8) -> DwarfTypes:
        from ..symbols.vmlinux import VmlinuxFile

        image = VmlinuxFile(path)
        try:
            ids = image.build_ids()
        finally:
            image.close()
        key = ids[-1] if ids else f"nobuildid-{os.path.getsize(path)}-{int(os.path.getmtime(path))}"
        return cls(path, word_size, key)

    # -- the on-disk index -------------------------------------------------------
    def _load_index(self) -> None:
        try:
            with open(self.index_path) as f:
                data = json.load(f)
        except (OSError, ValueError):
            return
        if (
            data.get("version") != INDEX_VERSION
            or data.get("debug_info_size") != self._debug_info_size
        ):
            return
        self._names = {k: list(v) for k, v in data["names"].items()}
        self._next_cu = int(data["next_cu"])
        self._complete = bool(data["complete"])

    def _save_index(self) -> None:
        folder = os.path.dirname(self.index_path)
        try:
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".types-")
            with os.fdopen(fd, "w") as f:
                json.dump(
                    {
                        "version": INDEX_VERSION,
                        "vmlinux": self.path,
                        "debug_info_size": self._debug_info_size,
                        "next_cu": self._next_cu,
                        "complete": self._complete,
                        "names": self._names,
                    },
                    f,
                )
            os.replace(tmp, self.index_path)
        except OSError:
            pass  # a read-only cache only costs speed

    @property
    def index_complete(self) -> bool:
        return self._complete

    def _scan_next_cu(self) -> None:
        """Index the top-level type DIEs of the next unscanned CU."""
        if self._next_cu >= self._debug_info_size:
            self._complete = True
            return
        unit = self._next_cu
        if self._strings is None:
            dwarf = self._dwarf
            self._strings = (
                section_strings(dwarf.debug_str_sec, dwarf.get_string_from_table),
                section_strings(dwarf.debug_line_str_sec, dwarf.get_string_from_linetable),
            )
        size, dies = _type_dies(self._dwarf, unit, *self._strings)
        for offset, tag, name, declaration in dies:
            if name is None or declaration:
                continue
            key = f"{_SPACES[tag]} {name}"
            if key not in self._names:
                self._names[key] = [unit, offset]
        self._next_cu = unit + size
        if self._next_cu >= self._debug_info_size:
            self._complete = True

    def _find(self, key: str) -> list[int] | None:
        hit = self._names.get(key)
        if hit is not None or self._complete:
            return hit
        t0 = time.monotonic()
        scanned = 0
        while hit is None and not self._complete:
            self._scan_next_cu()
            scanned += 1
            hit = self._names.get(key)
        self.scan_seconds += time.monotonic() - t0
        if scanned:
            self._save_index()
        return hit

    def build_full_index(self) -> None:
        """Scan every CU now (minutes for a distribution kernel), then cache."""
        t0 = time.monotonic()
        while not self._complete:
            self._scan_next_cu()
        self.scan_seconds += time.monotonic() - t0
        self._save_index()

    # -- lookups -----------------------------------------------------------------
    def lookup(self, space: str, name: str) -> Type | None:
        if space not in ("struct", "union", "enum", "typedef", "base"):
            return None
        hit = self._find(f"{space} {name}")
        return self.type_by_key((hit[0], hit[1])) if hit else None

    def find_enumerator(self, name: str) -> tuple[Type, int] | None:
        """Only among enums already decoded or indexed (a full scan is costly)."""
        for key, (cu_off, die_off) in list(self._names.items()):
            if key.startswith("enum "):
                t = self.type_by_key((cu_off, die_off))
                if t and name in t.enumerators:
                    return t, t.enumerators[name]
        return None

    def type_by_key(self, key: Hashable) -> Type:
        if key is None:
            return VOID
        t = self._cache.get(key)
        if t is None:
            try:
                t = self._decode(key)
            except TypeInfoError:
                raise
            except Exception as exc:  # pyelftools on a malformed DIE
                raise TypeInfoError(f"cannot decode DWARF DIE {key}: {exc}", self.path) from None
            self._cache[key] = t
        return t

    # -- decoding ----------------------------------------------------------------
    def _die(self, key: Any) -> DIE:
        cu_off, die_off = key
        cu = self._dwarf.get_CU_at(cu_off)
        return cu.get_DIE_from_refaddr(die_off)

    def _ref(self, die: DIE, attr: str = "DW_AT_type") -> tuple[int, int] | None:
        a = die.attributes.get(attr)
        if a is None:
            return None
        if a.form in (
            "DW_FORM_ref1",
            "DW_FORM_ref2",
            "DW_FORM_ref4",
            "DW_FORM_ref8",
            "DW_FORM_ref_udata",
        ):
            return die.cu.cu_offset, die.cu.cu_offset + a.value
        target = die.get_DIE_from_attribute(attr)
        return target.cu.cu_offset, target.offset

    def _decode(self, key: Any) -> Type:
        die = self._die(key)
        tag = die.tag
        at = die.attributes
        name = at["DW_AT_name"].value.decode("latin-1") if "DW_AT_name" in at else None
        size = at["DW_AT_byte_size"].value if "DW_AT_byte_size" in at else None
        r = self.type_by_key
        tgt = self._ref(die)
        if tag == "DW_TAG_base_type":
            enc = at["DW_AT_encoding"].value if "DW_AT_encoding" in at else 0
            kind = "float" if enc == 4 else "int"
            return Type(kind, name, size, key=key, signed=enc in (5, 6, 0xD), resolve=r)
        if tag in ("DW_TAG_pointer_type", "DW_TAG_reference_type"):
            return Type("ptr", None, size or self.word_size, key=key, target_key=tgt, resolve=r)
        if tag in _QUALIFIERS:
            return Type(_QUALIFIERS[tag], name, None, key=key, target_key=tgt, resolve=r)
        if tag in ("DW_TAG_structure_type", "DW_TAG_union_type"):
            kind = "struct" if tag == "DW_TAG_structure_type" else "union"
            if "DW_AT_declaration" in at and name:
                full = self._find(f"{kind} {name}")
                if full:
                    return self.type_by_key((full[0], full[1]))
                return Type("fwd", name, None, key=key, resolve=r)
            members = [
                self._member(child, size)
                for child in die.iter_children()
                if child.tag == "DW_TAG_member"
            ]
            return Type(kind, name, size, key=key, members=members, resolve=r)
        if tag == "DW_TAG_enumeration_type":
            values = {}
            for child in die.iter_children():
                if child.tag == "DW_TAG_enumerator":
                    values[child.attributes["DW_AT_name"].value.decode("latin-1")] = (
                        child.attributes["DW_AT_const_value"].value
                    )
            signed = any(v < 0 for v in values.values())
            return Type("enum", name, size, key=key, enumerators=values, signed=signed, resolve=r)
        if tag == "DW_TAG_array_type":
            dims = []
            for child in die.iter_children():
                if child.tag == "DW_TAG_subrange_type":
                    ca = child.attributes
                    if "DW_AT_count" in ca:
                        dims.append(ca["DW_AT_count"].value)
                    elif "DW_AT_upper_bound" in ca:
                        dims.append(ca["DW_AT_upper_bound"].value + 1)
                    else:
                        dims.append(0)  # flexible array member
            dims = dims[:MAX_ARRAY_DIMS] or [0]
            # int a[2][3] is an array of 2 arrays of 3: build inner dims first
            inner_key: Hashable = tgt
            for i, n in enumerate(reversed(dims[1:])):
                sub_key = (key, "dim", len(dims) - 1 - i)
                self._cache[sub_key] = Type(
                    "array", None, None, key=sub_key, target_key=inner_key, length=n, resolve=r
                )
                inner_key = sub_key
            return Type(
                "array", None, None, key=key, target_key=inner_key, length=dims[0], resolve=r
            )
        if tag == "DW_TAG_subroutine_type":
            params = [
                Member(None, self._ref(c), 0, 0, r)
                for c in die.iter_children()
                if c.tag == "DW_TAG_formal_parameter"
            ]
            return Type(
                "func_proto", None, None, key=key, target_key=tgt, members=params, resolve=r
            )
        if tag == "DW_TAG_subprogram":
            return Type("func", name, None, key=key, target_key=tgt, resolve=r)
        if tag == "DW_TAG_unspecified_type":
            return VOID
        raise TypeInfoError(f"DWARF tag {tag} at {key[1]:#x} not handled", self.path)

    def _member(self, die: DIE, struct_size: int | None) -> Member:
        at = die.attributes
        name = at["DW_AT_name"].value.decode("latin-1") if "DW_AT_name" in at else None
        bit_size = at["DW_AT_bit_size"].value if "DW_AT_bit_size" in at else 0
        if "DW_AT_data_bit_offset" in at:
            bit_offset = at["DW_AT_data_bit_offset"].value
        else:
            loc = at.get("DW_AT_data_member_location")
            byte_off = 0
            if loc is not None:
                if isinstance(loc.value, int):
                    byte_off = loc.value
                elif isinstance(loc.value, list) and len(loc.value) >= 2 and loc.value[0] == 0x23:
                    byte_off = _uleb(loc.value[1:])  # DW_OP_plus_uconst
            bit_offset = byte_off * 8
            if bit_size and "DW_AT_bit_offset" in at:
                # DWARF 2/3 bitfields count from the storage unit's MSB
                unit = at["DW_AT_byte_size"].value if "DW_AT_byte_size" in at else 4
                bit_offset += unit * 8 - at["DW_AT_bit_offset"].value - bit_size
        return Member(name, self._ref(die), bit_offset, bit_size, self.type_by_key)


def _uleb(data: list[int]) -> int:
    value = shift = 0
    for b in data:
        value |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            break
    return value
