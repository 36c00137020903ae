"""Unwind rows gdb lacks, handed to it as a library (qXfer:libraries).

A Debian vmlinux's `.debug_frame` has no FDE for the entry code written in
assembly (entry_SYSCALL_64, the interrupt and exception entries,
ret_from_fork): gdb falls back to its prologue heuristics there and, below
entry_SYSCALL_64, prints a dozen garbage frames read from the pt_regs
(`0x00007fffb8a60ae0 in ?? ()`...). The kernel's own ORC tables cover that
code, and kvmcore.unwind.orc_cfi turns them into CFI rows (for the syscall
entries: the return address undefined, so the walk ends there as crash's
does). This module writes the rows for the core-kernel code the vmlinux's CFI
does not cover into a small ELF file: a `.text` of no bytes (NOBITS) over
the entry text at its runtime address, in one PT_LOAD, and the
`.debug_frame`. The server lists that file as a library with one segment at
that same address (gdb moves it by nothing), so gdb loads it next to the vmlinux (or
the `kvmcore symfile` file) and finds these FDEs when the vmlinux has none:
gdb looks a pc's FDE up in every objfile.

The file depends only on the kernel build and on which vmlinux CFI it
complements, so it is kept in the index cache, named by its content's hash.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import struct
import tempfile
from bisect import bisect_right
from typing import TYPE_CHECKING

from ..cachedir import index_dir
from ..errors import KvmcoreError

if TYPE_CHECKING:
    from ..dump import Dump
    from ..symbols.cfi import CfiRange

EM_X86_64 = 62
ET_EXEC = 2
SHT_PROGBITS, SHT_STRTAB, SHT_NOBITS = 1, 3, 8
SHF_ALLOC, SHF_EXECINSTR = 2, 4


def _covered(dump: Dump) -> list[tuple[int, int]]:
    """Runtime ranges the vmlinux's .debug_frame has FDEs for (none without one)."""
    if not dump.vmlinux:
        return []
    from ..unwind.dwarf_cfi import debug_frame_of

    try:
        frame = debug_frame_of(dump)
    except KvmcoreError:
        return []
    off = dump.kernel_offset
    merged: list[tuple[int, int]] = []
    for lo, hi, *_ in frame.fdes:
        lo, hi = lo + off, hi + off
        if merged and lo <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], hi))
        else:
            merged.append((lo, hi))
    return merged


def _merge(ranges: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for lo, hi in ranges:
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def uncovered_ranges(rng: CfiRange, covered: list[tuple[int, int]]) -> list[CfiRange]:
    """The parts of `rng` outside `covered` (sorted, disjoint), rules kept."""
    from ..symbols.cfi import CfiRange

    starts_cov = [c[0] for c in covered]
    bounds = [*rng.starts[1:], rng.end]
    out: list[CfiRange] = []
    cur: CfiRange | None = None
    for start, end, rule in zip(rng.starts, bounds, rng.rules):
        lo = start
        while lo < end:
            i = bisect_right(starts_cov, lo) - 1
            if i >= 0 and lo < covered[i][1]:
                lo = covered[i][1]  # inside a covered range: skip to its end
                cur = None
                continue
            nxt = covered[i + 1][0] if i + 1 < len(covered) else end
            hi = min(end, nxt)
            if cur is not None and cur.end == lo:
                cur.starts.append(lo)
                cur.rules.append(rule)
                cur.end = hi
            else:
                cur = CfiRange([lo], [rule], hi)
                out.append(cur)
            lo = hi
    return out


def unwind_library(dump: Dump) -> tuple[str, int] | None:
    """(path of the ELF file, the address its .text goes at), or None when
    the dump's architecture gives no rows or none are missing."""
    if dump.arch.name != "x86_64" or dump.os != "linux":
        return None
    from ..symbols.cfi import encode_debug_frame
    from ..unwind.orc_cfi import orc_cfi_ranges

    try:
        layout, ranges = orc_cfi_ranges(dump)
    except KvmcoreError:
        return None
    if not ranges or not ranges[0].starts:
        return None
    kernel = ranges[0]  # the core kernel's (modules have their own debug files)
    lo, hi = dump.symbols.get("__entry_text_start"), dump.symbols.get("__entry_text_end")
    if lo is None or hi is None or not lo < hi:
        return None
    # only the entry text: a library over other code would stand between gdb
    # and the vmlinux there (gdb no longer reports a refused breakpoint in it)
    covered = [(0, lo), *_covered(dump), (hi, 1 << 64)]
    covered.sort()
    parts = uncovered_ranges(kernel, _merge(covered))
    if not parts:
        return None
    base = parts[0].starts[0]
    span = parts[-1].end - base
    frame = encode_debug_frame(parts, layout)
    image = elf_with_debug_frame(frame, base, span)
    digest = hashlib.sha256(image).hexdigest()[:16]
    build_id = dump.vmcoreinfo.build_id if dump.vmcoreinfo is not None else None
    folder = index_dir(build_id.lower()) if build_id else tempfile.gettempdir()
    path = os.path.join(folder, f"gdb-unwind-{digest}.elf")
    if not os.path.exists(path):
        _write(path, image)
    return path, base


def _write(path: str, data: bytes) -> None:
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".gdb-unwind-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def elf_with_debug_frame(frame: bytes, text_addr: int, text_size: int) -> bytes:
    """An x86_64 ELF executable: .text (NOBITS: no bytes, `text_size` long
    at `text_addr`, in one PT_LOAD) and `.debug_frame`; nothing else."""
    shstr = b"\0.text\0.debug_frame\0.shstrtab\0"
    names = {".text": 1, ".debug_frame": 7, ".shstrtab": 20}
    ehsize, phentsize, shentsize = 64, 56, 64
    frame_off = ehsize + phentsize
    shstr_off = frame_off + len(frame)
    sh_off = (shstr_off + len(shstr) + 7) & ~7
    header = struct.pack(
        "<4sBBBBB7xHHIQQQIHHHHHH",
        b"\x7fELF",
        2,  # ELFCLASS64
        1,  # little endian
        1,  # EV_CURRENT
        0,
        0,
        ET_EXEC,
        EM_X86_64,
        1,
        0,  # entry
        ehsize,  # phoff
        sh_off,
        0,  # flags
        ehsize,
        phentsize,
        1,  # phnum
        shentsize,
        4,  # shnum
        3,  # shstrndx
    )
    # PT_LOAD, R+X, no file bytes
    phdr = struct.pack("<IIQQQQQQ", 1, 5, 0, text_addr, text_addr, 0, text_size, 0x1000)

    def sh(name: int, kind: int, flags: int, addr: int, off: int, size: int, align: int) -> bytes:
        return struct.pack("<IIQQQQIIQQ", name, kind, flags, addr, off, size, 0, 0, align, 0)

    sections = (
        bytes(shentsize)
        + sh(names[".text"], SHT_NOBITS, SHF_ALLOC | SHF_EXECINSTR, text_addr, 0, text_size, 16)
        + sh(names[".debug_frame"], SHT_PROGBITS, 0, 0, frame_off, len(frame), 8)
        + sh(names[".shstrtab"], SHT_STRTAB, 0, 0, shstr_off, len(shstr), 1)
    )
    body = header + phdr + frame + shstr
    return body + bytes(sh_off - len(body)) + sections
