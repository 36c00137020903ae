"""Unwinding with the DWARF call-frame information of a vmlinux (`.debug_frame`).

The section is read once per dump, when the first backtrace asks for it: its
FDEs are indexed by start address (sorted, bisected), and an FDE's CIE and
instructions are decoded only for the pcs a walk meets. pyelftools would do
the same work, but decodes every entry up front (measured: 5.2 s for the
51,479 entries of Debian's amd64 6.1 vmlinux, where this index takes ~0.1 s).

Addresses: the vmlinux is at link addresses; a runtime pc is looked up at
pc - dump.kernel_offset, and only when it lies in the image's executable
sections (a module's pc, moved by the KASLR offset, could otherwise land in
an unrelated FDE). Relocations: the Debian vmlinux files are final links
(ET_EXEC amd64/i386 keep .rela/.rel.debug_frame from --emit-relocs, arm64 is
ET_DYN without them) whose section bytes already hold the relocated values
(checked in tests/test_unwind_cfi.py), so they are not applied again; a
relocatable object (ET_REL) is refused.

Arch knowledge stays in arches/: each arch gives the DWARF register number
to register name mapping and its stack pointer's column (`Arch.dwarf`, a
kvmcore.cpu.DwarfRegisters).
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, overload

from .. import indexcache
from ..cpu import DwarfRegisters
from ..errors import KvmcoreError, SymbolError, UnsupportedError
from ..notes import ByteOrder
from ..symbols import cfi as C
from ..symbols.leb128 import read_sleb as _sleb
from ..symbols.leb128 import read_uleb as _uleb

if TYPE_CHECKING:
    from ..dump import Dump

SHF_ALLOC, SHF_EXECINSTR = 2, 4
ET_REL = 1
MAX_STATE_STACK = 64  # nested DW_CFA_remember_state
MAX_EXPR_STEPS = 256
MAX_EXPR_STACK = 64
MAX_ROW_CACHE = 65536

# register rules (DWARF 4, 6.4.1)
UNDEFINED, SAME, OFFSET, VAL_OFFSET, REGISTER, EXPRESSION, VAL_EXPRESSION = (
    "undefined",
    "same",
    "offset",
    "val_offset",
    "register",
    "expression",
    "val_expression",
)
#: a register rule: (UNDEFINED,) or (SAME,); (OFFSET | VAL_OFFSET, n) or (REGISTER, number);
#: (EXPRESSION | VAL_EXPRESSION, expression bytes)
Rule = tuple[str] | tuple[str, int] | tuple[str, bytes]


@dataclass(frozen=True)
class Cie:
    code_align: int
    data_align: int
    ra_column: int
    initial: bytes


@dataclass
class Row:
    """The unwind rules in force at one address."""

    ra_column: int
    cfa_reg: int | None = None
    cfa_offset: int = 0
    cfa_expr: bytes | None = None
    rules: dict[int, Rule] = field(default_factory=dict)
    ra_signed: bool = False  # aarch64: the return address carries a PAC

    def copy(self) -> Row:
        return Row(
            self.ra_column,
            self.cfa_reg,
            self.cfa_offset,
            self.cfa_expr,
            dict(self.rules),
            self.ra_signed,
        )


@dataclass
class CallerFrame:
    """What one CFI step recovered: the caller's registers (by name), the
    return address (None when the rules leave it undefined: the stack's end)."""

    regs: dict[str, int]
    return_address: int | None
    cfa: int


class DebugFrame:
    """A parsed `.debug_frame`: FDE index plus lazy row evaluation, at link addresses."""

    def __init__(
        self,
        data: bytes,
        address_size: int,
        byteorder: ByteOrder,
        path: str | None = None,
        text_ranges: list[tuple[int, int]] | None = None,
        build_id: str | None = None,
    ) -> None:
        self.data = data
        self.address_size = address_size
        self.e = "<" if byteorder == "little" else ">"
        self.path = path
        self.text_ranges = text_ranges
        self._cies: dict[int, Cie] = {}
        self._rows: dict[int, Row | None] = {}
        #: the FDEs sorted by start address, and those starts
        self.fdes: Sequence[Fde] = []
        self.starts: Sequence[int] = []
        source = None
        if build_id and indexcache.enabled():
            # the index of a debug vmlinux's ~60k FDEs: 0.15 s to build, ms to load
            source = indexcache.source_digest(
                FDE_CACHE_NAME.encode(), self.e.encode(), bytes([address_size]), data
            )
            fdes = _fdes_from_cache(indexcache.load(build_id, FDE_CACHE_NAME, source))
            if fdes is not None:
                self.fdes, self.starts = fdes, fdes.starts()
                return
        self._index()
        if source is not None:
            indexcache.store(build_id, FDE_CACHE_NAME, source, _fdes_to_cache(self.fdes))

    # -- the index -----------------------------------------------------------
    def _index(self) -> None:
        data, e, n = self.data, self.e, len(self.data)
        addr_fmt = e + ("Q" if self.address_size == 8 else "I")
        asz = self.address_size
        fdes: list[Fde] = []
        off = 0
        while off + 4 <= n:
            (length,) = struct.unpack_from(e + "I", data, off)
            if length == 0xFFFFFFFF:
                if off + 12 > n:
                    break
                (length,) = struct.unpack_from(e + "Q", data, off + 4)
                body, id_fmt, id_size, cie_mark = off + 12, e + "Q", 8, 0xFFFFFFFFFFFFFFFF
            else:
                body, id_fmt, id_size, cie_mark = off + 4, e + "I", 4, 0xFFFFFFFF
            end = body + length
            if end > n:
                raise SymbolError(
                    f".debug_frame entry at {off:#x} runs past the section "
                    f"({length} bytes, section {n})",
                    self.path,
                )
            if length >= id_size:
                (cie_ptr,) = struct.unpack_from(id_fmt, data, body)
                if cie_ptr != cie_mark:
                    at = body + id_size
                    if at + 2 * asz <= end:
                        start, size = struct.unpack_from(addr_fmt + addr_fmt[1], data, at)
                        if start and size:  # zero: code discarded at link time
                            fdes.append((start, start + size, cie_ptr, at + 2 * asz, end))
            off = end
        fdes.sort()
        self.fdes = fdes
        self.starts = [f[0] for f in fdes]

    def __len__(self) -> int:
        return len(self.fdes)

    def fde_for(self, pc: int) -> Fde | None:
        i = bisect_right(self.starts, pc) - 1
        # an FDE may start before a shorter one that ends before pc: look back a little
        for j in range(i, max(i - 4, -1), -1):
            fde = self.fdes[j]
            if fde[0] <= pc < fde[1]:
                return fde
        return None

    # -- CIEs and rows ---------------------------------------------------------
    def _cie(self, at: int) -> Cie:
        cie = self._cies.get(at)
        if cie is not None:
            return cie
        data, e = self.data, self.e
        try:
            (length,) = struct.unpack_from(e + "I", data, at)
            if length == 0xFFFFFFFF:
                (length,) = struct.unpack_from(e + "Q", data, at + 4)
                off, end = at + 20, at + 12 + length
            else:
                off, end = at + 8, at + 4 + length
            version = data[off]
            nul = data.index(b"\0", off + 1)
            augmentation = data[off + 1 : nul]
            off = nul + 1
            if version >= 4:
                off += 2  # address_size, segment_selector_size
            code_align, off = _uleb(data, off)
            data_align, off = _sleb(data, off)
            if version == 1:
                ra, off = data[off], off + 1
            else:
                ra, off = _uleb(data, off)
            if augmentation.startswith(b"z"):
                aug_len, off = _uleb(data, off)
                off += aug_len
            elif augmentation:
                raise SymbolError(
                    f".debug_frame CIE at {at:#x} has unknown augmentation {augmentation!r}",
                    self.path,
                )
        except (IndexError, ValueError, struct.error):
            raise SymbolError(f".debug_frame CIE at {at:#x} is truncated", self.path) from None
        if version not in (1, 3, 4) or end > len(data):
            raise SymbolError(
                f".debug_frame CIE at {at:#x}: version {version} or length is wrong", self.path
            )
        cie = Cie(code_align, data_align, ra, data[off:end])
        self._cies[at] = cie
        return cie

    def row(self, pc: int) -> Row | None:
        """The rules in force at link address `pc`, or None when no FDE covers it."""
        if pc in self._rows:
            return self._rows[pc]
        fde = self.fde_for(pc)
        row = None
        if fde is not None:
            start, _end, cie_at, code_at, code_end = fde
            cie = self._cie(cie_at)
            initial = Row(cie.ra_column)
            self._run(cie.initial, 0, len(cie.initial), cie, start, None, initial, None)
            row = initial.copy()
            self._run(self.data, code_at, code_end, cie, start, pc, row, initial)
        if len(self._rows) >= MAX_ROW_CACHE:
            self._rows.clear()
        self._rows[pc] = row
        return row

    def _run(
        self,
        code: bytes,
        off: int,
        end: int,
        cie: Cie,
        loc: int,
        target: int | None,
        row: Row,
        initial: Row | None,
    ) -> None:
        """Execute CFA instructions into `row` until the location passes `target`."""
        saved: list[Row] = []
        da, ca = cie.data_align, cie.code_align
        try:
            while off < end:
                op = code[off]
                off += 1
                high, low = op & 0xC0, op & 0x3F
                if high == C.DW_CFA_advance_loc:
                    loc += low * ca
                elif high == C.DW_CFA_offset:
                    n, off = _uleb(code, off)
                    row.rules[low] = (OFFSET, n * da)
                    continue
                elif high == C.DW_CFA_restore:
                    self._restore(row, initial, low)
                    continue
                elif op == C.DW_CFA_nop:
                    continue
                elif op == C.DW_CFA_set_loc:
                    fmt = self.e + ("Q" if self.address_size == 8 else "I")
                    (loc,) = struct.unpack_from(fmt, code, off)
                    off += self.address_size
                elif op in (C.DW_CFA_advance_loc1, C.DW_CFA_advance_loc2, C.DW_CFA_advance_loc4):
                    size = {
                        C.DW_CFA_advance_loc1: 1,
                        C.DW_CFA_advance_loc2: 2,
                        C.DW_CFA_advance_loc4: 4,
                    }[op]
                    loc += (
                        int.from_bytes(code[off : off + size], "little" if self.e == "<" else "big")
                        * ca
                    )
                    off += size
                else:
                    off = self._other(op, code, off, row, initial, saved, da)
                    continue
                if target is not None and loc > target:
                    return
        except (IndexError, struct.error):
            raise SymbolError(
                f".debug_frame instructions at {off:#x} are truncated", self.path
            ) from None

    @staticmethod
    def _restore(row: Row, initial: Row | None, reg: int) -> None:
        rule = initial.rules.get(reg) if initial is not None else None
        if rule is None:
            row.rules.pop(reg, None)
        else:
            row.rules[reg] = rule

    def _other(
        self,
        op: int,
        code: bytes,
        off: int,
        row: Row,
        initial: Row | None,
        saved: list[Row],
        da: int,
    ) -> int:
        if op in (C.DW_CFA_offset_extended, C.DW_CFA_val_offset):
            reg, off = _uleb(code, off)
            n, off = _uleb(code, off)
            row.rules[reg] = (OFFSET if op == C.DW_CFA_offset_extended else VAL_OFFSET, n * da)
        elif op in (C.DW_CFA_offset_extended_sf, C.DW_CFA_val_offset_sf):
            reg, off = _uleb(code, off)
            n, off = _sleb(code, off)
            row.rules[reg] = (OFFSET if op == C.DW_CFA_offset_extended_sf else VAL_OFFSET, n * da)
        elif op == C.DW_CFA_GNU_negative_offset_extended:
            reg, off = _uleb(code, off)
            n, off = _uleb(code, off)
            row.rules[reg] = (OFFSET, -n * da)
        elif op == C.DW_CFA_restore_extended:
            reg, off = _uleb(code, off)
            self._restore(row, initial, reg)
        elif op == C.DW_CFA_undefined:
            reg, off = _uleb(code, off)
            row.rules[reg] = (UNDEFINED,)
        elif op == C.DW_CFA_same_value:
            reg, off = _uleb(code, off)
            row.rules[reg] = (SAME,)
        elif op == C.DW_CFA_register:
            reg, off = _uleb(code, off)
            other, off = _uleb(code, off)
            row.rules[reg] = (REGISTER, other)
        elif op == C.DW_CFA_remember_state:
            if len(saved) >= MAX_STATE_STACK:
                raise SymbolError(
                    f".debug_frame: more than {MAX_STATE_STACK} nested DW_CFA_remember_state",
                    self.path,
                )
            saved.append(row.copy())
        elif op == C.DW_CFA_restore_state:
            if not saved:
                raise SymbolError(
                    ".debug_frame: DW_CFA_restore_state without a remembered state", self.path
                )
            # the CFA rule is part of the remembered state too (DWARF 4, 6.4.2.4)
            old = saved.pop()
            row.cfa_reg, row.cfa_offset, row.cfa_expr = old.cfa_reg, old.cfa_offset, old.cfa_expr
            row.rules, row.ra_signed = old.rules, old.ra_signed
        elif op in (C.DW_CFA_def_cfa, C.DW_CFA_def_cfa_sf):
            reg, off = _uleb(code, off)
            if op == C.DW_CFA_def_cfa:
                n, off = _uleb(code, off)
            else:
                n, off = _sleb(code, off)
                n *= da
            row.cfa_reg, row.cfa_offset, row.cfa_expr = reg, n, None
        elif op == C.DW_CFA_def_cfa_register:
            reg, off = _uleb(code, off)
            row.cfa_reg, row.cfa_expr = reg, None
        elif op == C.DW_CFA_def_cfa_offset:
            row.cfa_offset, off = _uleb(code, off)
        elif op == C.DW_CFA_def_cfa_offset_sf:
            n, off = _sleb(code, off)
            row.cfa_offset = n * da
        elif op == C.DW_CFA_def_cfa_expression:
            size, off = _uleb(code, off)
            row.cfa_reg, row.cfa_expr = None, bytes(code[off : off + size])
            off += size
        elif op in (C.DW_CFA_expression, C.DW_CFA_val_expression):
            reg, off = _uleb(code, off)
            size, off = _uleb(code, off)
            kind = EXPRESSION if op == C.DW_CFA_expression else VAL_EXPRESSION
            row.rules[reg] = (kind, bytes(code[off : off + size]))
            off += size
        elif op == C.DW_CFA_GNU_args_size:
            _, off = _uleb(code, off)
        elif op == C.DW_CFA_GNU_window_save:
            row.ra_signed = not row.ra_signed  # SPARC's meaning never occurs in these kernels
        else:
            raise SymbolError(
                f".debug_frame: unknown CFA instruction {op:#x} at {off - 1:#x}", self.path
            )
        return off


class _Expression:
    """A DWARF expression evaluator for the operations CFI uses (register
    bases, constants, arithmetic, dereference, branches); bounded."""

    def __init__(
        self, word_size: int, byteorder: ByteOrder, read_word: Callable[[int], int]
    ) -> None:
        self.mask = (1 << (8 * word_size)) - 1
        self.word_size = word_size
        self.order = byteorder
        self.read_word = read_word

    def run(self, expr: bytes, regs: Mapping[int, int], push: list[int]) -> int:
        stack = list(push)
        mask, off, steps = self.mask, 0, 0
        while off < len(expr):
            steps += 1
            if steps > MAX_EXPR_STEPS or len(stack) > MAX_EXPR_STACK:
                raise SymbolError("DWARF expression too long or looping")
            op = expr[off]
            off += 1
            if C.DW_OP_lit0 <= op <= C.DW_OP_lit31:
                stack.append(op - C.DW_OP_lit0)
            elif C.DW_OP_breg0 <= op <= C.DW_OP_breg31 or op == C.DW_OP_bregx:
                if op == C.DW_OP_bregx:
                    reg, off = _uleb(expr, off)
                else:
                    reg = op - C.DW_OP_breg0
                n, off = _sleb(expr, off)
                if reg not in regs:
                    raise UnsupportedError(
                        f"DWARF expression needs register {reg}, which this frame does not know"
                    )
                stack.append((regs[reg] + n) & mask)
            elif op == C.DW_OP_deref:
                stack.append(self.read_word(stack.pop()))
            elif op == C.DW_OP_plus_uconst:
                n, off = _uleb(expr, off)
                stack.append((stack.pop() + n) & mask)
            elif op == C.DW_OP_constu:
                n, off = _uleb(expr, off)
                stack.append(n & mask)
            elif op == C.DW_OP_consts:
                n, off = _sleb(expr, off)
                stack.append(n & mask)
            elif C.DW_OP_const1u <= op <= C.DW_OP_const8s:
                size = 1 << ((op - C.DW_OP_const1u) // 2)
                signed = (op - C.DW_OP_const1u) % 2 == 1
                stack.append(
                    int.from_bytes(expr[off : off + size], self.order, signed=signed) & mask
                )
                off += size
            elif op == C.DW_OP_addr:
                stack.append(int.from_bytes(expr[off : off + self.word_size], self.order))
                off += self.word_size
            elif op == C.DW_OP_dup:
                stack.append(stack[-1])
            elif op == C.DW_OP_drop:
                stack.pop()
            elif op == C.DW_OP_over:
                stack.append(stack[-2])
            elif op == C.DW_OP_swap:
                stack[-1], stack[-2] = stack[-2], stack[-1]
            elif op in (C.DW_OP_plus, C.DW_OP_minus, C.DW_OP_and):
                b, a = stack.pop(), stack.pop()
                value = a + b if op == C.DW_OP_plus else a - b if op == C.DW_OP_minus else a & b
                stack.append(value & mask)
            elif op == C.DW_OP_skip or op == C.DW_OP_bra:
                (delta,) = struct.unpack_from("<h" if self.order == "little" else ">h", expr, off)
                off += 2
                if op == C.DW_OP_skip or stack.pop() != 0:
                    off += delta
                if not 0 <= off <= len(expr):
                    raise SymbolError("DWARF expression branches outside itself")
            elif op == C.DW_OP_nop:
                pass
            else:
                raise UnsupportedError(f"DWARF expression operation {op:#x} is not supported")
        if not stack:
            raise SymbolError("DWARF expression left an empty stack")
        return stack[-1]


class DwarfCfi:
    """CFI steps for one dump, in the arch's register names; the vmlinux's
    .debug_frame is loaded on first use. `error` says why it is unavailable."""

    def __init__(self, dump: Dump, registers: DwarfRegisters) -> None:
        self.dump = dump
        self.registers = registers
        self.numbers = {name: num for num, name in registers.names.items()}
        self._frame: DebugFrame | None = None
        self._loaded = False
        self.error: str | None = None
        self.offset = 0
        self._expr = _Expression(dump.word_size, dump.byteorder, dump.read_ptr)

    @property
    def table(self) -> DebugFrame | None:
        if not self._loaded:
            self._loaded = True
            try:
                self._frame = debug_frame_of(self.dump)
                self.offset = self.dump.kernel_offset
            except KvmcoreError as exc:
                self.error = str(exc)
        return self._frame

    def note(self) -> str | None:
        """A Backtrace note when a vmlinux was given but its CFI is unusable."""
        if self._loaded and self._frame is None and self.error:
            return f"vmlinux DWARF CFI unavailable ({self.error})"
        return None

    def covers(self, pc: int, exact: bool) -> bool:
        return self._row(pc, exact) is not None

    def _row(self, pc: int, exact: bool) -> Row | None:
        table = self.table
        if table is None:
            return None
        link = (pc - self.offset - (0 if exact else 1)) & self._expr.mask
        if table.text_ranges is not None and not any(
            lo <= link < hi for lo, hi in table.text_ranges
        ):
            return None
        return table.row(link)

    def caller(self, regs: Mapping[str, int], pc: int, exact: bool) -> CallerFrame | None:
        """The caller's registers of the frame at `pc` whose registers are
        `regs` (`exact`: pc is the interrupted instruction, not a return
        address), or None when no FDE covers pc or its rules need a register
        this frame does not know. Memory faults raise (AddressError)."""
        row = self._row(pc, exact)
        if row is None:
            return None
        names, mask = self.registers.names, self._expr.mask
        known = {self.numbers[n]: v for n, v in regs.items() if n in self.numbers}
        try:
            if row.cfa_expr is not None:
                cfa = self._expr.run(row.cfa_expr, known, [])
            elif row.cfa_reg is not None and row.cfa_reg in known:
                cfa = (known[row.cfa_reg] + row.cfa_offset) & mask
            else:
                return None  # CFA based on a register lost in an earlier frame
            caller: dict[int, int] = {
                num: v for num, v in known.items() if row.rules.get(num, (SAME,))[0] == SAME
            }
            for num, rule in row.rules.items():
                value = self._apply(rule, cfa, known)
                if value is not None:
                    caller[num] = value
                else:
                    caller.pop(num, None)
        except (UnsupportedError, SymbolError, IndexError, struct.error):
            return None  # rules this evaluator cannot follow: the arch's own method decides
        sp = self.registers.sp_column
        if sp not in row.rules:
            caller[sp] = cfa
        ra = None
        if row.rules.get(row.ra_column, (SAME,))[0] != UNDEFINED:
            ra = caller.get(row.ra_column)
            if ra is None:
                return None  # the return address is in a register this frame lost
        out = {names[num]: v for num, v in caller.items() if num in names}
        if ra is not None:
            out[self.registers.pc_name] = ra
        return CallerFrame(out, ra, cfa)

    def _apply(self, rule: Rule, cfa: int, known: Mapping[int, int]) -> int | None:
        if len(rule) == 1:
            return None  # UNDEFINED (SAME is handled by the caller)
        (kind, arg), mask = rule, self._expr.mask
        if isinstance(arg, bytes):  # only the EXPRESSION kinds carry bytes
            if kind == EXPRESSION:
                return self.dump.read_ptr(self._expr.run(arg, known, [cfa]))
            if kind == VAL_EXPRESSION:
                return self._expr.run(arg, known, [cfa])
            return None
        if kind == OFFSET:
            return self.dump.read_ptr((cfa + arg) & mask)
        if kind == VAL_OFFSET:
            return (cfa + arg) & mask
        if kind == REGISTER:
            return known.get(arg)
        return None


#: one FDE: link-address start and end, its CIE's offset, where its
#: instructions start and end (offsets in the section)
Fde = tuple[int, int, int, int, int]
#: the sorted FDE index in the build-id index cache (kvmcore.indexcache)
FDE_CACHE_NAME = "debug-frame-fdes.v1"
_FDE = 5  # start, end, CIE offset, instructions offset, end offset


def _fdes_to_cache(fdes: Sequence[Fde]) -> bytes:
    flat = array("Q", [v for fde in fdes for v in fde])
    if sys.byteorder != "little":
        flat.byteswap()
    return flat.tobytes()


def _fdes_from_cache(payload: bytes | None) -> _FlatFdes | None:
    if payload is None or len(payload) % (8 * _FDE):
        return None
    flat = array("Q")
    flat.frombytes(payload)
    if sys.byteorder != "little":
        flat.byteswap()
    return _FlatFdes(flat)


class _FlatFdes(Sequence[Fde]):
    """The cached FDE index as one flat array, each FDE's tuple made when asked
    for: making all ~60k up front cost as much as the rest of a backtrace."""

    def __init__(self, flat: array[int]) -> None:
        self.flat = flat

    def starts(self) -> array[int]:
        return self.flat[0::_FDE]

    def __len__(self) -> int:
        return len(self.flat) // _FDE

    @overload
    def __getitem__(self, i: int) -> Fde: ...

    @overload
    def __getitem__(self, i: slice) -> list[Fde]: ...

    def __getitem__(self, i: int | slice) -> Fde | list[Fde]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        a, b, c, d, e = self.flat[_FDE * i : _FDE * i + _FDE]
        return (a, b, c, d, e)


_CACHE_ATTR = "_kvmcore_debug_frame"


def debug_frame_of(dump: Dump) -> DebugFrame:
    """The dump's vmlinux .debug_frame, parsed once per dump; raises
    UnsupportedError/SymbolError saying why there is none."""
    cached = getattr(dump, _CACHE_ATTR, None)
    if isinstance(cached, DebugFrame):
        return cached
    if isinstance(cached, KvmcoreError):
        raise cached
    try:
        frame = _load(dump)
    except KvmcoreError as exc:
        setattr(dump, _CACHE_ATTR, exc)
        raise
    setattr(dump, _CACHE_ATTR, frame)
    return frame


def _load(dump: Dump) -> DebugFrame:
    from ..symbols import check_build_id
    from ..symbols.vmlinux import VmlinuxFile

    path = getattr(dump, "vmlinux", None)
    if not path:
        raise UnsupportedError("no vmlinux given: no .debug_frame", dump.path)
    if dump.os != "linux":  # how far other kernels' text moved is not checked here
        raise UnsupportedError(
            f"CFI unwinding is for Linux kernels (this dump: {dump.os})", dump.path
        )
    image = VmlinuxFile(path)
    try:
        with open(path, "rb") as f:
            header = f.read(18)
        # e_ident[EI_DATA], as VmlinuxFile read it (its byteorder attribute is a plain str)
        byteorder: ByteOrder = "little" if header[5] == 1 else "big"
        e_type = int.from_bytes(header[16:18], byteorder)
        if e_type == ET_REL:
            raise UnsupportedError("a relocatable object: its .debug_frame needs relocating", path)
        check_build_id(dump, image)
        sec = image.section(".debug_frame")
        if sec is None or not sec.size:
            raise UnsupportedError("the vmlinux has no .debug_frame", path)
        data = bytes(image.section_bytes(sec))
        text = [
            (s.addr, s.addr + s.size)
            for s in image.sections
            if s.flags & SHF_ALLOC and s.flags & SHF_EXECINSTR and s.size
        ]
        address_size = 8 if image.is64 else 4
        ids = image.build_ids()
    finally:
        image.close()
    return DebugFrame(data, address_size, byteorder, path, text or None, ids[0] if ids else None)
