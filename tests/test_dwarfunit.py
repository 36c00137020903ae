"""A DWARF unit's header and abbreviation table as kvmcore.symbols.dwarfunit
parses them (the DWARF type index of a kernel without BTF reads them
itself, not through pyelftools), against pyelftools' own parse of the same
units of real -dbg vmlinux files: i386 and armhf (the kernels without BTF,
32-bit DWARF), x86_64 and s390x (64-bit addresses, big-endian)."""

from __future__ import annotations

import itertools

import pytest
from elftools.dwarf.enums import ENUM_DW_AT, ENUM_DW_FORM, ENUM_DW_TAG

from kvmcore.symbols.dwarfscan import Unscannable
from kvmcore.symbols.dwarfunit import (
    HEADER_BYTES,
    Abbrev,
    parse_abbrev_table,
    read_abbrev_table,
    unit_header,
)
from kvmcore.symbols.elfmap import mapped_elf_file

SIDS = ["i386-pae", "armhf", "x86_64-kaslr", "s390x"]


def _number(enum: dict, value) -> int:
    return value if isinstance(value, int) else enum[value]


def _theirs(table) -> dict[int, Abbrev]:
    """pyelftools' AbbrevTable as dwarfunit's Abbrevs (numbers, not names)."""
    out = {}
    for code, decl in table._abbrev_map.items():
        attrs = tuple(
            (_number(ENUM_DW_AT, spec.name), _number(ENUM_DW_FORM, spec.form))
            for spec in decl["attr_spec"]
        )
        out[code] = Abbrev(_number(ENUM_DW_TAG, decl["tag"]), decl.has_children(), attrs)
    return out


@pytest.mark.parametrize("sid", SIDS)
def test_headers_and_abbreviations_are_pyelftools_ones(samples, sid):
    """Every 50th unit: the same header fields and abbreviation table."""
    with open(str(samples.vmlinux(sid)), "rb") as f:
        dwarf = mapped_elf_file(f).get_dwarf_info(relocate_dwarf_sections=False)
        info, abbrev = dwarf.debug_info_sec, dwarf.debug_abbrev_sec
        little = dwarf.config.little_endian

        def read(stream, offset, size):
            stream.seek(offset)
            return stream.read(size)

        checked = implicit = 0
        for cu in itertools.islice(dwarf.iter_CUs(), 0, None, 50):
            header = unit_header(
                read(info.stream, cu.cu_offset, HEADER_BYTES), cu.cu_offset, little
            )
            assert header.size == cu.size
            assert header.version == cu["version"]
            assert header.address_size == cu["address_size"]
            assert header.offset_size == (8 if cu.dwarf_format() == 64 else 4)
            assert header.abbrev_offset == cu["debug_abbrev_offset"]
            assert header.die_offset == cu.cu_die_offset
            ours = read_abbrev_table(
                lambda at, n: read(abbrev.stream, at, n), header.abbrev_offset, abbrev.size
            )
            assert ours == _theirs(cu.get_abbrev_table()), f"CU at {cu.cu_offset:#x}"
            implicit += any(
                form == ENUM_DW_FORM["DW_FORM_implicit_const"]
                for a in ours.values()
                for _, form in a.attrs
            )
            checked += 1
        assert checked >= 20
        if header.version >= 5:  # GCC's DWARF 5 names a CU's file by implicit constant
            assert implicit, "no implicit_const form seen: the parse of one is untested"


def test_a_table_with_no_end_is_unscannable():
    """A table cut short (no 0 code before the section ends) or damaged (a
    0 tag with attributes missing their 0 0 end) is refused, not guessed:
    the caller falls back to pyelftools. Bytes built by hand from the
    DWARF 5 layout (code, tag, children flag, name/form pairs, 0 0)."""
    one = bytes([1, 0x13, 1, 0x03, 0x0E, 0x0B, 0x0B, 0, 0])  # struct: name strp, byte_size data1
    assert parse_abbrev_table(one + b"\0") == {1: Abbrev(0x13, True, ((0x03, 0x0E), (0x0B, 0x0B)))}
    with pytest.raises(Unscannable):
        read_abbrev_table(lambda at, n: one[at : at + n], 0, len(one))
    with pytest.raises(Unscannable):
        read_abbrev_table(lambda at, n: (one + b"\0")[at : at + n], len(one) + 1, len(one) + 1)
    # a code of two LEB bytes (300) and an implicit constant (form 0x21, SLEB -2)
    two = bytes([0xAC, 0x02, 0x34, 0, 0x3A, 0x21, 0x7E, 0x03, 0x08, 0, 0, 0])
    assert parse_abbrev_table(two) == {300: Abbrev(0x34, False, ((0x3A, 0x21), (0x03, 0x08)))}


def test_a_header_of_an_unknown_version_is_unscannable():
    """Generated from the unit header layout: version 6 does not exist."""
    data = (100).to_bytes(4, "little") + (6).to_bytes(2, "little") + bytes(HEADER_BYTES)
    with pytest.raises(Unscannable):
        unit_header(data, 0, True)
