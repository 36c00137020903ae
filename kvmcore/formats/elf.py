"""ELF vmcores: Linux /proc/vmcore (kdump), makedumpfile -E, QEMU's
dump-guest-memory, and FreeBSD full dumps.

PT_LOAD segments are indexed by physical address (p_paddr). Tolerates what
real dumpers write: program headers anywhere in the file (QEMU 7.2 puts them
after two section headers and writes a bogus e_ehsize), PN_XNUM segment
counts (QEMU paging=true), an i386 guest in an ELF64 container, and either
byte order and class.
"""

from __future__ import annotations

import bisect
import struct

from ..errors import DumpFormatError, NotInDumpError
from ..fileio import ByteSource
from ..notes import ByteOrder, parse_notes
from . import register_format
from .base import PhysicalMemory, PhysRange, RangeMap, excluded

PT_LOAD = 1
PT_NOTE = 4
PN_XNUM = 0xFFFF
ELFOSABI_FREEBSD = 9
ELFOSABI_STANDALONE = 255

#: e_machine -> (normalized arch name, kernel word size in bytes)
MACHINES = {
    3: ("i386", 4),
    62: ("x86_64", 8),
    183: ("aarch64", 8),
    40: ("arm", 4),
    20: ("ppc", 4),
    21: ("ppc64", 8),
    22: ("s390x", 8),
    243: ("riscv64", 8),
    8: ("mips", 4),
}

MAX_PHDRS = 1 << 20  # bound on segment count: QEMU paging=true writes ~65k


class ElfHeader:
    """The fields of an ELF header that a dump reader needs."""

    def __init__(self, source: ByteSource) -> None:
        ident = source.pread(0, 16)
        if ident[:4] != b"\x7fELF":
            raise DumpFormatError("no ELF magic", source.path)
        self.elfclass = ident[4]
        if self.elfclass not in (1, 2):
            raise DumpFormatError(f"bad ELF class {self.elfclass}", source.path)
        if ident[5] not in (1, 2):
            raise DumpFormatError(f"bad ELF data encoding {ident[5]}", source.path)
        self.byteorder: ByteOrder = "little" if ident[5] == 1 else "big"
        self.osabi = ident[7]
        e = "<" if ident[5] == 1 else ">"
        self.endian = e
        if self.elfclass == 2:
            fields = struct.unpack(e + "HHIQQQIHHHHHH", source.pread(16, 48))
        else:
            fields = struct.unpack(e + "HHIIIIIHHHHHH", source.pread(16, 36))
        (
            self.e_type,
            self.e_machine,
            _version,
            _entry,
            self.e_phoff,
            self.e_shoff,
            _flags,
            _ehsize,
            self.e_phentsize,
            self.e_phnum,
            self.e_shentsize,
            self.e_shnum,
            _shstrndx,
        ) = fields


@register_format(priority=10)
class ElfDump(PhysicalMemory):
    """An ELF core file whose PT_LOADs hold physical memory."""

    format_name = "elf"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return source.size >= 52 and source.pread(0, 4) == b"\x7fELF"

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source)
        hdr = ElfHeader(source)
        self.header = hdr
        if hdr.e_type != 4:  # ET_CORE
            raise DumpFormatError(
                f"is an ELF file but not a core dump (e_type {hdr.e_type}); "
                "pass the vmlinux as the second argument",
                source.path,
            )
        phnum = hdr.e_phnum
        if phnum == PN_XNUM:
            phnum = self._xnum_count(hdr)
        if phnum > MAX_PHDRS:
            raise DumpFormatError(f"implausible program header count {phnum}", source.path)
        entsize = 56 if hdr.elfclass == 2 else 32
        if hdr.e_phentsize and hdr.e_phentsize < entsize:
            raise DumpFormatError(f"bad e_phentsize {hdr.e_phentsize}", source.path)
        stride = hdr.e_phentsize or entsize
        table = source.pread(hdr.e_phoff, phnum * stride)
        runs: list[tuple[int, int, int]] = []
        holes: list[tuple[int, int]] = []  # [filesz, memsz) tails: excluded by filtering
        self.segments: list[tuple[int, int, int, int, int]] = []
        e = hdr.endian
        for i in range(phnum):
            raw = table[i * stride : i * stride + entsize]
            if hdr.elfclass == 2:
                p_type, _flags, off, vaddr, paddr, filesz, memsz, _align = struct.unpack(
                    e + "IIQQQQQQ", raw
                )
            else:
                p_type, off, vaddr, paddr, filesz, memsz, _flags, _align = struct.unpack(
                    e + "IIIIIIII", raw
                )
            if p_type == PT_NOTE:
                if off + filesz > source.size:
                    raise DumpFormatError(
                        f"PT_NOTE at {off:#x}+{filesz:#x} lies past the end of the file",
                        source.path,
                    )
                if filesz > getattr(source, "stored_size", source.size):
                    # inside a flattened file's hole: would read as that many zeros
                    raise DumpFormatError(
                        f"PT_NOTE of {filesz:#x} bytes is larger than all the data the file holds",
                        source.path,
                    )
                self.notes += parse_notes(source.pread(off, filesz), hdr.byteorder)
            elif p_type == PT_LOAD:
                self.segments.append((paddr, vaddr, off, filesz, memsz))
                runs.append((paddr, filesz, off))
                if memsz > filesz:
                    holes.append((paddr + filesz, paddr + memsz))
        self._map = RangeMap(_trim_overlaps(runs))
        self._holes = sorted(holes)
        # the holes merged into sorted, disjoint [start, end): one bisection tells
        # whether an address was filtered (makedumpfile -E writes thousands)
        merged: list[list[int]] = []
        for start, end in self._holes:
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        self._last_run = (0, 0, 0)  # (start, end, file offset) of the run read last
        self._hole_starts = [h[0] for h in merged]
        self._hole_ends = [h[1] for h in merged]
        if self.segments:
            last_end = max(off + filesz for _, _, off, filesz, _ in self.segments)
            self.metadata["expected_size"] = last_end
            self.metadata["truncated"] = last_end > source.size
        self.metadata["phnum"] = phnum
        self.metadata["elf_class"] = 64 if hdr.elfclass == 2 else 32
        machine, word = MACHINES.get(hdr.e_machine, (None, None))
        f = self.facts
        f.machine = machine
        f.word_size = word or (8 if hdr.elfclass == 2 else 4)
        f.byteorder = hdr.byteorder
        if any(n.name == "VMCOREINFO" for n in self.notes):
            f.os = "linux"
        elif hdr.osabi in (ELFOSABI_FREEBSD, ELFOSABI_STANDALONE) and not self.notes:
            f.os = "freebsd"
        info = self.vmcoreinfo
        if info and info.page_size:
            f.page_size = info.page_size
        self.metadata["producer"] = self._producer()
        if f.os == "linux" and not self.prstatus_notes():
            self.metadata["notes_problem"] = (
                "CPU registers missing: the ELF notes hold no NT_PRSTATUS"
            )

    def _xnum_count(self, hdr: ElfHeader) -> int:
        """With PN_XNUM the real count sits in section header 0's sh_info."""
        if not hdr.e_shoff:
            raise DumpFormatError("e_phnum is PN_XNUM but there is no section header", self.path)
        if hdr.elfclass == 2:
            sh = self.source.pread(hdr.e_shoff, 64)
            return struct.unpack(hdr.endian + "I", sh[44:48])[0]
        sh = self.source.pread(hdr.e_shoff, 40)
        return struct.unpack(hdr.endian + "I", sh[28:32])[0]

    def _producer(self) -> str:
        names = {n.name for n in self.notes}
        if "QEMU" in names or (self.header.e_phoff != 64 and self.header.elfclass == 2):
            return "qemu"
        if "VMCOREINFO" in names:
            info = self.vmcoreinfo
            return "kdump" if info and info.crashtime is not None else "elf"
        return "elf"

    def ranges(self) -> list[PhysRange]:
        return self._map.ranges()

    def is_excluded(self, pa: int) -> bool:
        return self._map.lookup(pa) is None and self._in_hole(pa)

    def _in_hole(self, pa: int) -> bool:
        i = bisect.bisect_right(self._hole_starts, pa) - 1
        return i >= 0 and pa < self._hole_ends[i]

    def read_phys(self, pa: int, length: int) -> bytes:
        if length <= 0:
            return b""
        last = self._last_run  # a QEMU ELF has a few PT_LOADs: mostly the same one
        if last[0] <= pa and pa + length <= last[1]:
            return self.source.pread(last[2] + pa - last[0], length)
        run = self._map.lookup(pa)
        if run is not None and pa + length <= run[0] + run[1]:
            self._last_run = (run[0], run[0] + run[1], run[2])
            return self.source.pread(run[2] + pa - run[0], length)  # fast path
        if run is None and self._in_hole(pa):
            raise excluded(pa, self.path)
        try:
            return self._map.read(self.source, pa, length, self.path)
        except NotInDumpError as exc:  # the range runs into a hole: filtered, say so
            if exc.address is not None and self._in_hole(exc.address):
                raise excluded(exc.address, self.path) from None
            raise

    def read_phys_filled(self, pa: int, length: int, filtered: list[tuple[int, int]]) -> bytes:
        """read_phys, with the pages the dump's producer filtered out (the
        holes of PT_LOADs whose p_filesz < p_memsz) read as zeros and each
        such span appended to `filtered` as (pa, length): a run of them costs
        one step, not an exception per page."""
        last = self._last_run  # mostly within the PT_LOAD read last, as in read_phys
        if last[0] <= pa and pa + length <= last[1]:
            return self.source.pread(last[2] + pa - last[0], length)
        out: list[bytes] = []
        starts, runs = self._map.starts, self._map.runs
        while length > 0:
            i = bisect.bisect_right(starts, pa) - 1
            start, rlen, off = runs[i] if i >= 0 else (0, 0, 0)
            if pa < start + rlen:
                n = min(length, start + rlen - pa)
                self._last_run = (start, start + rlen, off)
                out.append(self.source.pread(off + pa - start, n))
            else:
                h = bisect.bisect_right(self._hole_starts, pa) - 1
                if h < 0 or pa >= self._hole_ends[h]:
                    raise NotInDumpError(
                        f"physical address {pa:#x} is not in the dump", pa, self.path
                    )
                n = min(length, self._hole_ends[h] - pa)
                if i + 1 < len(starts):
                    n = min(n, starts[i + 1] - pa)
                out.append(bytes(n))
                filtered.append((pa, n))
            pa += n
            length -= n
        return out[0] if len(out) == 1 else b"".join(out)

    def file_offset(self, pa: int) -> int | None:
        run = self._map.lookup(pa)
        return None if run is None else run[2] + pa - run[0]

    def file_run(self, pa: int, length: int) -> int | None:
        run = self._map.lookup(pa)
        if run is None or pa + length > run[0] + run[1]:
            return None
        offset: int = run[2] + pa - run[0]
        return offset if offset + length <= self.source.size else None  # not past a truncation

    def describe(self) -> str:
        return {"qemu": "ELF (QEMU dump-guest-memory)", "kdump": "ELF (/proc/vmcore, kdump)"}.get(
            self.metadata["producer"], "ELF vmcore"
        )


def _trim_overlaps(runs: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Drop what later segments repeat of earlier ones (/proc/vmcore maps the
    kernel text twice: once at its own PT_LOAD, once inside the direct map)."""
    out: list[tuple[int, int, int]] = []
    for start, length, off in sorted(runs, key=lambda r: (r[0], -r[1])):
        if out:
            pstart, plen, _ = out[-1]
            pend = pstart + plen
            if start < pend:
                cut = pend - start
                if cut >= length:
                    continue
                start, length, off = start + cut, length - cut, off + cut
        out.append((start, length, off))
    return out
