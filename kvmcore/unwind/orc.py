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
Loaded modules have their own tables in the same format (struct module's
arch.num_orcs / orc_unwind_ip / orc_unwind, sorted at load); they are read
when the kernel model and types can list the modules, else module code simply
has no entry (the unwinder then scans the stack).
"""

from __future__ import annotations

import re
import struct
from array import array
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, overload

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


def _kernel_version(dump: Dump) -> tuple[int, int]:
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


class IpTable(Sequence[int]):
    """An orc_unwind_ip array as the sorted instruction addresses it holds,
    each computed when a look-up (a bisection) asks for it: a kernel has
    ~0.5M entries and an unwind needs a few dozen (making them all took 70 ms)."""

    __slots__ = ("start", "rel")

    def __init__(self, start: int, rel: array[int]) -> None:
        self.start = start  # the address of entry 0
        self.rel = rel  # each entry's s32 offset from its own address

    def __len__(self) -> int:
        return len(self.rel)

    @overload
    def __getitem__(self, i: int) -> int: ...

    @overload
    def __getitem__(self, i: slice) -> list[int]: ...

    def __getitem__(self, i: int | slice) -> int | list[int]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self.rel)))]
        if i < 0:
            i += len(self.rel)
        return self.start + 4 * i + self.rel[i]

    def __iter__(self) -> Iterator[int]:
        start = self.start
        return (start + 4 * i + off for i, off in enumerate(self.rel))


class OrcTable:
    """Look-up of the ORC entry covering a core-kernel text address."""

    def __init__(self, dump: Dump, syms: CodeSymbols) -> None:
        start_ip = syms.address("__start_orc_unwind_ip")
        stop_ip = syms.address("__stop_orc_unwind_ip")
        start_orc = syms.address("__start_orc_unwind")
        if start_ip is None or stop_ip is None or start_orc is None:
            why = (
                syms.error
                or "kallsyms has no __start_orc_unwind_ip/__stop_orc_unwind_ip/__start_orc_unwind"
            )
            raise UnsupportedError(f"no ORC tables: {why}", dump.path)
        count = (stop_ip - start_ip) // 4
        if not 0 < count <= MAX_ORC_ENTRIES:
            raise UnsupportedError(
                f"ORC ip table of {count} entries at {start_ip:#x} is implausible", dump.path
            )
        self.dump = dump
        self.ips = self._read_ips(start_ip, count)  # AddressError propagates: caller reports it
        self.entries_at = start_orc
        self._modules: list[tuple[int, int, IpTable, int]] | None = None
        self.new_layout = _kernel_version(dump) >= (6, 4)
        # the tables cover core and init text only; everything else (modules, BPF) has no entry
        text_lo = syms.address("_stext") or self.ips[0]
        text_hi = syms.address("_etext") or self.ips[-1]
        self.ranges = [(text_lo, text_hi)]
        init_lo, init_hi = syms.address("_sinittext"), syms.address("_einittext")
        if init_lo and init_hi:
            self.ranges.append((init_lo, init_hi))
        self._cache: dict[int, OrcEntry] = {}

    def _read_ips(self, start: int, count: int) -> IpTable:
        rel = array("i")
        rel.frombytes(self.dump.read(start, count * 4))
        if self.dump.byteorder != "little":
            rel.byteswap()
        return IpTable(start, rel)

    @property
    def modules(self) -> list[tuple[int, int, IpTable, int]]:
        """(text start, end, sorted ips, entries address) per loaded module."""
        if self._modules is None:
            self._modules = []
            try:
                types = self.dump.types
                off_num = types.offsetof("struct module", "arch.num_orcs")
                off_ip = types.offsetof("struct module", "arch.orc_unwind_ip")
                off_orc = types.offsetof("struct module", "arch.orc_unwind")
                modules = self.dump.kernel.modules()
            except KvmcoreError:
                return self._modules
            for mod in modules:
                try:
                    num = self.dump.read_u32(mod.address + off_num)
                    ip_at = self.dump.read_ptr(mod.address + off_ip)
                    orc_at = self.dump.read_ptr(mod.address + off_orc)
                    if not 0 < num <= MAX_ORC_ENTRIES // 16 or not ip_at or not orc_at:
                        continue
                    self._modules.append(
                        (mod.base, mod.base + mod.size, self._read_ips(ip_at, num), orc_at)
                    )
                except KvmcoreError:
                    continue  # that module's tables are not in the dump
        return self._modules

    def _table_for(self, ip: int) -> tuple[IpTable, int] | None:
        if any(lo <= ip < hi for lo, hi in self.ranges):
            return self.ips, self.entries_at
        for lo, hi, ips, entries_at in self.modules:
            if lo <= ip < hi:
                return ips, entries_at
        return None

    def covers(self, ip: int) -> bool:
        return self._table_for(ip) is not None

    def has_entry_in(self, lo: int, hi: int) -> bool:
        """Whether any entry starts in [lo, hi): objtool skipped a function
        (STACK_FRAME_NON_STANDARD) when none does."""
        table = self._table_for(lo)
        if table is None:
            return False
        ips = table[0]
        idx = bisect_right(ips, lo - 1)
        return idx < len(ips) and ips[idx] < hi

    def find(self, ip: int) -> OrcEntry | None:
        """The entry for `ip`, or None when the address is outside the tables."""
        table = self._table_for(ip)
        if table is None:
            return None
        ips, entries_at = table
        idx = bisect_right(ips, ip) - 1
        if idx < 0:
            return None
        key = entries_at + 6 * idx
        entry = self._cache.get(key)
        if entry is None:
            try:
                raw = self.dump.read(key, 6)
            except KvmcoreError:
                return None
            entry = decode_entry(raw, self.new_layout)
            self._cache[key] = entry
        return entry
