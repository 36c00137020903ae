"""DWARF call-frame information (a `.debug_frame` section) for the symbol file.

An arch backend describes its kernel's unwind rules as rows: from an address
on, until the next row, the caller's frame is found by a rule (`CfiRule`:
DWARF CFA instructions that fully state every register the rule touches).
This module only encodes: one CIE per frame kind (ordinary, or a signal
frame: an exception or interrupt entry whose caller's pc is exact, not a
return address), and FDEs of bounded length (gdb runs an FDE's rows from its
start up to the pc, so short FDEs keep each look-up cheap).

Why .debug_frame rather than .eh_frame: its FDE addresses are absolute (no
pc-relative encoding that needs the section's own load address, and the
symbol file allocates no bytes), and gdb reads it from any objfile, shifting
every FDE by the objfile's .text offset - the same qOffsets shift that moves
the kernel symbols from link to runtime addresses.
"""

from __future__ import annotations

import struct
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from ..errors import SymbolError

# call frame instructions (DWARF 4, section 6.4.2)
DW_CFA_advance_loc = 0x40
DW_CFA_offset = 0x80
DW_CFA_restore = 0xC0
DW_CFA_nop = 0x00
DW_CFA_advance_loc1, DW_CFA_advance_loc2, DW_CFA_advance_loc4 = 0x02, 0x03, 0x04
DW_CFA_offset_extended_sf = 0x11
DW_CFA_undefined, DW_CFA_same_value = 0x07, 0x08
DW_CFA_def_cfa, DW_CFA_def_cfa_expression = 0x0C, 0x0F
DW_CFA_expression, DW_CFA_val_expression = 0x10, 0x16
# location expression operations (section 2.5)
DW_OP_deref, DW_OP_dup, DW_OP_drop = 0x06, 0x12, 0x13
DW_OP_and, DW_OP_plus_uconst, DW_OP_skip, DW_OP_bra = 0x1A, 0x23, 0x2F, 0x28
DW_OP_lit0, DW_OP_breg0 = 0x30, 0x70
# the rest of the CFA instruction set and expression operations, for readers
# of a vmlinux's own .debug_frame (kvmcore.unwind.dwarf_cfi)
DW_CFA_set_loc, DW_CFA_offset_extended, DW_CFA_restore_extended = 0x01, 0x05, 0x06
DW_CFA_register, DW_CFA_remember_state, DW_CFA_restore_state = 0x09, 0x0A, 0x0B
DW_CFA_def_cfa_register, DW_CFA_def_cfa_offset = 0x0D, 0x0E
DW_CFA_def_cfa_sf, DW_CFA_def_cfa_offset_sf = 0x12, 0x13
DW_CFA_val_offset, DW_CFA_val_offset_sf = 0x14, 0x15
DW_CFA_GNU_window_save = 0x2D  # DW_CFA_AARCH64_negate_ra_state on arm64
DW_CFA_GNU_args_size, DW_CFA_GNU_negative_offset_extended = 0x2E, 0x2F
DW_OP_addr, DW_OP_const1u, DW_OP_const8s = 0x03, 0x08, 0x0F
DW_OP_constu, DW_OP_consts, DW_OP_over, DW_OP_swap = 0x10, 0x11, 0x14, 0x16
DW_OP_minus, DW_OP_plus, DW_OP_bregx, DW_OP_nop = 0x1C, 0x22, 0x92, 0x96
DW_OP_lit31, DW_OP_breg31 = 0x4F, 0x8F
DW_OP_ne, DW_OP_mul = 0x2E, 0x1E

MAX_ROWS_PER_FDE = 64
MAX_ROWS = 4_000_000


def uleb(value: int) -> bytes:
    """ULEB128, as DWARF encodes unsigned numbers (.debug_frame, .debug_info)."""
    if value < 0:
        raise ValueError(f"uleb of negative {value}")
    if value < 0x80:
        return bytes((value,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def sleb(value: int) -> bytes:
    """SLEB128, as DWARF encodes signed numbers."""
    if -0x40 <= value < 0x40:
        return bytes((value & 0x7F,))
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if (value == 0 and not byte & 0x40) or (value == -1 and byte & 0x40):
            out.append(byte)
            return bytes(out)
        out.append(byte | 0x80)


# -- building blocks for rules (arch code composes these) ---------------------
def def_cfa(reg: int, offset: int) -> bytes:
    """CFA = reg + offset (offset >= 0), else as an expression."""
    if offset >= 0:
        return bytes([DW_CFA_def_cfa]) + uleb(reg) + uleb(offset)
    return def_cfa_expression(breg(reg, offset))


def def_cfa_expression(expr: bytes) -> bytes:
    return bytes([DW_CFA_def_cfa_expression]) + uleb(len(expr)) + expr


def saved_at_cfa(reg: int, offset: int, data_align: int) -> bytes:
    """reg's caller value is in memory at CFA + offset."""
    if offset % data_align == 0 and offset // data_align >= 0:
        factored = offset // data_align
        if reg < 64:
            return bytes([DW_CFA_offset | reg]) + uleb(factored)
    if offset % data_align:
        return saved_at(reg, plus(offset))  # CFA is pushed before the expression runs
    return bytes([DW_CFA_offset_extended_sf]) + uleb(reg) + sleb(offset // data_align)


def saved_at(reg: int, expr: bytes) -> bytes:
    """reg's caller value is in memory at the address `expr` computes
    (the CFA is on the stack when it starts)."""
    return bytes([DW_CFA_expression]) + uleb(reg) + uleb(len(expr)) + expr


def value_is(reg: int, expr: bytes) -> bytes:
    """reg's caller value is what `expr` computes (CFA pushed first)."""
    return bytes([DW_CFA_val_expression]) + uleb(reg) + uleb(len(expr)) + expr


def in_register(reg: int, source: int) -> bytes:
    """reg's caller value is the value `source` holds in this frame."""
    return bytes([DW_CFA_register]) + uleb(reg) + uleb(source)


def undefined(reg: int) -> bytes:
    return bytes([DW_CFA_undefined]) + uleb(reg)


def same_value(reg: int) -> bytes:
    return bytes([DW_CFA_same_value]) + uleb(reg)


def breg(reg: int, offset: int) -> bytes:
    """Expression: push reg + offset (reg < 32)."""
    return bytes([DW_OP_breg0 + reg]) + sleb(offset)


def plus(offset: int) -> bytes:
    """Expression: add a constant to the top of the stack."""
    if offset >= 0:
        return bytes([DW_OP_plus_uconst]) + uleb(offset)
    return bytes([0x11]) + sleb(offset) + bytes([0x22])  # DW_OP_consts n; DW_OP_plus


def deref() -> bytes:
    return bytes([DW_OP_deref])


def const(value: int) -> bytes:
    """Expression: push an unsigned constant."""
    if 0 <= value <= 31:
        return bytes([DW_OP_lit0 + value])
    return bytes([DW_OP_constu]) + uleb(value)


def mask(bits: int) -> bytes:
    """Expression: the top of the stack AND `bits`."""
    return const(bits) + bytes([DW_OP_and])


def differs(value: int) -> bytes:
    """Expression: replace the top of the stack by 0 when it equals `value`, else 1."""
    return const(value) + bytes([DW_OP_ne])


def differs_from_all(values: tuple[int, ...]) -> bytes:
    """Expression: replace the top of the stack by 0 when it equals one of
    `values`, else by a non-zero value (the product of the `differs` tests)."""
    if len(values) == 1:
        return differs(values[0])
    code = b""
    for value in values[:-1]:
        code += bytes([DW_OP_dup]) + differs(value) + bytes([DW_OP_swap])
    code += differs(values[-1])
    return code + bytes([DW_OP_mul]) * (len(values) - 1)


def if_zero_else(
    test: bytes, when_zero: bytes, otherwise: bytes, byteorder: str = "little"
) -> bytes:
    """Expression: evaluate `test`; then `when_zero` if it gave 0, else
    `otherwise` (each branch pushes one value; the stack below is kept).
    The branch offsets are 2-byte operands in the target's `byteorder`."""
    # test; bra L_other; when_zero; skip L_end; L_other: otherwise; L_end:
    e = "<" if byteorder == "little" else ">"
    skip = bytes([DW_OP_skip]) + struct.pack(e + "h", len(otherwise))
    return (
        test
        + bytes([DW_OP_bra])
        + struct.pack(e + "h", len(when_zero) + len(skip))
        + when_zero
        + skip
        + otherwise
    )


# -- the table -----------------------------------------------------------------
@dataclass(frozen=True)
class CfiRule:
    """One row's unwind rule. `kind` groups rules that state the same set of
    registers (rows of one FDE share a kind, so each row overrides the last
    completely); `signal` marks an interrupt/exception frame."""

    instructions: bytes
    kind: Hashable = "call"
    signal: bool = False


@dataclass(frozen=True)
class CfiLayout:
    """The arch's CIE parameters."""

    address_size: int
    return_column: int
    data_align: int
    initial: bytes = b""  # the CIE's initial instructions
    code_align: int = 1
    byteorder: str = "little"


@dataclass
class CfiRange:
    """Rows over [starts[0], end): row i covers starts[i] .. starts[i+1]."""

    starts: list[int]
    rules: list[CfiRule]
    end: int


class DebugFrameWriter:
    def __init__(self, layout: CfiLayout) -> None:
        self.layout = layout
        self.e = "<" if layout.byteorder == "little" else ">"
        self.addr = "Q" if layout.address_size == 8 else "I"
        self.out = bytearray()
        self.cies: dict[bool, int] = {}

    def _cie(self, signal: bool) -> int:
        at = self.cies.get(signal)
        if at is not None:
            return at
        lay = self.layout
        aug = b"zS\0" if signal else b"\0"
        body = (
            struct.pack(self.e + "I", 0xFFFFFFFF)
            + bytes([1])
            + aug
            + uleb(lay.code_align)
            + sleb(lay.data_align)
            + bytes([lay.return_column])
            + (b"\0" if signal else b"")
            + lay.initial
        )
        at = len(self.out)
        self._entry(body)
        self.cies[signal] = at
        return at

    def _entry(self, body: bytes) -> None:
        pad = -(len(body) + 4) % self.layout.address_size
        body += bytes([DW_CFA_nop]) * pad
        self.out += struct.pack(self.e + "I", len(body)) + body

    def fde(self, start: int, end: int, rows: list[tuple[int, bytes]], signal: bool) -> None:
        cie = self._cie(signal)
        code = bytearray()
        loc = start
        align = self.layout.code_align
        for addr, instructions in rows:
            delta = (addr - loc) // align
            if delta:
                if delta < 0x40:
                    code.append(DW_CFA_advance_loc | delta)
                elif delta < 0x100:
                    code += bytes([DW_CFA_advance_loc1, delta])
                elif delta < 0x10000:
                    code += bytes([DW_CFA_advance_loc2]) + struct.pack(self.e + "H", delta)
                else:
                    code += bytes([DW_CFA_advance_loc4]) + struct.pack(self.e + "I", delta)
                loc = addr
            code += instructions
        mask = (1 << (8 * self.layout.address_size)) - 1
        self._entry(
            struct.pack(
                self.e + "I" + self.addr + self.addr, cie, start & mask, (end - start) & mask
            )
            + code
        )


def encode_debug_frame(ranges: Iterable[CfiRange], layout: CfiLayout, shift: int = 0) -> bytes:
    """The .debug_frame bytes for `ranges`, every address moved by -`shift`
    (the symbol file's link-address view). Consecutive equal rules merge into
    one row; an FDE ends where the kind changes or after MAX_ROWS_PER_FDE rows."""
    writer = DebugFrameWriter(layout)
    total = 0
    for rng in ranges:
        if len(rng.starts) != len(rng.rules):
            raise SymbolError("CFI range has unequal address and rule lists")
        total += len(rng.starts)
        if total > MAX_ROWS:
            raise SymbolError(f"more than {MAX_ROWS} CFI rows: refusing to write them")
        bounds = rng.starts[1:] + [rng.end]
        fde_start = None
        fde_rows: list[tuple[int, bytes]] = []
        current: CfiRule | None = None

        def flush(
            end: int,
            fde_start: int | None,
            fde_rows: list[tuple[int, bytes]],
            current: CfiRule | None,
        ) -> None:
            # (the loop's variables, passed in: current is set whenever fde_start is)
            if fde_start is not None and current is not None and end > fde_start:
                writer.fde(
                    fde_start - shift,
                    end - shift,
                    [(a - shift, i) for a, i in fde_rows],
                    current.signal,
                )

        for start, rule, stop in zip(rng.starts, rng.rules, bounds):
            if stop <= start:
                continue  # an empty row (a duplicate address: the last one wins)
            if rule is current and fde_start is not None:
                continue
            if (
                current is None
                or rule.kind != current.kind
                or rule.signal != current.signal
                or len(fde_rows) >= MAX_ROWS_PER_FDE
            ):
                flush(start, fde_start, fde_rows, current)
                fde_start, fde_rows = start, []
            elif rule == current:
                current = rule
                continue
            fde_rows.append((start, rule.instructions))
            current = rule
        if fde_rows:
            flush(rng.end, fde_start, fde_rows, current)
    return bytes(writer.out)
