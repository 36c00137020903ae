"""The top-level DIEs of a compile unit (its functions for srclines, its
named types for the DWARF type index of a kernel without BTF), found by
skipping through `.debug_info` with the unit's abbreviations, without
decoding any attribute but the names asked for.

pyelftools makes a DIE object with every attribute decoded for each DIE:
~0.2 s for a large kernel CU, which holds a handful of functions among
thousands of DIEs (types, variables, declarations). Skipping is a table
look-up per attribute (each form's size), or one addition for a DIE whose
attributes all have a fixed size (most); subtrees are jumped over by
DW_AT_sibling where the producer wrote one. The unit's header and
abbreviations come from kvmcore.symbols.dwarfunit. Anything this scanner
does not know (a form it has no size for, a unit it cannot follow) raises
Unscannable, and the caller walks with pyelftools as before."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Literal

from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG

from .dwarfunit import Abbrev, UnitHeader, Unscannable, read_abbrev_table
from .leb128 import read_uleb

__all__ = [
    "Unscannable",
    "code_die_offsets",
    "section_strings",
    "top_level_dies",
    "unit_top_level_dies",
]

# forms of a fixed size (DW_FORM_addr, ref_addr and the offset-sized ones depend on the unit)
_FIXED = {
    "DW_FORM_data1": 1,
    "DW_FORM_ref1": 1,
    "DW_FORM_flag": 1,
    "DW_FORM_strx1": 1,
    "DW_FORM_addrx1": 1,
    "DW_FORM_data2": 2,
    "DW_FORM_ref2": 2,
    "DW_FORM_strx2": 2,
    "DW_FORM_addrx2": 2,
    "DW_FORM_strx3": 3,
    "DW_FORM_addrx3": 3,
    "DW_FORM_data4": 4,
    "DW_FORM_ref4": 4,
    "DW_FORM_strx4": 4,
    "DW_FORM_addrx4": 4,
    "DW_FORM_data8": 8,
    "DW_FORM_ref8": 8,
    "DW_FORM_ref_sig8": 8,
    "DW_FORM_data16": 16,
    "DW_FORM_flag_present": 0,
    "DW_FORM_implicit_const": 0,
}
_LEB = frozenset(
    {
        "DW_FORM_sdata",
        "DW_FORM_udata",
        "DW_FORM_ref_udata",
        "DW_FORM_strx",
        "DW_FORM_addrx",
        "DW_FORM_rnglistx",
        "DW_FORM_loclistx",
        "DW_FORM_GNU_addr_index",
        "DW_FORM_GNU_str_index",
    }
)
_OFFSET = frozenset(
    {
        "DW_FORM_strp",
        "DW_FORM_line_strp",
        "DW_FORM_sec_offset",
        "DW_FORM_strp_sup",
        "DW_FORM_GNU_ref_alt",
        "DW_FORM_GNU_strp_alt",
    }
)
_BLOCK_LENGTH = {"DW_FORM_block1": 1, "DW_FORM_block2": 2, "DW_FORM_block4": 4}
_LEB_BLOCK = frozenset({"DW_FORM_block", "DW_FORM_exprloc"})
# a sibling reference: CU-relative, except ref_addr (section offset)
_REF_SIZE = {"DW_FORM_ref1": 1, "DW_FORM_ref2": 2, "DW_FORM_ref4": 4, "DW_FORM_ref8": 8}
# what an attribute's skipping needs: 0 fixed size, 1 LEB, 2 cstring, 3 block with
# a fixed-size length, 4 block with a LEB length
_SIZE, _ULEB, _CSTR, _BLOCK, _LBLOCK = 0, 1, 2, 3, 4


def _plan(form: str, addr_size: int, offset_size: int, version: int) -> tuple[int, int]:
    if form in _FIXED:
        return _SIZE, _FIXED[form]
    if form == "DW_FORM_addr":
        return _SIZE, addr_size
    if form == "DW_FORM_ref_addr":
        return _SIZE, addr_size if version == 2 else offset_size
    if form in _OFFSET:
        return _SIZE, offset_size
    if form in _LEB:
        return _ULEB, 0
    if form == "DW_FORM_string":
        return _CSTR, 0
    if form in _BLOCK_LENGTH:
        return _BLOCK, _BLOCK_LENGTH[form]
    if form in _LEB_BLOCK:
        return _LBLOCK, 0
    raise Unscannable(f"form {form}")


_FORM_NAMES = {v: k for k, v in ENUM_DW_FORM.items() if isinstance(v, int)}
_TAG_NAMES = {v: k for k, v in ENUM_DW_TAG.items() if isinstance(v, int)}
_TAG_CODES = {k: v for k, v in ENUM_DW_TAG.items() if isinstance(v, int)}
_AT_SIBLING, _AT_NAME, _AT_DECLARATION = (
    ENUM_DW_AT[a] for a in ("DW_AT_sibling", "DW_AT_name", "DW_AT_declaration")
)
_FORM_STRING, _FORM_STRP, _FORM_LINE_STRP = (
    ENUM_DW_FORM[f] for f in ("DW_FORM_string", "DW_FORM_strp", "DW_FORM_line_strp")
)
# a sibling reference's size by form (CU-relative); 0: an ULEB (ref_udata)
_SIBLING_SIZE = {ENUM_DW_FORM[f]: n for f, n in _REF_SIZE.items()}
_SIBLING_SIZE[ENUM_DW_FORM["DW_FORM_ref_udata"]] = 0


class _Plan:
    """How to step over one abbreviation's DIEs: `fixed` is the DIE's size
    after its code when every attribute has a fixed size (then `sibling`,
    `name` and `declaration` are byte positions in it), else -1 and `steps`
    say how, with those three as attribute indexes. -1: no such attribute."""

    __slots__ = (
        "tag",
        "tag_name",
        "children",
        "fixed",
        "steps",
        "sibling",
        "sibling_size",
        "name",
        "name_form",
        "declaration",
    )

    def __init__(self, abbrev: Abbrev, addr_size: int, offset_size: int, version: int) -> None:
        self.tag, self.children = abbrev.tag, abbrev.children
        self.tag_name: str | int = _TAG_NAMES.get(abbrev.tag, abbrev.tag)
        self.sibling = self.name = self.declaration = -1
        self.sibling_size = self.name_form = 0
        steps = []
        for i, (attr, form) in enumerate(abbrev.attrs):
            name = _FORM_NAMES.get(form)
            if name is None:
                raise Unscannable(f"form {form:#x}")
            if attr == _AT_SIBLING:
                if form not in _SIBLING_SIZE:
                    raise Unscannable(f"sibling of form {name}")
                self.sibling, self.sibling_size = i, _SIBLING_SIZE[form]
            elif attr == _AT_NAME:
                self.name, self.name_form = i, form
            elif attr == _AT_DECLARATION:
                self.declaration = i
            steps.append(_plan(name, addr_size, offset_size, version))
        self.steps = steps
        self.fixed = -1
        if all(kind == _SIZE for kind, _ in steps):
            positions = [sum(size for _, size in steps[:i]) for i in range(len(steps) + 1)]
            self.fixed = positions[-1]
            self.sibling, self.name, self.declaration = (
                positions[i] if i >= 0 else -1 for i in (self.sibling, self.name, self.declaration)
            )


_PLANS: dict[tuple[Abbrev, int, int, int], _Plan] = {}
MAX_CACHED_PLANS = 1 << 16


def _plan_for(abbrev: Abbrev, addr_size: int, offset_size: int, version: int) -> _Plan:
    """The plan of an abbreviation, shared between units: the CUs of one
    kernel repeat the same few hundred abbreviations under other codes."""
    key = (abbrev, addr_size, offset_size, version)
    plan = _PLANS.get(key)
    if plan is None:
        if len(_PLANS) >= MAX_CACHED_PLANS:
            _PLANS.clear()
        plan = _PLANS[key] = _Plan(abbrev, addr_size, offset_size, version)
    return plan


def code_die_offsets(cu: Any, data: bytes, tags: tuple[str, ...]) -> list[int]:
    """Section offsets of the CU DIE's children whose tag is one of `tags`;
    `data` is the unit's bytes (from cu.cu_offset, cu.size long)."""
    return [off for off, _tag, _name, _decl in top_level_dies(cu, data, tags)]


def _stream_reader(stream: Any) -> Callable[[int, int], bytes]:
    def read(offset: int, size: int) -> bytes:
        stream.seek(offset)
        return bytes(stream.read(size))

    return read


def section_strings(
    section: Any, fallback: Callable[[int], bytes | None]
) -> Callable[[int], str] | None:
    """The string at an offset of a string section (pyelftools' descriptor
    `section`, None when the file has none), decoded as latin-1 and kept:
    the CUs of a kernel name the same types over and over. Read in place
    from a kvmcore.symbols.elfmap stream, else through `fallback` (pyelftools')."""
    if section is None:
        return None
    raw: Callable[[int], bytes | None] = getattr(section.stream, "cstring", None) or fallback
    seen: dict[int, str] = {}

    def string(offset: int) -> str:
        text = seen.get(offset)
        if text is None:
            text = seen[offset] = bytes(raw(offset) or b"").decode("latin-1")
        return text

    return string


def top_level_dies(
    cu: Any, data: bytes, tags: Iterable[str], names: bool = False
) -> list[tuple[int, str | int, str | None, bool]]:
    """unit_top_level_dies for a pyelftools CompileUnit `cu`; `data` is the
    unit's bytes (from cu.cu_offset, cu.size long)."""
    info = cu.dwarfinfo
    if cu.header.get("unit_type", "DW_UT_compile") not in ("DW_UT_compile", "DW_UT_partial"):
        raise Unscannable(f"unit type {cu.header.get('unit_type')}")
    header = UnitHeader(
        cu.cu_offset,
        cu.size,
        cu["version"],
        1,
        cu["address_size"],
        8 if cu.dwarf_format() == 64 else 4,
        cu["debug_abbrev_offset"],
        cu.cu_die_offset,
    )
    abbrev = info.debug_abbrev_sec
    abbrevs = read_abbrev_table(_stream_reader(abbrev.stream), header.abbrev_offset, abbrev.size)

    return unit_top_level_dies(
        header,
        data,
        abbrevs,
        tags,
        info.config.little_endian,
        section_strings(info.debug_str_sec, info.get_string_from_table) if names else None,
        section_strings(info.debug_line_str_sec, info.get_string_from_linetable) if names else None,
        names=names,
    )


def unit_top_level_dies(
    header: UnitHeader,
    data: bytes,
    abbrevs: dict[int, Abbrev],
    tags: Iterable[str],
    little: bool,
    strings: Callable[[int], str] | None = None,
    line_strings: Callable[[int], str] | None = None,
    names: bool = False,
) -> list[tuple[int, str | int, str | None, bool]]:
    """(section offset, tag, DW_AT_name or None, has a DW_AT_declaration) of the
    unit DIE's children whose tag is one of `tags` (names only when asked:
    `strings` and `line_strings` give the string at an offset of .debug_str
    and .debug_line_str, see section_strings); `data` is the unit's bytes
    (from header.offset, header.size long). A tag is a DW_TAG_* name, or its
    number when pyelftools has no name for it."""
    if header.unit_type not in (1, 3):
        raise Unscannable(f"unit type {header.unit_type:#x}")
    order: Literal["little", "big"] = "little" if little else "big"
    offset_size, addr_size, version = header.offset_size, header.address_size, header.version
    # built on first use: most abbreviations are of DIEs nested in subtrees
    # that DW_AT_sibling jumps over
    plans: dict[int, _Plan] = {}
    wanted = {_TAG_CODES[t] for t in tags if t in _TAG_CODES}

    def plan_of(code: int) -> _Plan:
        abbrev = abbrevs.get(code)
        if abbrev is None:
            raise Unscannable(f"abbreviation {code} is not in the table")
        plan = plans[code] = _plan_for(abbrev, addr_size, offset_size, version)
        return plan

    def walk(at: int, plan: _Plan) -> tuple[int, int, int, int]:
        """(sibling: unit offset or -1, name position, declaration position,
        where the DIE ends) of a DIE of a variable-size abbreviation whose
        attributes start at `at`."""
        sibling = name = declaration = -1
        for i, (kind, size) in enumerate(plan.steps):
            if i == plan.sibling:
                if plan.sibling_size:
                    sibling = int.from_bytes(data[at : at + plan.sibling_size], order)
                else:
                    sibling, _ = read_uleb(data, at)
            elif i == plan.name:
                name = at
            elif i == plan.declaration:
                declaration = at
            if kind == _SIZE:
                at += size
            elif kind == _ULEB:
                while data[at] & 0x80:
                    at += 1
                at += 1
            elif kind == _CSTR:
                at = data.index(b"\0", at) + 1
            elif kind == _BLOCK:
                at += size + int.from_bytes(data[at : at + size], order)
            else:
                length, at = read_uleb(data, at)
                at += length
        return sibling, name, declaration, at

    def die(at: int) -> tuple[_Plan | None, int, int, int, int]:
        """(plan, sibling, name position, declaration position, end) of the
        DIE at `at`: plan None for a null entry. The scan's loop below has
        its fixed-size case inline (most DIEs; a call each costs)."""
        code = data[at]
        if code < 0x80:
            at += 1
        else:
            code, at = read_uleb(data, at)
        if code == 0:
            return None, -1, -1, -1, at
        plan = plans.get(code) or plan_of(code)
        if plan.fixed < 0:
            sibling, name, declaration, end = walk(at, plan)
            return plan, sibling, name, declaration, end
        sibling = -1
        if plan.sibling >= 0:
            s = at + plan.sibling
            sibling = int.from_bytes(data[s : s + plan.sibling_size], order)
        name = at + plan.name if plan.name >= 0 else -1
        declaration = at + plan.declaration if plan.declaration >= 0 else -1
        return plan, sibling, name, declaration, at + plan.fixed

    def name_at(at: int, form: int) -> str | None:
        if form == _FORM_STRING:
            return data[at : data.index(b"\0", at)].decode("latin-1")
        if form in (_FORM_STRP, _FORM_LINE_STRP):
            offset = int.from_bytes(data[at : at + offset_size], order)
            section = strings if form == _FORM_STRP else line_strings
            return None if section is None else section(offset)
        raise Unscannable(f"name of form {_FORM_NAMES.get(form, form)}")

    def skip_children(at: int, depth: int) -> int:
        """Where the children list starting at `at` ends (past its null entry)."""
        if depth > 256:
            raise Unscannable("DIE tree deeper than 256")
        while True:
            plan, sibling, _name, _decl, at = die(at)
            if plan is None:
                return at
            if plan.children:  # a sibling not past the DIE is damage: walk instead
                at = sibling if sibling > at else skip_children(at, depth + 1)

    n = len(data)
    try:
        plan, _sibling, _name, _decl, pos = die(header.die_offset - header.offset)
        if plan is None or not plan.children:
            return []
        out: list[tuple[int, str | int, str | None, bool]] = []
        while pos < n:
            start = pos
            code = data[pos]
            if code < 0x80:
                pos += 1
            else:
                code, pos = read_uleb(data, pos)
            if code == 0:
                break
            plan = plans.get(code) or plan_of(code)
            if plan.fixed >= 0:  # the die() above, inline
                sibling = name = declaration = -1
                if plan.children and plan.sibling >= 0:
                    s = pos + plan.sibling
                    sibling = int.from_bytes(data[s : s + plan.sibling_size], order)
                if plan.name >= 0:
                    name = pos + plan.name
                declaration = plan.declaration
                pos += plan.fixed
            else:
                sibling, name, declaration, pos = walk(pos, plan)
            if plan.tag in wanted:
                text = None
                if names and name >= 0:
                    if plan.name_form == _FORM_STRP and strings is not None:  # most: inline
                        text = strings(int.from_bytes(data[name : name + offset_size], order))
                    else:
                        text = name_at(name, plan.name_form)
                out.append((header.offset + start, plan.tag_name, text, declaration >= 0))
            if plan.children:
                pos = sibling if sibling > pos else skip_children(pos, 1)
        return out
    except (IndexError, ValueError) as exc:
        raise Unscannable(f"unit runs past its end: {exc}") from None
