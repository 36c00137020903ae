"""`kvmcore symfile`: a symbol file for gdb made from the dump alone: the
kernel's and each module's symbols (kvmcore.symbols.elfsym writes the ELF) and
the unwind rows the architecture's unwinder gives (kvmcore.unwind)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import unwind
from ..errors import KvmcoreError
from ..symbols.cfi import encode_debug_frame
from ..symbols.elfsym import write_symbol_file

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


def write_dump_symbol_file(dump: Dump, path: str) -> str:
    """Write the dump's kernel and module symbols, with unwind rows, to an ELF
    file gdb loads in place of the vmlinux; returns a one-line description."""
    try:
        table = dump.kernel.symbol_table()  # with each module's own symbols
    except KvmcoreError:
        table = dump.symbols
    frame, cfi_note = symfile_debug_frame(dump)
    write_symbol_file(table, path, dump.arch.name, dump.kernel_offset, frame)
    return (
        f"kernel symbols at link addresses (the server's qOffsets applies the KASLR "
        f"offset {dump.kernel_offset:#x}){cfi_note}"
    )
