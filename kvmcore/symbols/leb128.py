"""LEB128 decoding, as DWARF stores its numbers (.debug_info, .debug_abbrev,
.debug_frame, .debug_line): the one decoder the DWARF readers share. The
encoders, for the files kvmcore writes, are in cfi.py."""

from __future__ import annotations


def read_uleb(data: bytes, at: int) -> tuple[int, int]:
    """The unsigned LEB128 at `at` and the offset after it (IndexError when
    `data` ends inside it)."""
    value = shift = 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, at


def read_sleb(data: bytes, at: int) -> tuple[int, int]:
    """The signed LEB128 at `at` and the offset after it: the unsigned value,
    less 2**bits when the last byte's sign bit (0x40) is set."""
    value, end = read_uleb(data, at)
    if data[end - 1] & 0x40:
        value -= 1 << (7 * (end - at))
    return value, end
