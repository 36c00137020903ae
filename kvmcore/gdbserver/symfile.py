"""`kvmcore symfile`: a symbol file for gdb made from the dump alone: the
kernel's and each module's symbols (kvmcore.symbols.elfsym writes the ELF),
the unwind rows the architecture's unwinder gives (kvmcore.unwind), and the
kernel's types from its BTF as DWARF (kvmcore.types.btfdwarf) with the global
variables whose types are known: BTF's VARs (the per-CPU variables) and the
well-known globals (kvmcore.objects.WELL_KNOWN_GLOBALS)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from .. import unwind
from ..errors import KvmcoreError
from ..linux.scan import find_jiffies
from ..objects import WELL_KNOWN_GLOBALS
from ..symbols.cfi import encode_debug_frame
from ..symbols.dwarfgen import DieWriter
from ..symbols.elfsym import write_symbol_file
from ..symbols.table import Symbol
from ..types.btf import BtfTypes
from ..types.btfdwarf import DwarfSections, Variable, btf_to_dwarf

if TYPE_CHECKING:
    from ..dump import Dump


def symfile_debug_frame(dump: Dump) -> tuple[bytes | None, str]:
    """The arch's call-frame rows as .debug_frame bytes (at link addresses:
    gdb shifts every FDE of the file by its .text offset, as it does the
    kernel symbols), and a note for the user."""
    try:
        cfi = unwind.symfile_cfi(dump)
    except KvmcoreError as exc:
        return None, f"; no unwind rows ({exc}): gdb can name only frame #0"
    if cfi is None:
        return None, ""
    layout, ranges = cfi
    frame = encode_debug_frame(ranges, layout, shift=dump.kernel_offset)
    rows = sum(len(r.starts) for r in ranges)
    return frame, f", .debug_frame from {rows} unwind entries"


def _btf(dump: Dump) -> BtfTypes | None:
    try:
        sources = dump.types.sources
    except KvmcoreError:
        return None
    return next((s for s in sources if isinstance(s, BtfTypes)), None)


_BASE_NAMES = {  # C spellings -> the names GCC (and so BTF) gives base types
    "unsigned long": "long unsigned int",
    "unsigned int": "unsigned int",
    "long": "long int",
    "int": "int",
}


def _c_type_id(btf: BtfTypes, cname: str) -> int | None:
    """The BTF id of a type named as C names it ("struct list_head", "u64",
    "unsigned long")."""
    for space in ("struct", "union", "enum"):
        if cname.startswith(space + " "):
            t = btf.lookup(space, cname[len(space) + 1 :])
            break
    else:
        t = btf.lookup("typedef", cname) or btf.lookup("base", _BASE_NAMES.get(cname, cname))
    return t.key if t is not None and isinstance(t.key, int) else None


def _global_address(dump: Dump, name: str) -> int | None:
    kernel = dump.kernel
    addr = kernel.symbol(name) if hasattr(kernel, "symbol") else dump.resolve_symbol(name)
    if addr is None and name == "init_task":
        with contextlib.suppress(KvmcoreError, AttributeError):
            addr = kernel.init_task  # found by a validated scan of the image
    if addr is None and name in ("jiffies", "jiffies_64"):
        with contextlib.suppress(KvmcoreError):
            addr = find_jiffies(dump)  # arm64: from jiffies_read's code
    return addr


def symfile_variables(dump: Dump, btf: BtfTypes) -> tuple[list[Variable], list[Symbol]]:
    """The globals whose types and addresses are known: BTF's VARs (per-CPU
    variables: the address is the symbol's, a per-CPU offset), then the
    well-known globals. A kernel-image address is written at its link
    address (DW_OP_addr, moved by gdb with the file's offset, as the ELF
    symbols are); a per-CPU offset below the kernel half (x86_64) as a
    constant gdb does not relocate. Also ELF symbols for those of them
    (kernel-half addresses) the symbol table lacks, for gdb's `info symbol`
    and `<init_task+...>` in printed pointers."""
    w = DieWriter(dump.word_size)
    floor = 1 << (dump.word_size * 8 - 1)
    offset = dump.kernel_offset

    def location(addr: int) -> bytes:
        if addr >= floor:
            return w.addr_expr(addr - offset)
        return w.const_expr(addr)

    out: list[Variable] = []
    missing: list[Symbol] = []

    def add(name: str, type_id: int, addr: int) -> None:
        out.append(Variable(name, type_id, location(addr)))
        if addr >= floor and dump.resolve_symbol(name) is None:
            t = btf.type_by_id(type_id)
            size = (t.strip().size or 0) if t is not None and t.strip().kind != "array" else 0
            missing.append(Symbol(name, addr, size, "D", None))

    percpu_start: int | None = None
    for tid in range(1, len(btf) + 1):
        if btf.kind_of(tid) != "datasec":
            continue
        sec = btf.type_by_id(tid)
        if sec is None:
            continue
        for m in sec.members:
            var = m.type
            if var.kind != "var" or not var.name or not isinstance(var.target_key, int):
                continue
            addr = _global_address(dump, var.name)
            if addr is None and sec.name == ".data..percpu":
                if percpu_start is None:
                    percpu_start = _global_address(dump, "__per_cpu_start") or -1
                if percpu_start >= 0:
                    addr = percpu_start + m.offset
            if addr is not None:
                add(var.name, var.target_key, addr)
    for name, cname in WELL_KNOWN_GLOBALS.items():
        type_id = _c_type_id(btf, cname)
        addr = _global_address(dump, name)
        if type_id is not None and addr is not None:
            add(name, type_id, addr)
    return out, missing


def symfile_dwarf(dump: Dump) -> tuple[DwarfSections | None, list[Symbol], str]:
    """The BTF's types and the known globals as DWARF sections, the ELF
    symbols the globals need, and a note."""
    btf = _btf(dump)
    if btf is None:
        return None, [], "; no BTF: no types"
    try:
        variables, missing = symfile_variables(dump, btf)
        dwarf = btf_to_dwarf(
            btf, variables, dump.word_size, "<" if dump.byteorder == "little" else ">"
        )
    except KvmcoreError as exc:
        return None, [], f"; no types ({exc})"
    return (
        dwarf,
        missing,
        (
            f", DWARF of {dwarf.types} BTF types and {dwarf.variables} variables "
            f"({len(dwarf.info) + len(dwarf.abbrev) + len(dwarf.strings)} bytes)"
        ),
    )


def write_dump_symbol_file(dump: Dump, path: str) -> str:
    """Write the dump's kernel and module symbols, with unwind rows, to an ELF
    file gdb loads in place of the vmlinux; returns a one-line description."""
    try:
        table = dump.kernel.symbol_table()  # with each module's own symbols
    except KvmcoreError:
        table = dump.symbols
    frame, cfi_note = symfile_debug_frame(dump)
    dwarf, missing, dwarf_note = symfile_dwarf(dump)
    write_symbol_file(
        table,
        path,
        dump.arch.name,
        dump.kernel_offset,
        frame,
        dwarf.sections() if dwarf else None,
        missing,
    )
    return (
        f"kernel symbols at link addresses (the server's qOffsets applies the KASLR "
        f"offset {dump.kernel_offset:#x}){cfi_note}{dwarf_note}"
    )
