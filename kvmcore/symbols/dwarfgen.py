"""A small DWARF 4 writer: `.debug_info`, `.debug_abbrev` and `.debug_str` for
one compilation unit, built a DIE at a time (standard library only).

`DieWriter.die(tag, attrs, children=..., key=...)` appends a DIE; `attrs` is a
sequence of (DW_AT_x, DW_FORM_y, value). Each distinct (tag, children,
attribute/form list) gets one abbreviation. A DW_FORM_ref4 value is a key
(any hashable) naming the DIE made with that `key=`; references are written
as placeholders and patched in `finish()`, so DIEs may refer forward (a
struct holding a pointer to itself). `end()` closes the children of the last
DIE opened with children=True. Strings (DW_FORM_strp) are deduplicated in
`.debug_str`.

Only the forms the symbol file needs are encoded: strp, string, ref4, udata,
sdata, data1/2/4/8, flag_present, exprloc, addr.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Sequence
from typing import Any

from .cfi import sleb, uleb

# tags (DWARF 4, section 7.5.3)
DW_TAG_array_type = 0x01
DW_TAG_enumeration_type = 0x04
DW_TAG_formal_parameter = 0x05
DW_TAG_member = 0x0D
DW_TAG_pointer_type = 0x0F
DW_TAG_compile_unit = 0x11
DW_TAG_structure_type = 0x13
DW_TAG_subroutine_type = 0x15
DW_TAG_typedef = 0x16
DW_TAG_union_type = 0x17
DW_TAG_unspecified_parameters = 0x18
DW_TAG_variable = 0x34
DW_TAG_volatile_type = 0x35
DW_TAG_restrict_type = 0x37
DW_TAG_base_type = 0x24
DW_TAG_const_type = 0x26
DW_TAG_enumerator = 0x28
DW_TAG_subrange_type = 0x21

# attributes (section 7.5.4)
DW_AT_location = 0x02
DW_AT_name = 0x03
DW_AT_byte_size = 0x0B
DW_AT_bit_size = 0x0D
DW_AT_low_pc = 0x11
DW_AT_high_pc = 0x12
DW_AT_language = 0x13
DW_AT_producer = 0x25
DW_AT_prototyped = 0x27
DW_AT_count = 0x37
DW_AT_data_member_location = 0x38
DW_AT_declaration = 0x3C
DW_AT_encoding = 0x3E
DW_AT_external = 0x3F
DW_AT_type = 0x49
DW_AT_const_value = 0x1C
DW_AT_data_bit_offset = 0x6B

# forms (section 7.5.6)
DW_FORM_addr = 0x01
DW_FORM_data2 = 0x05
DW_FORM_data4 = 0x06
DW_FORM_data8 = 0x07
DW_FORM_string = 0x08
DW_FORM_data1 = 0x0B
DW_FORM_sdata = 0x0D
DW_FORM_strp = 0x0E
DW_FORM_udata = 0x0F
DW_FORM_ref4 = 0x13
DW_FORM_exprloc = 0x18
DW_FORM_flag_present = 0x19

# base type encodings (section 7.8)
DW_ATE_boolean = 0x02
DW_ATE_float = 0x04
DW_ATE_signed = 0x05
DW_ATE_signed_char = 0x06
DW_ATE_unsigned = 0x07
DW_ATE_unsigned_char = 0x08

DW_LANG_C89 = 0x01
DW_LANG_C99 = 0x0C

# location operations
DW_OP_addr = 0x03
DW_OP_const4u = 0x0C
DW_OP_const8u = 0x0E

DWARF_VERSION = 4


#: (DW_AT_x, DW_FORM_y, value): the value's type depends on the form
Attr = tuple[int, int, Any]

#: header bytes of a 32-bit DWARF 4 compilation unit: unit_length (4),
#: version (2), debug_abbrev_offset (4), address_size (1)
CU_HEADER_SIZE = 11


class DieWriter:
    """One compilation unit's DIEs, abbreviations and strings."""

    def __init__(self, address_size: int = 8, byteorder: str = "<") -> None:
        if address_size not in (4, 8):
            raise ValueError(f"address size {address_size}")
        self.address_size = address_size
        self._e = byteorder
        self._body = bytearray()
        self._abbrev = bytearray()
        self._codes: dict[tuple[int, bool, tuple[tuple[int, int], ...]], int] = {}
        self._str = bytearray()
        self._str_off: dict[str, int] = {}
        self._offsets: dict[Hashable, int] = {}
        self._patches: list[tuple[int, Hashable]] = []
        self._depth = 0
        self.dies = 0
        self._u16 = struct.Struct(byteorder + "H")
        self._u32 = struct.Struct(byteorder + "I")
        self._u64 = struct.Struct(byteorder + "Q")

    # -- strings and references ---------------------------------------------------
    def string(self, s: str) -> int:
        """Offset of `s` in .debug_str (added once)."""
        off = self._str_off.get(s)
        if off is None:
            off = len(self._str)
            self._str += s.encode("utf-8", "replace") + b"\0"
            self._str_off[s] = off
        return off

    def has(self, key: Hashable) -> bool:
        return key in self._offsets

    def offset_of(self, key: Hashable) -> int | None:
        """The DIE's offset from the start of the compilation unit."""
        return self._offsets.get(key)

    # -- DIEs -------------------------------------------------------------------
    def _code(self, tag: int, children: bool, shape: tuple[tuple[int, int], ...]) -> int:
        k = (tag, children, shape)
        code = self._codes.get(k)
        if code is None:
            code = len(self._codes) + 1
            self._codes[k] = code
            a = self._abbrev
            a += uleb(code) + uleb(tag) + bytes((1 if children else 0,))
            for at, form in shape:
                a += uleb(at) + uleb(form)
            a += b"\0\0"
        return code

    def die(
        self,
        tag: int,
        attrs: Sequence[Attr] = (),
        children: bool = False,
        key: Hashable = None,
    ) -> int:
        """Append a DIE; returns its offset in the unit. With children=True,
        the DIEs that follow are its children until `end()`."""
        body = self._body
        offset = CU_HEADER_SIZE + len(body)
        if key is not None:
            if key in self._offsets:
                raise ValueError(f"DIE key {key!r} used twice")
            self._offsets[key] = offset
        shape = tuple((at, form) for at, form, _ in attrs)
        body += uleb(self._code(tag, children, shape))
        for _at, form, value in attrs:
            if form == DW_FORM_ref4:
                self._patches.append((len(body), value))
                body += b"\0\0\0\0"
            elif form == DW_FORM_strp:
                body += self._u32.pack(self.string(value))
            elif form == DW_FORM_udata:
                body += uleb(value)
            elif form == DW_FORM_sdata:
                body += sleb(value)
            elif form == DW_FORM_flag_present:
                pass
            elif form == DW_FORM_data1:
                body.append(value)
            elif form == DW_FORM_data2:
                body += self._u16.pack(value)
            elif form == DW_FORM_data4:
                body += self._u32.pack(value)
            elif form == DW_FORM_data8:
                body += self._u64.pack(value)
            elif form == DW_FORM_exprloc:
                expr = bytes(value)
                body += uleb(len(expr)) + expr
            elif form == DW_FORM_addr:
                body += self.address(value)
            elif form == DW_FORM_string:
                body += str(value).encode("utf-8", "replace") + b"\0"
            else:
                raise ValueError(f"DW_FORM {form:#x} is not encoded here")
        if children:
            self._depth += 1
        self.dies += 1
        return offset

    def end(self) -> None:
        """Close the children of the innermost open DIE."""
        if self._depth <= 0:
            raise ValueError("end() without an open DIE")
        self._depth -= 1
        self._body.append(0)

    def address(self, value: int) -> bytes:
        mask = (1 << (8 * self.address_size)) - 1
        return (self._u64 if self.address_size == 8 else self._u32).pack(value & mask)

    def addr_expr(self, value: int) -> bytes:
        """DW_OP_addr value: a static address gdb relocates with the file's offset."""
        return bytes((DW_OP_addr,)) + self.address(value)

    def const_expr(self, value: int) -> bytes:
        """An absolute address gdb does not relocate (DW_OP_const4u/8u)."""
        op = DW_OP_const8u if self.address_size == 8 else DW_OP_const4u
        return bytes((op,)) + self.address(value)

    # -- output -----------------------------------------------------------------
    def finish(self) -> tuple[bytes, bytes, bytes]:
        """(.debug_info, .debug_abbrev, .debug_str); every open DIE is closed and
        every reference must name a DIE that was written."""
        while self._depth:
            self.end()
        body = self._body
        pack = self._u32.pack_into
        offsets = self._offsets
        for pos, key in self._patches:
            target = offsets.get(key)
            if target is None:
                raise ValueError(f"reference to a DIE never written: {key!r}")
            pack(body, pos, target)
        self._patches = []
        length = CU_HEADER_SIZE - 4 + len(body)
        if length >= 0xFFFFFFF0:
            raise ValueError("compilation unit too large for 32-bit DWARF")
        header = (
            self._u32.pack(length)
            + self._u16.pack(DWARF_VERSION)
            + self._u32.pack(0)
            + bytes((self.address_size,))
        )
        return header + bytes(body), bytes(self._abbrev) + b"\0", bytes(self._str)
