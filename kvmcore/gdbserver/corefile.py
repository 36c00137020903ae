"""`kvmcore core DUMP -o FILE`: the dump rewritten as an ELF core that gdb
opens natively (`gdb vmlinux FILE`), so it reads memory at its own speed.

- PT_LOAD segments at kernel virtual addresses (p_vaddr), one per run of
  virtually contiguous mapped pages (the kernel's page tables walked once;
  gaps up to 64 KB, such as the guard pages between vmalloc areas and
  stacks, are merged in), with the
  physical address of its first page in p_paddr. Pages the dump lacks
  (filtered out, not dumped) and merged gaps are holes of the sparse file:
  gdb reads them as zeros, and `kvmcore read` on the original dump says which
  they are.
- One NT_PRSTATUS note per task, so tasks are gdb threads (pr_pid = the
  task's pid, registers as the kernel model has them: a running task's CPU
  registers, a sleeping task's switch frame), the panicking task first.
- The dump's VMCOREINFO note, and a "KVMCORE" note with the KASLR offset, for
  `symbol-file -o` and for tools that read VMCOREINFO.
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import KvmcoreError
from ..notes import NT_PRSTATUS

if TYPE_CHECKING:
    from ..dump import Dump

PT_LOAD, PT_NOTE = 1, 4
PF_R, PF_W, PF_X = 4, 2, 1
ET_CORE = 4
PAGE = 4096
COPY_CHUNK = 1 << 20
MAX_SEGMENTS = 0xFFFE  # below PN_XNUM
MERGE_GAP = 64 << 10


@dataclass
class Segment:
    va: int
    size: int
    runs: list[tuple[int, int, int]]  # (va, pa, size) pieces, physically contiguous


def _segments(dump: Dump) -> list[Segment]:
    """Virtually contiguous runs of mapped pages, merged across physical gaps
    and across virtual gaps of at most MERGE_GAP (vmalloc's guard pages would
    otherwise make tens of thousands of segments): those read as zeros."""
    out: list[Segment] = []
    for rng in dump.walk_pages():
        if out and 0 <= rng.va - (out[-1].va + out[-1].size) <= MERGE_GAP:
            out[-1].size = rng.va + rng.size - out[-1].va
            out[-1].runs.append((rng.va, rng.pa, rng.size))
        else:
            out.append(Segment(rng.va, rng.size, [(rng.va, rng.pa, rng.size)]))
    if len(out) > MAX_SEGMENTS:
        raise KvmcoreError(
            f"the kernel maps {len(out)} separate ranges: more than an ELF "
            f"core's {MAX_SEGMENTS} program headers",
            dump.path,
        )
    return out


def _note(name: str, ntype: int, desc: bytes, e: str) -> bytes:
    raw_name = name.encode() + b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)  # noqa: E731
    return struct.pack(e + "III", len(raw_name), len(desc), ntype) + pad(raw_name) + pad(desc)


def _prstatus(dump: Dump, pid: int, regs: dict[str, int]) -> bytes:
    layout = dump.arch.prstatus
    if layout is None:
        raise KvmcoreError(f"{dump.arch.name}: no NT_PRSTATUS layout to write", dump.path)
    desc = bytearray(layout.size)
    desc[layout.pid_offset : layout.pid_offset + 4] = (pid & 0xFFFFFFFF).to_bytes(4, dump.byteorder)
    mask = (1 << (layout.reg_size * 8)) - 1
    for i, name in enumerate(layout.reg_names):
        off = layout.regs_offset + i * layout.reg_size
        desc[off : off + layout.reg_size] = (regs.get(name, 0) & mask).to_bytes(
            layout.reg_size, dump.byteorder
        )
    return bytes(desc)


def _task_notes(dump: Dump, e: str) -> tuple[bytes, int]:
    """NT_PRSTATUS notes of every task whose registers can be had, the
    panicking task first (gdb's first thread is the current one)."""
    kernel = dump.kernel
    tasks = list(kernel.tasks())
    panic = None
    with contextlib.suppress(KvmcoreError):
        panic = kernel.panic_task()
    if panic is not None:
        tasks.sort(key=lambda t: t.address != panic.address)
    out, count, seen = bytearray(), 0, set()
    for task in tasks:
        tid = task.tid if task.tid > 0 else 0x40000000 + task.cpu  # idle tasks: one per CPU
        if tid in seen:
            continue
        try:
            regs = task.registers()
        except KvmcoreError:
            continue
        if not regs:
            continue
        seen.add(tid)
        out += _note("CORE", NT_PRSTATUS, _prstatus(dump, tid, regs), e)
        count += 1
    return bytes(out), count


def write_core(dump: Dump, path: str) -> dict[str, Any]:
    """Write the ELF core of `dump` to `path`; return what was written."""
    e = "<" if dump.byteorder == "little" else ">"
    is64 = dump.word_size == 8
    segments = _segments(dump)
    notes, threads = _task_notes(dump, e)
    if dump.vmcoreinfo is not None:
        notes += _note("VMCOREINFO", 0, dump.vmcoreinfo.text.encode(), e)
    notes += _note("KVMCORE", 1, f"KERNELOFFSET={dump.kernel_offset:x}\n".encode(), e)

    ehsize, phentsize = (64, 56) if is64 else (52, 32)
    phnum = 1 + len(segments)
    offset = ehsize + phentsize * phnum
    note_offset = offset
    offset = (offset + len(notes) + PAGE - 1) & ~(PAGE - 1)
    headers = []
    if is64:
        headers.append(struct.pack(e + "IIQQQQQQ", PT_NOTE, 0, note_offset, 0, 0, len(notes), 0, 4))
    else:
        headers.append(struct.pack(e + "IIIIIIII", PT_NOTE, note_offset, 0, 0, len(notes), 0, 0, 4))
    placed: list[tuple[Segment, int]] = []
    for seg in segments:
        pa = seg.runs[0][1]
        if is64:
            headers.append(
                struct.pack(
                    e + "IIQQQQQQ",
                    PT_LOAD,
                    PF_R | PF_W | PF_X,
                    offset,
                    seg.va,
                    pa,
                    seg.size,
                    seg.size,
                    PAGE,
                )
            )
        else:
            headers.append(
                struct.pack(
                    e + "IIIIIIII",
                    PT_LOAD,
                    offset,
                    seg.va,
                    pa,
                    seg.size,
                    seg.size,
                    PF_R | PF_W | PF_X,
                    PAGE,
                )
            )
        placed.append((seg, offset))
        offset += seg.size
    ident = b"\x7fELF" + bytes([2 if is64 else 1, 1 if e == "<" else 2, 1, 0]) + bytes(8)
    if is64:
        ehdr = ident + struct.pack(
            e + "HHIQQQIHHHHHH",
            ET_CORE,
            dump.arch.elf_machine,
            1,
            0,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            phnum,
            0,
            0,
            0,
        )
    else:
        ehdr = ident + struct.pack(
            e + "HHIIIIIHHHHHH",
            ET_CORE,
            dump.arch.elf_machine,
            1,
            0,
            ehsize,
            0,
            0,
            ehsize,
            phentsize,
            phnum,
            0,
            0,
            0,
        )
    written = missing = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.pwrite(fd, ehdr + b"".join(headers), 0)
        os.pwrite(fd, notes, note_offset)
        for seg, file_offset in placed:
            for va, data in _pages(dump, seg):
                if data is None:
                    missing += 1
                    continue
                os.pwrite(fd, data, file_offset + (va - seg.va))
                written += len(data)
        os.ftruncate(fd, offset)  # trailing holes
    finally:
        os.close(fd)
    return {
        "path": path,
        "segments": len(segments),
        "threads": threads,
        "bytes_written": written,
        "file_size": offset,
        "missing_pages": missing,
        "kernel_offset": dump.kernel_offset,
    }


def _pages(dump: Dump, seg: Segment) -> Iterator[tuple[int, bytes | None]]:
    """(va, bytes) of a segment in large reads; a page the dump lacks is (va, None)."""
    for va, pa, size in seg.runs:
        done = 0
        while done < size:
            n = min(COPY_CHUNK, size - done)
            try:
                yield va + done, dump.read_phys(pa + done, n)
            except KvmcoreError:
                for page in range(0, n, PAGE):
                    try:
                        yield va + done + page, dump.read_phys(pa + done + page, PAGE)
                    except KvmcoreError:
                        yield va + done + page, None
            done += n
