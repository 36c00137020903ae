"""The x86_64 ORC tables, read from the dump itself (no vmlinux needed).

`__start_orc_unwind_ip` .. `__stop_orc_unwind_ip` is a sorted array of s32,
each the offset of an instruction address from the entry's own address;
`__start_orc_unwind` is the parallel array of 6-byte `struct orc_entry`.
Layouts (arch/x86/include/asm/orc_types.h; checked against the DWARF of
Debian's 6.1 vmlinux: sp_reg at bit 32, bp_reg 36, type 40 (2 bits), end 42):
  up to 6.3:  s16 sp_offset, s16 bp_offset, sp_reg:4, bp_reg:4, type:2, end:1
              types CALL=0, REGS=1, REGS_PARTIAL=2
  6.4 on:     ... sp_reg:4, bp_reg:4, type:3, signal:1
              types UNDEFINED=0, END_OF_STACK=1, CALL=2, REGS=3, REGS_PARTIAL=4
The core kernel's tables only; module code has its own (struct module's
arch.orc_unwind*), which callers treat as "no entry".
"""
from __future__ import annotations

import re
import struct
from array import array
from bisect import bisect_right
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import KvmcoreError, UnsupportedError
from .symbolic import CodeSymbols

if TYPE_CHECKING:
    from ..dump import Dump

# ORC_REG_*: where the previous frame's SP (CFA) or BP is based
REG_UNDEFINED, REG_PREV_SP, REG_DX, REG_DI, REG_BP, REG_SP = 0, 1, 2, 3, 4, 5
REG_R10, REG_R13, REG_BP_INDIRECT, REG_SP_INDIRECT = 6, 7, 8, 9

# normalised entry types (independent of the kernel's numbering)
CALL, REGS, REGS_PARTIAL, END, UNDEFINED = "call", "regs", "regs_partial", "end", "undefined"

MAX_ORC_ENTRIES = 4_000_000  # a 6.x distro kernel has ~0.5M


@dataclass(frozen=True)
class OrcEntry:
    sp_offset: int
    bp_offset: int
    sp_reg: int
    bp_reg: int
    type: str
    signal: bool


def _kernel_version(dump: "Dump") -> tuple[int, int]:
    info = dump.vmcoreinfo
    m = re.match(r"(\d+)\.(\d+)", (info.osrelease if info else None) or "")
    return (int(m[1]), int(m[2])) if m else (6, 1)


def decode_entry(raw: bytes, new_layout: bool) -> OrcEntry:
    sp_offset, bp_offset, bits = struct.unpack("<hhH", raw)
    sp_reg, bp_reg = bits & 0xF, (bits >> 4) & 0xF
    if new_layout:
        code = (bits >> 8) & 7
        kind = {0: UNDEFINED, 1: END, 2: CALL, 3: REGS, 4: REGS_PARTIAL}.get(code, UNDEFINED)
        signal = bool((bits >> 11) & 1) or kind in (REGS, REGS_PARTIAL)
    else:
        code, end = (bits >> 8) & 3, (bits >> 10) & 1
        kind = END if end else {0: CALL, 1: REGS, 2: REGS_PARTIAL}.get(code, UNDEFINED)
        signal = kind in (REGS, REGS_PARTIAL)
    if sp_reg == REG_UNDEFINED and kind != END:
        kind = UNDEFINED
    return OrcEntry(sp_offset, bp_offset, sp_reg, bp_reg, kind, signal)


class OrcTable:
    """Look-up of the ORC entry covering a core-kernel text address."""

    def __init__(self, dump: "Dump", syms: CodeSymbols) -> None:
        start_ip = syms.address("__start_orc_unwind_ip")
        stop_ip = syms.address("__stop_orc_unwind_ip")
        start_orc = syms.address("__start_orc_unwind")
        if start_ip is None or stop_ip is None or start_orc is None:
            why = syms.error or "kallsyms has no __start_orc_unwind_ip/__stop_orc_unwind_ip/__start_orc_unwind"
            raise UnsupportedError(f"no ORC tables: {why}", dump.path)
        count = (stop_ip - start_ip) // 4
        if not 0 < count <= MAX_ORC_ENTRIES:
            raise UnsupportedError(f"ORC ip table of {count} entries at {start_ip:#x} is implausible",
                                   dump.path)
        rel = array("i")
        rel.frombytes(dump.read(start_ip, count * 4))  # AddressError propagates: caller reports it
        if dump.byteorder != "little":
            rel.byteswap()
        self.ips = [start_ip + 4 * i + off for i, off in enumerate(rel)]
        self.entries_at = start_orc
        self.dump = dump
        self.new_layout = _kernel_version(dump) >= (6, 4)
        # the tables cover core and init text only; everything else (modules, BPF) has no entry
        text_lo = syms.address("_stext") or self.ips[0]
        text_hi = syms.address("_etext") or self.ips[-1]
        self.ranges = [(text_lo, text_hi)]
        init_lo, init_hi = syms.address("_sinittext"), syms.address("_einittext")
        if init_lo and init_hi:
            self.ranges.append((init_lo, init_hi))
        self._cache: dict[int, OrcEntry] = {}

    def covers(self, ip: int) -> bool:
        return any(lo <= ip < hi for lo, hi in self.ranges)

    def find(self, ip: int) -> OrcEntry | None:
        """The entry for `ip`, or None when the address is outside the tables."""
        if not self.covers(ip):
            return None
        idx = bisect_right(self.ips, ip) - 1
        if idx < 0:
            return None
        entry = self._cache.get(idx)
        if entry is None:
            try:
                raw = self.dump.read(self.entries_at + 6 * idx, 6)
            except KvmcoreError:
                return None
            entry = decode_entry(raw, self.new_layout)
            self._cache[idx] = entry
        return entry
