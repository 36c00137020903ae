"""A DWARF unit's header and abbreviation table, parsed from bytes.

pyelftools parses an abbreviation table through construct: ~15 ms for one
kernel CU's (each CU of a vmlinux has its own), which made finding one type
by scanning CUs cost seconds. Here both are a few loops over bytes; what is
not understood raises Unscannable and the caller falls back to pyelftools.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Literal, NamedTuple

from .leb128 import read_uleb


class Unscannable(Exception):
    """The unit needs pyelftools' own walk."""


DW_FORM_implicit_const = 0x21
DW_UT_compile, DW_UT_partial = 0x01, 0x03
_UT_EXTRA = {0x02: 8, 0x04: 8, 0x05: 8, 0x06: 8}  # type signature / dwo_id after the header
_UT_TYPE_OFFSET = frozenset({0x02, 0x06})  # type units: a type offset follows the signature
# the longest header: 64-bit initial length (12), version, unit type, address size,
# abbreviation offset (8), signature (8), type offset (8)
HEADER_BYTES = 40
MAX_ABBREV_TABLE = 16 << 20


class UnitHeader(NamedTuple):
    offset: int  # section offset of the unit
    size: int  # the whole unit, its initial length field included
    version: int
    unit_type: int  # DW_UT_*; DW_UT_compile before DWARF 5
    address_size: int
    offset_size: int  # 4 (32-bit DWARF) or 8 (64-bit DWARF)
    abbrev_offset: int
    die_offset: int  # section offset of the unit's first DIE


class Abbrev(NamedTuple):
    tag: int
    children: bool
    attrs: tuple[tuple[int, int], ...]  # (DW_AT_*, DW_FORM_*); implicit constants dropped


def unit_header(data: bytes, offset: int, little: bool = True) -> UnitHeader:
    """The header of the unit at section offset `offset`; `data` holds the
    section's bytes from there (HEADER_BYTES, or up to the section's end)."""
    order: Literal["little", "big"] = "little" if little else "big"
    length = int.from_bytes(data[0:4], order)
    at, offset_size = 4, 4
    if length == 0xFFFFFFFF:
        length, at, offset_size = int.from_bytes(data[4:12], order), 12, 8
    elif length >= 0xFFFFFFF0:
        raise Unscannable(f"unit at {offset:#x}: reserved initial length {length:#x}")
    size = at + length
    version = int.from_bytes(data[at : at + 2], order)
    at += 2
    if not 2 <= version <= 5:
        raise Unscannable(f"unit at {offset:#x}: DWARF version {version}")
    if version >= 5:
        unit_type, address_size = data[at], data[at + 1]
        abbrev = int.from_bytes(data[at + 2 : at + 2 + offset_size], order)
        at += 2 + offset_size + _UT_EXTRA.get(unit_type, 0)
        if unit_type in _UT_TYPE_OFFSET:
            at += offset_size
    else:
        unit_type = DW_UT_compile
        abbrev = int.from_bytes(data[at : at + offset_size], order)
        address_size = data[at + offset_size]
        at += offset_size + 1
    if len(data) < at or size < at:
        raise Unscannable(f"unit at {offset:#x}: header runs past its end")
    return UnitHeader(
        offset, size, version, unit_type, address_size, offset_size, abbrev, offset + at
    )


class _Truncated(Exception):
    pass


# One abbreviation, delimited by a regular expression: its code, then its body
# (tag, children flag, attribute and form numbers, an implicit constant after
# form 0x21, a 0 0 pair ending it). A body repeats from CU to CU under other
# codes: parsed once, it keys a cache.
_ULEB = rb"[\x80-\xff]*[\x00-\x7f]"
_NONZERO = rb"(?:[\x80-\xff]+[\x00-\x7f]|[\x01-\x7f])"
_ENTRY = re.compile(
    rb"([\x80-\xff]*[\x01-\x7f])("
    + _ULEB
    + rb"[\x00-\xff](?:"
    + _NONZERO
    + rb"(?:\x21"
    + _ULEB
    + rb"|[\x80-\xff]+[\x00-\x7f]|[\x01-\x20\x22-\x7f]))*)\x00\x00",
    re.DOTALL,
)
_BODIES: dict[bytes, Abbrev] = {}
MAX_CACHED_BODIES = 1 << 16


def _body(data: bytes) -> Abbrev:
    """The abbreviation whose body (from its tag) is `data`."""
    abbrev = _BODIES.get(data)
    if abbrev is None:
        if len(_BODIES) >= MAX_CACHED_BODIES:
            _BODIES.clear()
        tag, at = read_uleb(data, 0)
        children = data[at] != 0
        at += 1
        attrs = []
        while at < len(data):
            name, at = read_uleb(data, at)
            form, at = read_uleb(data, at)
            if form == DW_FORM_implicit_const:
                _, at = read_uleb(data, at)  # an SLEB: skipped alike; the value is in no DIE
            attrs.append((name, form))
        abbrev = _BODIES[data] = Abbrev(tag, children, tuple(attrs))
    return abbrev


def parse_abbrev_table(data: bytes) -> dict[int, Abbrev]:
    """The abbreviation table at the start of `data` (up to its 0 code);
    _Truncated when `data` ends first."""
    table: dict[int, Abbrev] = {}
    at = 0
    match = _ENTRY.match
    while True:
        entry = match(data, at)
        if entry is None:
            if at < len(data) and data[at] == 0:
                return table
            raise _Truncated  # or damaged: no well-formed entry, no end
        code = entry.group(1)
        table[code[0] if len(code) == 1 else read_uleb(code, 0)[0]] = _body(entry.group(2))
        at = entry.end()


def read_abbrev_table(
    read: Callable[[int, int], bytes], offset: int, section_size: int
) -> dict[int, Abbrev]:
    """The abbreviation table at `offset` of a .debug_abbrev of
    `section_size` bytes, fetched through read(offset, size) in growing
    pieces (a table is a few KiB; its length is known only at its end)."""
    if not 0 <= offset < section_size:
        raise Unscannable(f"abbreviation offset {offset:#x} is outside .debug_abbrev")
    chunk = 16 << 10
    while True:
        size = min(chunk, section_size - offset)
        try:
            return parse_abbrev_table(read(offset, size))
        except _Truncated:
            if size < chunk or chunk >= MAX_ABBREV_TABLE:
                raise Unscannable(f"abbreviation table at {offset:#x} has no end") from None
            chunk *= 4
