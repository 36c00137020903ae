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


def test_damaged_units_are_scanned_or_refused(samples):
    """A real i386 unit with bytes overwritten at random (a fixed seed), its
    header, abbreviations and DIEs: the scanner returns DIEs or raises
    Unscannable (the caller then walks with pyelftools), nothing else, and
    comes back (sibling references that do not move forward are walked
    instead of followed)."""
    import random

    from kvmcore.symbols.dwarfscan import unit_top_level_dies
    from kvmcore.types.dwarf import _TYPE_TAGS

    with open(str(samples.vmlinux("i386-pae")), "rb") as f:
        dwarf = mapped_elf_file(f).get_dwarf_info(relocate_dwarf_sections=False)
        cu = next(itertools.islice(dwarf.iter_CUs(), 3, None))
        info, abbrev = dwarf.debug_info_sec.stream, dwarf.debug_abbrev_sec
        info.seek(cu.cu_offset)
        unit = info.read(cu.size)
        abbrev.stream.seek(cu["debug_abbrev_offset"])
        table = abbrev.stream.read(4096)
    tags = _TYPE_TAGS | {"DW_TAG_subprogram", "DW_TAG_variable"}
    rng = random.Random(18)
    outcomes = set()
    for _ in range(300):
        data, abbrevs = bytearray(unit), bytearray(table)
        for _ in range(rng.randint(1, 8)):
            target = data if rng.random() < 0.8 else abbrevs
            target[rng.randrange(len(target))] = rng.randrange(256)
        try:
            header = unit_header(bytes(data[:HEADER_BYTES]), cu.cu_offset, True)
            parsed = read_abbrev_table(
                lambda at, n, a=bytes(abbrevs): a[at : at + n], 0, len(abbrevs)
            )
            dies = unit_top_level_dies(
                header, bytes(data[: header.size]), parsed, tags, True, lambda o: "", names=True
            )
            assert isinstance(dies, list)
            outcomes.add("scanned")
        except Unscannable:
            outcomes.add("refused")
    assert outcomes == {"scanned", "refused"}


def _hand_built_unit(sibling: int | None) -> tuple[bytes, bytes]:
    """(.debug_info, .debug_abbrev) of one DWARF 4 unit, built from the
    format's layout: a CU holding struct s { m } (its DW_AT_sibling is
    `sibling`, the right one when None) and a base type int."""
    abbrev = bytes(
        [1, 0x11, 1, 0x03, 0x08, 0, 0]  # compile_unit, children: name string
        + [2, 0x13, 1, 0x01, 0x13, 0x03, 0x08, 0, 0]  # struct: sibling ref4, name
        + [3, 0x0D, 0, 0x03, 0x08, 0, 0]  # member: name
        + [4, 0x24, 0, 0x03, 0x08, 0x0B, 0x0B, 0, 0]  # base type: name, byte_size
        + [0]
    )
    cu_die = b"\x01a.c\0"
    struct_at = 11 + len(cu_die)
    base_at = struct_at + 1 + 4 + 2 + 3 + 1  # code, sibling, "s", member "m", null
    ref = base_at if sibling is None else sibling
    body = cu_die + b"\x02" + ref.to_bytes(4, "little") + b"s\0\x03m\0\0" + b"\x04int\0\x04" + b"\0"
    header = (len(body) + 7).to_bytes(4, "little") + b"\x04\0" + bytes(4) + b"\x04"
    return header + body, abbrev


@pytest.mark.parametrize("sibling", [None, 0, 5, 16, 17])
def test_a_sibling_that_does_not_move_forward_is_walked_instead(sibling):
    """A DW_AT_sibling at or before its own DIE (damage: following it would
    loop) is not followed; the DIE's children are walked, and the scan
    finds the same DIEs as with the right sibling. Fixture: a unit built by
    hand from the DWARF 4 layout (_hand_built_unit)."""
    import signal

    from kvmcore.symbols.dwarfscan import unit_top_level_dies

    info, abbrev = _hand_built_unit(sibling)
    header = unit_header(info[:HEADER_BYTES], 0, True)
    assert header.size == len(info)
    table = parse_abbrev_table(abbrev)

    def hung(*_):
        raise AssertionError("the scan did not come back: it followed a sibling backwards")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        dies = unit_top_level_dies(
            header,
            info,
            table,
            ("DW_TAG_structure_type", "DW_TAG_base_type"),
            True,
            names=True,
        )
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    struct_at = 11 + 5
    assert dies == [
        (struct_at, "DW_TAG_structure_type", "s", False),
        (struct_at + 11, "DW_TAG_base_type", "int", False),
    ]
