"""A DWARF line-number program (`.debug_line`, DWARF 2-5) run as the state
machine of DWARF 5 section 6.2, on the program's bytes.

pyelftools decodes the same program with one parsed object and one copied
state per opcode: ~0.15 s for a large kernel CU, most of a cold `bt`'s DWARF
time. This loop keeps only the rows (address, file, line, end of sequence),
several times faster. pyelftools still parses the program's header (file and
directory names), and decodes the whole program where this one declines: a
DW_LNE_define_file (which adds a file to the header), a program running past
its end. tests/test_srclines.py checks the two give the same rows."""

from __future__ import annotations

from typing import Any, Literal

from ..symbols.leb128 import read_uleb

# standard opcodes (DW_LNS_*) and extended opcodes (DW_LNE_*)
_COPY, _ADVANCE_PC, _ADVANCE_LINE, _SET_FILE, _SET_COLUMN = 1, 2, 3, 4, 5
_NEGATE_STMT, _SET_BASIC_BLOCK, _CONST_ADD_PC, _FIXED_ADVANCE_PC = 6, 7, 8, 9
_END_SEQUENCE, _SET_ADDRESS, _DEFINE_FILE = 1, 2, 3


class Declined(Exception):
    """The program needs what this decoder leaves to pyelftools."""


def line_rows(data: bytes, header: Any, little: bool) -> list[tuple[int, int, int, bool]]:
    """(address, file, line, end_sequence) of every row `data` (the program
    after its header) appends, in order; `header` is pyelftools' parsed
    header (its minimum_instruction_length, line_base, ...)."""
    min_len = header["minimum_instruction_length"]
    max_ops = header.get("maximum_operations_per_instruction", 1) or 1
    line_base = header["line_base"]
    line_range = header["line_range"]
    opcode_base = header["opcode_base"]
    lengths = list(header["standard_opcode_lengths"])
    if line_range == 0:
        raise Declined("line_range 0")
    order: Literal["little", "big"] = "little" if little else "big"
    rows: list[tuple[int, int, int, bool]] = []
    append = rows.append
    n = len(data)
    pos = 0
    address = op_index = 0
    file, line = 1, 1
    try:
        while pos < n:
            op = data[pos]
            pos += 1
            if op >= opcode_base:
                adjusted = op - opcode_base
                advance = adjusted // line_range
                if max_ops == 1:
                    address += min_len * advance
                else:
                    address += min_len * ((op_index + advance) // max_ops)
                    op_index = (op_index + advance) % max_ops
                line += line_base + adjusted % line_range
                append((address, file, line, False))
            elif op == 0:  # extended: ULEB length, sub-opcode, operands
                size, pos = read_uleb(data, pos)
                end = pos + size
                if size == 0 or end > n:
                    raise Declined("extended opcode past the program's end")
                sub = data[pos]
                if sub == _END_SEQUENCE:
                    append((address, file, line, True))
                    address = op_index = 0
                    file, line = 1, 1
                elif sub == _SET_ADDRESS:
                    address = int.from_bytes(data[pos + 1 : end], order)
                    op_index = 0
                elif sub == _DEFINE_FILE:
                    raise Declined("DW_LNE_define_file")
                pos = end  # set_discriminator and unknown ones: skipped whole
            elif op == _COPY:
                append((address, file, line, False))
            elif op in (_ADVANCE_PC, _ADVANCE_LINE, _SET_FILE):
                # LEB128 decoded inline, not by symbols.leb128: these are most
                # of a program's opcodes, and a call each was most of this loop
                value = shift = 0
                while True:
                    byte = data[pos]
                    pos += 1
                    value |= (byte & 0x7F) << shift
                    shift += 7
                    if not byte & 0x80:
                        break
                if op == _ADVANCE_PC:
                    if max_ops == 1:
                        address += min_len * value
                    else:
                        address += min_len * ((op_index + value) // max_ops)
                        op_index = (op_index + value) % max_ops
                elif op == _ADVANCE_LINE:
                    if byte & 0x40:  # sign bit of the last byte
                        value -= 1 << shift
                    line += value
                else:
                    file = value
            elif op == _CONST_ADD_PC:
                advance = (255 - opcode_base) // line_range
                if max_ops == 1:
                    address += min_len * advance
                else:
                    address += min_len * ((op_index + advance) // max_ops)
                    op_index = (op_index + advance) % max_ops
            elif op == _FIXED_ADVANCE_PC:
                address += int.from_bytes(data[pos : pos + 2], order)
                op_index = 0
                pos += 2
            elif op in (_NEGATE_STMT, _SET_BASIC_BLOCK):
                pass
            else:  # set_column, prologue_end, epilogue_begin, set_isa, unknown: ULEB operands
                count = lengths[op - 1] if op - 1 < len(lengths) else 0
                for _ in range(count):
                    while data[pos] & 0x80:
                        pos += 1
                    pos += 1
    except IndexError:
        raise Declined("the program runs past its end") from None
    return rows
