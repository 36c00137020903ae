"""PhysicalMemory: what every dump format gives the layers above it.

A format module reads one container (ELF vmcore, kdump-compressed, FreeBSD
minidump, raw image...) and exposes the machine's physical memory, the notes
the dumper left, and facts about the dump. It knows nothing of page tables.
"""

from __future__ import annotations

import bisect
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..errors import NotInDumpError, PageExcludedError
from ..fileio import ByteSource
from ..notes import NT_PRSTATUS, ByteOrder, Note, VmcoreInfo
from .vmcoreinfo_scan import find_vmcoreinfo


@dataclass(frozen=True)
class PhysRange:
    """A run of physical memory present in the dump: [start, end)."""

    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class DumpFacts:
    """What a format knows about the machine, before any arch backend runs.

    ``machine`` is a normalized architecture hint ("x86_64", "i386",
    "aarch64", ...) or None; ``os`` is "linux", "freebsd" or None.
    ``kind`` is "full" (page tables must be walked in dumped memory),
    "mini" (the dump carries its own kva map, as FreeBSD minidumps do), or
    the name of a translator flavour the format's memory needs and that
    only that flavour claims ("xen-pv": a Xen PV guest, whose page tables
    hold machine frames; "xen-hvm").
    """

    machine: str | None = None
    os: str | None = None
    word_size: int | None = None
    byteorder: ByteOrder = "little"
    kind: str = "full"
    page_size: int = 4096
    extra: dict[str, Any] = field(default_factory=dict)


class PhysicalMemory(ABC):
    """Physical memory of the dumped machine, read-only."""

    #: short name of the format ("elf", "kdump", ...), set by each subclass
    format_name: ClassVar[str] = "?"

    def __init__(self, source: ByteSource) -> None:
        self.source = source
        self.path = source.path
        self.facts = DumpFacts()
        self.notes: list[Note] = []
        self.metadata: dict[str, Any] = {}

    # -- probing ---------------------------------------------------------
    @classmethod
    @abstractmethod
    def probe(cls, source: ByteSource) -> bool:
        """True when `source` looks like this format (magic check only)."""

    # -- memory ----------------------------------------------------------
    @abstractmethod
    def ranges(self) -> list[PhysRange]:
        """The physical ranges the dump covers, sorted, non-overlapping."""

    @abstractmethod
    def read_phys(self, pa: int, length: int) -> bytes:
        """Read physical memory; raise NotInDumpError / PageExcludedError."""

    def is_excluded(self, pa: int) -> bool:
        """True when the page holding `pa` was filtered out of the dump."""
        return False

    def file_offset(self, pa: int) -> int | None:
        """File offset of `pa`, or None when the page is stored compressed."""
        return None

    def file_run(self, pa: int, length: int) -> int | None:
        """The offset in the file (fileno()) where the `length` bytes at `pa`
        lie whole, in order and uncompressed, so that a reader in C
        (kvmcore._listwalk) may pread them itself; None when they do not, or
        this format cannot say (the default)."""
        return None

    def fileno(self) -> int | None:
        """The descriptor of the file file_run's offsets are in: the source's,
        when it is an open file."""
        fileno = getattr(self.source, "fileno", None)
        return fileno() if fileno is not None else None

    # -- notes -----------------------------------------------------------
    @property
    def vmcoreinfo(self) -> VmcoreInfo | None:
        """The dump's VMCOREINFO: its note (or header copy), else the kernel's
        own note found in memory (scanned once; metadata records where)."""
        for note in self.notes:
            if note.name == "VMCOREINFO":
                return VmcoreInfo.from_bytes(note.desc)
        raw = self.metadata.get("vmcoreinfo_raw")
        if raw:
            return VmcoreInfo.from_bytes(raw)
        if self.facts.os == "freebsd":
            return None  # FreeBSD has none: no scan of its memory
        if "vmcoreinfo_scan" not in self.metadata:
            found = find_vmcoreinfo(self)
            self.metadata["vmcoreinfo_scan"] = found
            if found is not None:
                self.metadata["vmcoreinfo_source"] = f"kernel's note in memory at {found[1]:#x}"
        found = self.metadata["vmcoreinfo_scan"]
        return found[0] if found is not None else None

    def prstatus_notes(self) -> list[Note]:
        return [n for n in self.notes if n.type == NT_PRSTATUS and n.name in ("CORE", "")]

    @property
    def problems(self) -> list[str]:
        """What the format found damaged or missing and read around, one line
        each (`info` and the report list them): the results are partial."""
        problems: list[str] = self.metadata.setdefault("problems", [])
        return problems

    @property
    def notes_problem(self) -> str | None:
        """Why the dump has no per-CPU registers (no NT_PRSTATUS note), or None.
        Then every backtrace, the panicking task's too, can only start from the
        task's last context switch, and the report must say so."""
        return self.metadata.get("notes_problem")

    def close(self) -> None:
        close = getattr(self.source, "close", None)
        if close:
            close()

    def describe(self) -> str:
        return self.format_name


class RangeMap:
    """Sorted, non-overlapping [start, end) ranges mapped to file offsets.

    Shared by every format whose memory is stored as contiguous runs (ELF
    PT_LOADs, FreeBSD full dumps, raw images).
    """

    def __init__(self, runs: list[tuple[int, int, int]]) -> None:
        # runs: (phys_start, length, file_offset); zero-length runs dropped
        self.runs = sorted((r for r in runs if r[1] > 0), key=lambda r: r[0])
        self.starts = [r[0] for r in self.runs]

    def lookup(self, pa: int) -> tuple[int, int, int] | None:
        i = bisect.bisect_right(self.starts, pa) - 1
        if i >= 0:
            start, length, off = self.runs[i]
            if pa < start + length:
                return start, length, off
        return None

    def ranges(self) -> list[PhysRange]:
        out: list[PhysRange] = []
        for start, length, _ in self.runs:
            if out and out[-1].end == start:
                out[-1] = PhysRange(out[-1].start, start + length)
            else:
                out.append(PhysRange(start, start + length))
        return out

    def read(self, source: ByteSource, pa: int, length: int, path: str) -> bytes:
        out = bytearray()
        while length > 0:
            run = self.lookup(pa)
            if run is None:
                raise NotInDumpError(f"physical address {pa:#x} is not in the dump", pa, path)
            start, rlen, off = run
            n = min(length, start + rlen - pa)
            out += source.pread(off + pa - start, n)
            pa += n
            length -= n
        return bytes(out)


def excluded(pa: int, path: str) -> PageExcludedError:
    return PageExcludedError(
        f"physical address {pa:#x} was excluded from the dump by filtering", pa, path
    )
