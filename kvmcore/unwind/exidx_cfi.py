"""DWARF CFI made from the 32-bit Arm kernel's EHABI unwind tables
(`.ARM.exidx`, read from the dump), for `kvmcore symfile`.

gdb-multiarch has an EHABI unwinder of its own, but it reads the tables only
from sections named `.ARM.exidx`/`.ARM.extab` of an objfile (the vmlinux
names them `.ARM.unwind_idx`/`.ARM.unwind_tab`), uses them only at call sites
(never for the innermost frame, where it falls back to prologue analysis),
and ignores EXIDX_CANTUNWIND (it then analyses the prologue of entry code
and repeats a frame). So each table entry becomes DWARF rows instead, which
gdb prefers to any other unwinder: the entry's opcodes (the same ones
kvmcore.unwind.arch_arm follows; see the EHABI summary there) are run
symbolically on the virtual stack pointer, which gives
  CFA = the final vsp (the caller's sp), as an offset from sp or from the
    register `vsp = r[n]` set (`.setfp`), or loaded from the stack when sp
    itself is popped (svc_entry's `.save {r0-pc}` over struct pt_regs);
  every popped register saved at its slot;
  the caller's pc: the popped pc, else the popped lr (the return column),
    else lr itself (a function that saves no lr);
EXIDX_CANTUNWIND (ret_fast_syscall, ret_from_fork, __irq_usr...) and the
entries the kernel refuses (VFP pops, the "refuse to unwind" pop mask) leave
the return address undefined: gdb ends the backtrace there.

An entry covers its function's start up to the next entry's. gdb looks a
return address up at address - 1; the kernel's entry code is also reached
by return addresses equal to a function's first instruction (the syscall
table's handlers return to ret_fast_syscall, whose address `badr` put in
lr), so each row of a function in entry text starts one byte early, as
kvmcore's own walk treats such an address (ArmUnwinder._entry_start).
Each function's first instruction gets a row of its own (nothing pushed
yet: CFA = sp, the caller's pc in lr), where a CPU caught on a call stands.
Like every CFI, the rows are right at call sites and on that first
instruction, and wrong inside a prologue or epilogue (the innermost frame
only). Module tables
(each module's own .ARM.exidx, on the kernel's unwind_tables list) are not
read: module text gets no rows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KvmcoreError, UnsupportedError
from ..symbols import cfi
from .arch_arm import UnwindRefused
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump

SP, LR, PC = 13, 14, 15
DATA_ALIGN = -4
LAYOUT = cfi.CfiLayout(address_size=4, return_column=LR, data_align=DATA_ALIGN)
#: the return address is undefined: gdb's outermost frame
END_RULE = cfi.CfiRule(cfi.def_cfa(SP, 0) + cfi.undefined(LR) + cfi.undefined(PC), "end")


class Refused(Exception):
    """Opcodes the kernel refuses to follow."""


@dataclass
class _Base:
    """A value the virtual sp is an offset from: this frame's register `reg`,
    or the word at the address `at` computes (a popped sp or `.setfp` register)."""

    reg: int | None = None
    at: bytes | None = None

    def expr(self, offset: int) -> bytes:
        """DWARF expression pushing base + offset."""
        if self.reg is not None:
            return cfi.breg(self.reg, offset)
        assert self.at is not None
        return self.at + cfi.deref() + (cfi.plus(offset) if offset else b"")


@dataclass
class _State:
    base: _Base = field(default_factory=lambda: _Base(reg=SP))
    offset: int = 0
    #: register -> (base, offset) of the slot it was popped from
    saved: dict[int, tuple[_Base, int]] = field(default_factory=dict)

    def pop(self, reg: int) -> None:
        self.saved[reg] = (self.base, self.offset)
        self.offset += 4


def interpret(ops: list[int]) -> _State:
    """Run an entry's opcodes on a symbolic vsp (arch/arm/kernel/unwind.c's rules)."""
    st = _State()
    i = 0
    while i < len(ops):
        op = ops[i]
        i += 1
        if op & 0xC0 == 0x00:
            st.offset += ((op & 0x3F) << 2) + 4
        elif op & 0xC0 == 0x40:
            st.offset -= ((op & 0x3F) << 2) + 4
        elif op & 0xF0 == 0x80:
            if i >= len(ops):
                raise Refused("truncated pop")
            mask = ((op << 8) | ops[i]) & 0x0FFF
            i += 1
            if not mask:
                raise Refused("refuse to unwind")
            for bit in range(12):
                if mask & (1 << bit):
                    st.pop(bit + 4)
            if mask & (1 << (SP - 4)):  # vsp = the popped sp
                base, off = st.saved.pop(SP)
                st.base, st.offset = _Base(at=base.expr(off)), 0
        elif op & 0xF0 == 0x90 and op & 0x0D != 0x0D:
            reg = op & 0x0F
            if reg in st.saved:
                base, off = st.saved[reg]
                st.base = _Base(at=base.expr(off))
            else:
                st.base = _Base(reg=reg)
            st.offset = 0
        elif op & 0xF0 == 0xA0:
            for reg in range(4, 5 + (op & 7)):
                st.pop(reg)
            if op & 0x08:
                st.pop(LR)
        elif op == 0xB0:
            break
        elif op == 0xB1:
            if i >= len(ops) or not ops[i] or ops[i] & 0xF0:
                raise Refused("bad pop r0-r3 mask")
            mask = ops[i]
            i += 1
            for reg in range(4):
                if mask & (1 << reg):
                    st.pop(reg)
        elif op == 0xB2:
            uleb = shift = 0
            while True:
                if i >= len(ops):
                    raise Refused("truncated uleb128")
                byte = ops[i]
                i += 1
                uleb |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    break
            st.offset += 0x204 + (uleb << 2)
        else:
            raise Refused(f"opcode {op:#04x}")
    return st


def rule_of(ops: list[int] | None) -> cfi.CfiRule:
    """The CfiRule of one entry's opcodes (None: EXIDX_CANTUNWIND)."""
    if ops is None:
        return END_RULE
    try:
        st = interpret(ops)
    except Refused:
        return END_RULE
    if st.base.reg is not None:
        code = cfi.def_cfa(st.base.reg, st.offset)
    else:
        code = cfi.def_cfa_expression(st.base.expr(st.offset))
    for reg, (base, off) in sorted(st.saved.items()):
        if base == st.base:
            code += cfi.saved_at_cfa(reg, off - st.offset, DATA_ALIGN)
        else:
            code += cfi.saved_at(reg, base.expr(off))
    if PC not in st.saved and LR in st.saved:
        base, off = st.saved[LR]
        # the caller's pc is the popped lr (gdb's RA rule would give the same;
        # stated so that every rule of this kind states pc)
        code += cfi.saved_at(PC, base.expr(off))
    stated = tuple(sorted({*st.saved, PC} if LR in st.saved else st.saved))
    return cfi.CfiRule(code, ("exidx", stated))


def entry_rule(body: cfi.CfiRule) -> cfi.CfiRule:
    """The rule at a function's first instruction, of the same kind as its
    `body` rule: nothing is pushed yet (CFA = sp) and the caller's pc is in
    lr; every register the body rule states keeps its value."""
    kind = body.kind
    stated: tuple[int, ...] = kind[1] if isinstance(kind, tuple) else ()
    code = cfi.def_cfa(SP, 0)
    for reg in stated:
        code += cfi.in_register(PC, LR) if reg == PC else cfi.same_value(reg)
    return cfi.CfiRule(code, body.kind)


def exidx_cfi_ranges(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """Rows for every entry of the kernel's unwind table, at runtime addresses."""
    from . import unwinder_for

    unwinder = unwinder_for(dump)
    table = getattr(unwinder, "table", None)
    if table is None:
        why = getattr(unwinder, "table_error", None) or "no kernel unwind table"
        raise UnsupportedError(why, dump.path)
    syms = CodeSymbols(dump)
    entry_lo, entry_hi = syms.address("__entry_text_start"), syms.address("__entry_text_end")
    end = syms.address("_etext") or (table.functions[-1] + 4 if len(table) else 0)
    starts: list[int] = []
    rules: list[cfi.CfiRule] = []
    cache: dict[tuple[int, ...] | None, cfi.CfiRule] = {}
    entry_rules: dict[cfi.CfiRule, cfi.CfiRule] = {}
    for k in range(len(table)):
        function, insn, at = table.functions[k], table.insns[k], table.start + 8 * k + 4
        try:
            ops = table.opcodes(insn, at)
        except (KvmcoreError, UnwindRefused):
            rule = END_RULE  # an unreadable extab entry, a personality not followed
        else:
            key = tuple(ops) if ops is not None else None
            rule = cache.get(key) or cache.setdefault(key, rule_of(ops))
        start = function
        in_entry_text = bool(entry_lo and entry_hi and entry_lo < function < entry_hi)
        if in_entry_text:
            start -= 1  # see the module docstring: a return to this first instruction
        while starts and start <= starts[-1]:
            starts.pop()  # two entries for one address: the later one is the table's
            rules.pop()
        if rule is not END_RULE and not in_entry_text:
            # the function's first instruction, where the CPU may be caught (a
            # banked-mode panic CPU interrupted on a call): one byte, so that
            # no return address (looked up at address - 1) lands in it
            starts.append(start)
            rules.append(entry_rules.get(rule) or entry_rules.setdefault(rule, entry_rule(rule)))
            start += 1
        starts.append(start)
        rules.append(rule)
    return LAYOUT, [cfi.CfiRange(starts, rules, max(end, starts[-1] + 1))] if starts else []
