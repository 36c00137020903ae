"""DWARF CFI made from the kernel's ORC tables, for `kvmcore symfile`.

gdb cannot unwind a Debian amd64 kernel from symbols alone (no frame
pointers). Each ORC entry becomes one row of DWARF call-frame information
(kvmcore.symbols.cfi encodes them), saying what the kernel's own unwinder
does for that address:
  CALL: CFA = the ORC base (sp_reg + sp_offset, the caller's sp), return
    address at CFA-8, rbp as bp_reg says.
  REGS: a struct pt_regs at the ORC base (the CFA of this entry frame): every
    register it holds is saved there; the return address is the interrupted
    rip, or 0 when cs says user mode (gdb then shows one "0x0 in ??" frame
    and stops, as it does with the vmlinux). Not marked as a signal frame:
    that would make gdb take the interrupted rip as exact rather than look
    it up at rip-1, but it prints the entry frame as "<signal handler
    called>" instead of its name and, after a user-mode interrupt, unwinds
    the zero pc with its prologue heuristics into garbage frames.
  REGS_PARTIAL: the same with the 5-word iret frame only.
  END / UNDEFINED: the return address is undefined, so gdb stops there.
A function objtool skipped (no entry at all) that holds a CPU's saved pc
gets the rows objtool would have written, made from its code
(kvmcore.unwind.x86_stack): kdump's panic CPU stops in __crash_kexec.
Syscall entries and ret_from_fork hold user (or zeroed kthread) pt_regs
only: they end the walk like END, as the kernel's unwinder does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..arches.x86_64.cpu import DWARF_NUMBERS as DWARF_REGS
from ..arches.x86_64.cpu import DWARF_RA, IRET_FRAME, PT_REGS
from ..errors import KvmcoreError
from ..symbols import cfi
from . import orc
from .symbolic import CodeSymbols
from .x86_stack import function_entries

if TYPE_CHECKING:
    from ..dump import Dump

ORC_DWARF_REG = {
    orc.REG_SP: 7,
    orc.REG_BP: 6,
    orc.REG_DX: 1,
    orc.REG_DI: 5,
    orc.REG_R10: 10,
    orc.REG_R13: 13,
}
CFI_DATA_ALIGN = -8
USER_ENTRY_SYMBOLS = frozenset(
    (
        "entry_SYSCALL_64",
        "entry_SYSCALL_64_safe_stack",
        "entry_SYSCALL_64_after_hwframe",
        "entry_SYSCALL_compat",
        "entry_SYSCALL_compat_safe_stack",
        "entry_SYSCALL_compat_after_hwframe",
        "entry_SYSENTER_compat",
        "entry_SYSENTER_compat_after_hwframe",
        "entry_INT80_compat",
        "ret_from_fork",
    )
)


def _orc_base(entry: orc.OrcEntry) -> bytes | None:
    """CFA instructions putting the ORC base address in the CFA, or None."""
    reg, off = entry.sp_reg, entry.sp_offset
    if reg in ORC_DWARF_REG:
        return cfi.def_cfa(ORC_DWARF_REG[reg], off)
    if reg == orc.REG_SP_INDIRECT:
        return cfi.def_cfa_expression(cfi.breg(7, 0) + cfi.deref() + cfi.plus(off))
    if reg == orc.REG_BP_INDIRECT:
        return cfi.def_cfa_expression(cfi.breg(6, off) + cfi.deref())
    return None


def _if_kernel_mode(cs_at: int, kernel: bytes, user: bytes) -> bytes:
    """Expression (CFA pushed): `kernel` when the cs saved at CFA+cs_at is
    kernel mode, else `user` (each replaces the CFA with one value)."""
    test = (
        bytes([cfi.DW_OP_dup])
        + cfi.plus(cs_at)
        + cfi.deref()
        + bytes([cfi.DW_OP_lit0 + 3, cfi.DW_OP_and])
    )
    return cfi.if_zero_else(test, kernel, user)


def _interrupted(saved: tuple[str, ...]) -> bytes:
    """Rules for the rip and rsp saved in a pt_regs/iret frame at the CFA. In
    user mode the caller is not kernel code, and gdb should stop after one
    "0x0 in ??" frame without an error: rip is 0 (gdb stops at a zero pc) and
    rsp the address of the frame's last word (ss): gdb's fallback unwinder
    for pc 0 reads a word there when it checks why the walk stopped, and a
    user sp would be "inner" to the kernel stack, which gdb reports."""
    cs_at = 8 * saved.index("cs")
    rip = _if_kernel_mode(
        cs_at,
        cfi.plus(8 * saved.index("rip")) + cfi.deref(),
        bytes([cfi.DW_OP_drop, cfi.DW_OP_lit0]),
    )
    rsp = _if_kernel_mode(
        cs_at, cfi.plus(8 * saved.index("rsp")) + cfi.deref(), cfi.plus(8 * len(saved) - 8)
    )
    return cfi.value_is(DWARF_RA, rip) + cfi.value_is(DWARF_REGS["rsp"], rsp)


def orc_cfi_rule(entry: orc.OrcEntry, user_entry: bool = False) -> cfi.CfiRule:
    """The CfiRule of one ORC entry (see the comment above)."""
    base = _orc_base(entry)
    kind = entry.type
    if (
        base is None
        or kind in (orc.END, orc.UNDEFINED)
        or (user_entry and kind in (orc.REGS, orc.REGS_PARTIAL))
    ):
        return cfi.CfiRule(cfi.def_cfa(7, 8) + cfi.undefined(DWARF_RA) + cfi.same_value(6), "call")
    if kind == orc.CALL:
        return cfi.CfiRule(
            base + cfi.saved_at_cfa(DWARF_RA, -8, CFI_DATA_ALIGN) + _bp_rule(entry), "call"
        )
    if kind == orc.REGS:
        code = bytearray(base)
        for i, name in enumerate(PT_REGS):
            if name in DWARF_REGS and name not in ("rip", "rsp"):
                code += cfi.saved_at_cfa(DWARF_REGS[name], 8 * i, CFI_DATA_ALIGN)
        if entry.bp_reg != orc.REG_UNDEFINED:
            code += _bp_rule(entry)
        return cfi.CfiRule(bytes(code) + _interrupted(PT_REGS), "regs")
    # REGS_PARTIAL: the iret frame
    code = bytearray(base)
    for i, name in enumerate(IRET_FRAME):
        if name not in ("rip", "rsp"):
            code += cfi.saved_at_cfa(DWARF_REGS[name], 8 * i, CFI_DATA_ALIGN)
    code += _bp_rule(entry)
    return cfi.CfiRule(bytes(code) + _interrupted(IRET_FRAME), "iret")


def _bp_rule(entry: orc.OrcEntry) -> bytes:
    if entry.bp_reg == orc.REG_PREV_SP:  # saved at the ORC base (CFA) + bp_offset
        return cfi.saved_at_cfa(6, entry.bp_offset, CFI_DATA_ALIGN)
    if entry.bp_reg == orc.REG_BP:  # saved at the current rbp + bp_offset
        return cfi.saved_at(6, cfi.breg(6, entry.bp_offset))
    return cfi.same_value(6)


def _uncovered_rows(dump: Dump, syms: CodeSymbols, table: orc.OrcTable) -> dict[int, cfi.CfiRule]:
    """Rows for the core-kernel functions that hold a CPU's saved pc but have
    no ORC entry at all (objtool skipped them: kdump's panic CPU stops in
    __crash_kexec), made from their code as objtool would have
    (kvmcore.unwind.x86_stack), so that gdb gets past that frame #0."""
    try:
        pcs = {state.regs.get("rip", 0) for state in dump.cpu_states}
    except KvmcoreError:
        return {}
    rows: dict[int, cfi.CfiRule] = {}
    for pc in sorted(pcs):
        bounds = syms.function_bounds(pc)
        if bounds is None or not any(lo <= pc < hi for lo, hi in table.ranges):
            continue
        start, end = bounds
        if table.has_entry_in(start, end):
            continue
        try:
            entries = function_entries(dump.read(start, end - start), start)
        except KvmcoreError:
            entries = None
        if entries:
            rows.update((at, orc_cfi_rule(entry)) for at, entry in entries.items())
            rows.setdefault(end, _rule_at(table, end))
    return rows


def _rule_at(table: orc.OrcTable, ip: int) -> cfi.CfiRule:
    """The rule the ORC tables give `ip` (after a function rows were added for)."""
    entry = table.find(ip)
    return orc_cfi_rule(entry) if entry is not None else orc_cfi_rule(_UNDEFINED)


_UNDEFINED = orc.OrcEntry(0, 0, orc.REG_UNDEFINED, orc.REG_UNDEFINED, orc.UNDEFINED, False)


def _with_rows(rng: cfi.CfiRange, extra: dict[int, cfi.CfiRule]) -> cfi.CfiRange:
    """`rng` with the rows in `extra` replacing those it had at their addresses."""
    merged = dict(zip(rng.starts, rng.rules))
    merged.update((at, rule) for at, rule in extra.items() if rng.starts[0] <= at < rng.end)
    starts = sorted(merged)
    return cfi.CfiRange(starts, [merged[at] for at in starts], rng.end)


def orc_cfi_ranges(dump: Dump) -> tuple[cfi.CfiLayout, list[cfi.CfiRange]]:
    """(CfiLayout, [CfiRange]) for the core kernel's and each loaded module's
    ORC table, at runtime addresses."""
    syms = CodeSymbols(dump)
    table = orc.OrcTable(dump, syms)  # UnsupportedError when the dump has no ORC
    tables = [(table.ips, table.entries_at, max(table.ranges[-1][1], table.ips[-1] + 1))]
    tables += [(ips, at, hi) for _, hi, ips, at in table.modules]
    entries: dict[bytes, orc.OrcEntry] = {}
    plain: dict[bytes, cfi.CfiRule] = {}  # rules of CALL/END/UNDEFINED entries, by raw entry
    entry_frames: dict[tuple[bytes, bool], cfi.CfiRule] = {}  # REGS rules, by (raw, user entry)
    ranges = []
    for ips, entries_at, end in tables:
        raw = dump.read(entries_at, 6 * len(ips))
        out = []
        for i in range(len(ips)):
            word = raw[6 * i : 6 * i + 6]
            rule = plain.get(word)
            if rule is None:
                entry = entries.get(word)
                if entry is None:
                    entry = entries[word] = orc.decode_entry(word, table.new_layout)
                if entry.type in (orc.REGS, orc.REGS_PARTIAL):  # few: the name decides
                    user = (syms.function_name(ips[i]) or "").split(".")[0] in USER_ENTRY_SYMBOLS
                    rule = entry_frames.get((word, user))
                    if rule is None:
                        rule = entry_frames[(word, user)] = orc_cfi_rule(entry, user)
                else:
                    rule = plain[word] = orc_cfi_rule(entry)
            out.append(rule)
        ranges.append(cfi.CfiRange(list(ips), out, end))
    extra = _uncovered_rows(dump, syms, table)
    if extra:
        ranges[0] = _with_rows(ranges[0], extra)
    layout = cfi.CfiLayout(
        address_size=8,
        return_column=DWARF_RA,
        data_align=CFI_DATA_ALIGN,
        initial=cfi.def_cfa(7, 8) + cfi.saved_at_cfa(DWARF_RA, -8, CFI_DATA_ALIGN),
    )
    return layout, ranges
