"""The top-level DIEs of a compile unit that hold code, found by skipping
through `.debug_info` with the CU's abbreviations, without decoding any
attribute.

srclines needs, per CU, its functions' code ranges: a handful of DIEs among
thousands (types, variables, declarations). pyelftools makes a DIE object
with every attribute decoded for each of them: ~0.2 s for a large kernel CU.
Skipping is a table look-up per attribute (each form's size), and subtrees
are jumped over by DW_AT_sibling where the producer wrote one. pyelftools then
decodes only the DIEs found here. Anything this scanner does not know (a form
it has no size for, a unit it cannot follow) raises Unscannable, and the
caller walks with pyelftools as before."""

from __future__ import annotations

from typing import Any, Literal


class Unscannable(Exception):
    """The unit needs pyelftools' own walk."""


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


def code_die_offsets(cu: Any, data: bytes, tags: tuple[str, ...]) -> list[int]:
    """Section offsets of the CU DIE's children whose tag is one of `tags`;
    `data` is the unit's bytes (from cu.cu_offset, cu.size long)."""
    return [off for off, _tag, _name, _decl in top_level_dies(cu, data, tags)]


def top_level_dies(
    cu: Any, data: bytes, tags: tuple[str, ...] | frozenset[str], names: bool = False
) -> list[tuple[int, str, str | None, bool]]:
    """(section offset, tag, DW_AT_name or None, has a DW_AT_declaration) of the
    CU DIE's children whose tag is one of `tags` (names decoded as latin-1
    only when asked); `data` is the unit's bytes (from cu.cu_offset, cu.size
    long)."""
    version = cu["version"]
    addr_size = cu["address_size"]
    offset_size = 8 if cu.dwarf_format() == 64 else 4
    little = cu.dwarfinfo.config.little_endian
    order: Literal["little", "big"] = "little" if little else "big"
    table = cu.get_abbrev_table()
    # per abbreviation: tag, children, skip steps, sibling attr index and size,
    # name attr index and form, declaration attr index and form
    plans: dict[int, tuple[Any, ...]] = {}
    for code, decl in table._abbrev_map.items():
        steps = []
        sibling = sibling_size = name = declaration = -1
        name_form = declaration_form = ""
        for i, spec in enumerate(decl["attr_spec"]):
            if spec.name == "DW_AT_sibling":
                if spec.form in _REF_SIZE:
                    sibling, sibling_size = i, _REF_SIZE[spec.form]
                elif spec.form != "DW_FORM_ref_udata":
                    raise Unscannable(f"sibling of form {spec.form}")
                else:
                    sibling, sibling_size = i, 0
            elif spec.name == "DW_AT_name":
                name, name_form = i, spec.form
            elif spec.name == "DW_AT_declaration":
                declaration, declaration_form = i, spec.form
            steps.append(_plan(spec.form, addr_size, offset_size, version))
        plans[code] = (
            decl["tag"],
            decl.has_children(),
            steps,
            sibling,
            sibling_size,
            name,
            name_form,
            declaration,
            declaration_form,
        )
    n = len(data)
    pos = cu.cu_die_offset - cu.cu_offset
    info = cu.dwarfinfo
    strings = getattr(getattr(info.debug_str_sec, "stream", None), "cstring", None)
    line_strings = getattr(getattr(info.debug_line_str_sec, "stream", None), "cstring", None)
    # attribute value positions of the DIE last parsed: name, declaration
    found = [-1, -1]

    def uleb(at: int) -> tuple[int, int]:
        value = shift = 0
        while True:
            byte = data[at]
            at += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value, at

    def die(at: int) -> tuple[int, str, bool, int, int]:
        """(code, tag, has children, sibling: CU-relative offset or -1, where
        the DIE ends) for the DIE at `at`: code 0 is a null entry."""
        code, at = uleb(at)
        if code == 0:
            return 0, "", False, -1, at
        plan = plans.get(code)
        if plan is None:
            raise Unscannable(f"abbreviation {code} is not in the table")
        tag, children, steps, sibling_index, sibling_size, name_index, _, decl_index, _ = plan
        sibling = -1
        found[0] = found[1] = -1
        for i, (kind, size) in enumerate(steps):
            if i == sibling_index:
                if sibling_size:
                    sibling = int.from_bytes(data[at : at + sibling_size], order)
                else:
                    sibling, _ = uleb(at)
            elif i == name_index:
                found[0] = at
            elif i == decl_index:
                found[1] = at
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
                length, at = uleb(at)
                at += length
        return code, tag, children, sibling, at

    def name_of(code: int) -> str | None:
        at, form = found[0], plans[code][6]
        if at < 0:
            return None
        if form == "DW_FORM_string":
            return data[at : data.index(b"\0", at)].decode("latin-1")
        if form in ("DW_FORM_strp", "DW_FORM_line_strp"):
            offset = int.from_bytes(data[at : at + offset_size], order)
            strp = form == "DW_FORM_strp"
            section = strings if strp else line_strings
            if section is not None:  # a kvmcore.symbols.elfmap stream: read in place
                return bytes(section(offset)).decode("latin-1")
            info = cu.dwarfinfo
            raw = (
                info.get_string_from_table(offset)
                if strp
                else info.get_string_from_linetable(offset)
            )
            return None if raw is None else bytes(raw).decode("latin-1")
        raise Unscannable(f"name of form {form}")

    def declared(code: int) -> bool:
        return found[1] >= 0  # the attribute is there (pyelftools' test too)

    def skip_children(at: int, depth: int) -> int:
        """Where the children list starting at `at` ends (past its null entry)."""
        if depth > 256:
            raise Unscannable("DIE tree deeper than 256")
        while True:
            code, _tag, children, sibling, at = die(at)
            if code == 0:
                return at
            if children:
                at = sibling if sibling > 0 else skip_children(at, depth + 1)

    try:
        code, _tag, children, _sibling, pos = die(pos)
        if code == 0 or not children:
            return []
        out: list[tuple[int, str, str | None, bool]] = []
        while pos < n:
            start = pos
            code, tag, children, sibling, pos = die(pos)
            if code == 0:
                break
            if tag in tags:
                out.append(
                    (cu.cu_offset + start, tag, name_of(code) if names else None, declared(code))
                )
            if children:
                pos = sibling if sibling > 0 else skip_children(pos, 1)
        return out
    except (IndexError, ValueError) as exc:
        raise Unscannable(f"unit runs past its end: {exc}") from None
