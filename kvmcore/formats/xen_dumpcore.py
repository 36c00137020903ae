"""Xen domain core files, as `xl dump-core` (xc_domain_dumpcore) writes them.

Layout (xen docs/misc/dump-core-format.txt; tools/libs/guest/xg_core.c and
xg_core.h): an ELF64 ET_CORE file with no program headers and the sections

- `.note.Xen`: notes named "Xen": 0x2000000 (none: marks the file type),
  0x2000001 (header: u64 magic, nr_vcpus, nr_pages, page_size; magic
  0xF00FEBED for a PV guest, 0xF00FEBEE for HVM), 0x2000002 (Xen's version),
  0x2000003 (format version, major << 32 | minor; 0.1 is current);
- `.xen_prstatus`: one vcpu_guest_context per vCPU (formats/xen_vcpu.py);
- `.xen_shared_info`: the domain's shared_info page (optional);
- `.xen_pages`: nr_pages pages, page-aligned;
- `.xen_p2m` (PV: {u64 pfn, u64 gmfn} per page) or `.xen_pfn` (HVM: u64 pfn
  per page): entry i names page i of .xen_pages; ~0 marks an unused entry.

The physical space this format gives is the guest's own: pseudo-physical
frames (pfn) for a PV guest, guest-physical for HVM. A PV guest's page
tables hold machine frames (MFN): `pfn_of_mfn` and `machine_memory()` map
them back through the inverse of .xen_p2m, for the PV translator
(arches/x86_64/xen.py). An MFN that .xen_p2m gives to two pfns is refused
where it is used, never guessed.

The older non-ELF layout (Xen 3.0's xc_core_header_t at offset 0) is not
read: Xen 4.17's toolstack writes only this one, so no sample of it exists.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any

from ..errors import DumpFormatError, NotInDumpError, TruncatedDumpError, UnsupportedError
from ..fileio import ByteSource
from ..notes import Note, parse_notes
from . import register_format
from .base import PhysicalMemory, PhysRange
from .xen_vcpu import CR0_PG, SIZE_X86_64, VcpuContext, parse_x86_64

SHT_NOTE = 7
EM_386, EM_X86_64 = 3, 62
NOTE_NONE, NOTE_HEADER, NOTE_XEN_VERSION, NOTE_FORMAT_VERSION = (
    0x2000000,
    0x2000001,
    0x2000002,
    0x2000003,
)
MAGIC_PV, MAGIC_HVM = 0xF00FEBED, 0xF00FEBEE
INVALID = (1 << 64) - 1
MAX_SECTIONS = 64  # xc_core writes 7 or 8
MAX_VCPUS = 4096
SHDR = struct.Struct("<IIQQQQIIQQ")  # Elf64_Shdr


class _Section:
    def __init__(self, raw: bytes) -> None:
        (
            self.name_off,
            self.type,
            _flags,
            _addr,
            self.offset,
            self.size,
            _link,
            _info,
            _align,
            self.entsize,
        ) = SHDR.unpack(raw)
        self.name = ""

    @property
    def end(self) -> int:
        return self.offset + self.size


def _section_headers(source: ByteSource) -> list[_Section] | None:
    """The section table of an ELF64 little-endian core file with no program
    headers, or None when `source` is not one."""
    if source.size < 64:
        return None
    head = source.pread(0, 64)
    if head[:4] != b"\x7fELF" or head[4] != 2 or head[5] != 1:
        return None
    e_type, _machine = struct.unpack_from("<HH", head, 16)
    e_phnum = struct.unpack_from("<H", head, 56)[0]
    e_shoff = struct.unpack_from("<Q", head, 40)[0]
    e_shentsize, e_shnum = struct.unpack_from("<HH", head, 58)
    if e_type != 4 or e_phnum != 0 or not 0 < e_shnum <= MAX_SECTIONS:
        return None
    if e_shentsize != SHDR.size or e_shoff + e_shnum * SHDR.size > source.size:
        return None
    table = source.pread(e_shoff, e_shnum * SHDR.size)
    return [_Section(table[i * SHDR.size : (i + 1) * SHDR.size]) for i in range(e_shnum)]


def _is_xen_note_section(source: ByteSource, sec: _Section) -> bool:
    """The section opens with Xen's "none" note (namesz 4, descsz 0, "Xen")."""
    if sec.type != SHT_NOTE or sec.size < 16 or sec.end > source.size:
        return False
    namesz, descsz, ntype = struct.unpack("<III", source.pread(sec.offset, 12))
    return (namesz, descsz, ntype) == (4, 0, NOTE_NONE) and source.pread(
        sec.offset + 12, 4
    ) == b"Xen\0"


def _u64s(data: bytes) -> array[int]:
    out = array("Q")
    out.frombytes(data[: len(data) // 8 * 8])
    if sys.byteorder != "little":
        out.byteswap()
    return out


def _cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("latin-1")


@register_format(priority=5)  # before the ELF vmcore reader, which would claim the file
class XenDumpCore(PhysicalMemory):
    """A Xen guest's core file; physical addresses are the guest's pfn space."""

    format_name = "xen"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        sections = _section_headers(source)
        return bool(sections) and any(_is_xen_note_section(source, s) for s in sections or [])

    def __init__(self, source: ByteSource) -> None:
        super().__init__(source)
        sections = _section_headers(source)
        if not sections:
            raise DumpFormatError("not a Xen dump-core file (no ELF64 section table)", self.path)
        self.e_machine = struct.unpack("<H", source.pread(18, 2))[0]
        self.sections = self._named(sections)
        self._read_notes()
        self._read_frames()
        self._read_vcpus()
        self._fill_facts()

    # -- structure ---------------------------------------------------------
    def _named(self, sections: list[_Section]) -> dict[str, _Section]:
        shstrndx = struct.unpack("<H", self.source.pread(62, 2))[0]
        if shstrndx >= len(sections):
            raise DumpFormatError(f"bad section-name table index {shstrndx}", self.path)
        strtab = sections[shstrndx]
        if strtab.end > self.source.size:
            raise TruncatedDumpError(
                f"the file ends at {self.source.size:#x}, before its section names "
                f"(.shstrtab at {strtab.offset:#x}, written last): the dump is truncated",
                self.path,
            )
        names = self.source.pread(strtab.offset, min(strtab.size, 1 << 16))
        out: dict[str, _Section] = {}
        for sec in sections:
            sec.name = _cstr(names[sec.name_off :]) if sec.name_off < len(names) else ""
            if sec.name:
                out.setdefault(sec.name, sec)
        for need in (".note.Xen", ".xen_prstatus", ".xen_pages"):
            if need not in out:
                raise DumpFormatError(f"Xen dump-core file without a {need} section", self.path)
        for sec in out.values():
            if sec.end > self.source.size:
                raise TruncatedDumpError(
                    f"section {sec.name} ({sec.offset:#x}+{sec.size:#x}) runs past the end of "
                    f"the file ({self.source.size:#x} bytes): the dump is truncated",
                    self.path,
                )
        return out

    def _read_notes(self) -> None:
        sec = self.sections[".note.Xen"]
        xen: dict[int, Note] = {}
        for note in parse_notes(self.source.pread(sec.offset, min(sec.size, 1 << 16)), "little"):
            if note.name == "Xen":
                xen.setdefault(note.type, note)
        header = xen.get(NOTE_HEADER)
        if header is None or len(header.desc) < 32:
            raise DumpFormatError("Xen dump-core file without its header note", self.path)
        magic, self.nr_vcpus, self.nr_pages, self.page_size = struct.unpack_from("<4Q", header.desc)
        if magic not in (MAGIC_PV, MAGIC_HVM):
            raise DumpFormatError(f"unknown Xen dump-core magic {magic:#x}", self.path)
        self.pv = magic == MAGIC_PV
        if self.page_size != 4096:
            raise UnsupportedError(
                f"Xen dump-core page size {self.page_size}: only x86's 4096 is read", self.path
            )
        fmt = xen.get(NOTE_FORMAT_VERSION)
        version = struct.unpack_from("<Q", fmt.desc)[0] if fmt and len(fmt.desc) >= 8 else 1
        self.format_version = (version >> 32, version & 0xFFFFFFFF)
        if self.format_version[0] != 0:
            raise UnsupportedError(
                f"Xen dump-core format version {self.format_version[0]}.{self.format_version[1]}:"
                " only major version 0 is read",
                self.path,
            )
        self.xen_version = self._xen_version(xen.get(NOTE_XEN_VERSION))
        self.notes = list(xen.values())

    @staticmethod
    def _xen_version(note: Note | None) -> dict[str, Any]:
        """XEN_ELFNOTE_DUMPCORE_XEN_VERSION: u64 major, minor, extraversion[16],
        compile_info[144], capabilities[1024], changeset[64], ..."""
        if note is None or len(note.desc) < 1264:
            return {}
        major, minor = struct.unpack_from("<QQ", note.desc)
        extra = _cstr(note.desc[16:32])
        return {
            "version": f"{major}.{minor}{extra}",
            "capabilities": _cstr(note.desc[176:1200]),
            "changeset": _cstr(note.desc[1200:1264]),
        }

    def _read_frames(self) -> None:
        """pfn -> page index, from .xen_p2m (PV) or .xen_pfn (HVM)."""
        ps = self.page_size
        pages = self.sections[".xen_pages"]
        table_name = ".xen_p2m" if self.pv else ".xen_pfn"
        other = ".xen_pfn" if self.pv else ".xen_p2m"
        if table_name not in self.sections:
            kind = "PV" if self.pv else "HVM"
            why = f" but a {other} section" if other in self.sections else ""
            raise DumpFormatError(
                f"the header says a {kind} guest, which needs a {table_name} section{why}",
                self.path,
            )
        table = self.sections[table_name]
        width = 16 if self.pv else 8
        entries = min(self.nr_pages, table.size // width)
        #: pages the header counts that .xen_pages really holds
        self.pages_held = min(self.nr_pages, pages.size // ps)
        self.pages_offset = pages.offset
        words = _u64s(self.source.pread(table.offset, entries * width))
        self._pfn_index: dict[int, int] = {}
        self._mfns: array[int] = array("Q")  # PV: machine frame of each index
        problems: list[str] = []
        ambiguous: set[int] = set()
        lost = 0
        step = 2 if self.pv else 1
        for i in range(entries):
            pfn = words[i * step]
            if pfn == INVALID or (self.pv and words[i * step + 1] == INVALID):
                continue
            if i >= self.pages_held:
                lost += 1
                continue
            if pfn in self._pfn_index:
                ambiguous.add(pfn)
            self._pfn_index[pfn] = i
        if self.pv:
            self._mfns = array("Q", (words[i * 2 + 1] for i in range(entries)))
        for pfn in ambiguous:  # two pages claim this pfn: read neither
            del self._pfn_index[pfn]
        self._ambiguous_pfns = ambiguous
        if self.nr_pages != table.size // width:
            problems.append(
                f"{table_name} holds {table.size // width} entries, the header counts "
                f"{self.nr_pages} pages: {entries} are read"
            )
        if lost:
            problems.append(
                f".xen_pages holds {self.pages_held} of the header's {self.nr_pages} pages: "
                f"{lost} pages named in {table_name} are missing"
            )
        if ambiguous:
            problems.append(f"{len(ambiguous)} pfns appear twice in {table_name} and are not read")
        self.problems.extend(problems)
        self._runs = self._pfn_runs()
        self._inverse: dict[int, int] | None = None
        self._shared_mfns: dict[int, list[int]] = {}

    def _pfn_runs(self) -> list[PhysRange]:
        ps = self.page_size
        out: list[PhysRange] = []
        for pfn in self.pfns():
            if out and out[-1].end == pfn * ps:
                out[-1] = PhysRange(out[-1].start, (pfn + 1) * ps)
            else:
                out.append(PhysRange(pfn * ps, (pfn + 1) * ps))
        return out

    def _read_vcpus(self) -> None:
        sec = self.sections[".xen_prstatus"]
        entsize = sec.entsize or SIZE_X86_64
        if entsize < SIZE_X86_64:
            raise UnsupportedError(
                f".xen_prstatus entries of {entsize} bytes: only 64-bit vcpu_guest_context "
                f"({SIZE_X86_64} bytes) is read",
                self.path,
            )
        held = sec.size // entsize
        used = min(held, self.nr_vcpus, MAX_VCPUS)
        if held != self.nr_vcpus:
            self.metadata["notes_problem"] = (
                f"the Xen header counts {self.nr_vcpus} vCPUs but .xen_prstatus holds {held} "
                f"contexts: only the first {used} are used"
            )
            self.problems.append(self.metadata["notes_problem"])
        raw = self.source.pread(sec.offset, used * entsize)
        self.vcpus: list[VcpuContext] = [
            parse_x86_64(raw[i * entsize : (i + 1) * entsize], i) for i in range(used)
        ]

    def _fill_facts(self) -> None:
        f = self.facts
        f.byteorder = "little"
        f.page_size = self.page_size
        f.kind = "xen-pv" if self.pv else "xen-hvm"
        if self.pv:
            if self.e_machine == EM_386:
                raise UnsupportedError(
                    "a 32-bit PV guest's dump: not read (Linux dropped 32-bit PV guests in "
                    "5.9, so no sample exists)",
                    self.path,
                )
            f.machine = "x86_64" if self.e_machine == EM_X86_64 else None
        else:
            f.machine = self._hvm_machine()
        f.word_size = {"x86_64": 8, "i386": 4}.get(f.machine or "")
        self.metadata.update(
            {
                "xen": {
                    "guest": "PV" if self.pv else "HVM",
                    **self.xen_version,
                    "format_version": "{}.{}".format(*self.format_version),
                    "vcpus": self.nr_vcpus,
                    "pages": self.nr_pages,
                },
            }
        )

    def _hvm_machine(self) -> str | None:
        """An HVM guest's width, which the file does not record (its e_machine
        is the dumping host's): a vCPU with paging on and a register above 4G
        runs a 64-bit kernel; paging on with none, a 32-bit one."""
        paged = [v for v in self.vcpus if v.ctrlreg[0] & CR0_PG]
        if any(v.user_regs["rip"] >> 32 or v.user_regs["rsp"] >> 32 for v in paged):
            return "x86_64"
        return "i386" if paged else None

    # -- memory ------------------------------------------------------------
    def ranges(self) -> list[PhysRange]:
        return list(self._runs)

    def _missing(self, pfn: int) -> NotInDumpError:
        pa = pfn * self.page_size
        if pfn in self._ambiguous_pfns:
            return NotInDumpError(
                f"physical address {pa:#x}: pfn {pfn:#x} names two pages of the dump", pa, self.path
            )
        return NotInDumpError(f"physical address {pa:#x} is not in the dump", pa, self.path)

    def read_phys(self, pa: int, length: int) -> bytes:
        if length <= 0:
            return b""
        ps = self.page_size
        parts: list[bytes] = []
        while length > 0:
            pfn, off = divmod(pa, ps)
            first = self._pfn_index.get(pfn)
            if first is None:
                raise self._missing(pfn)
            # one read across the following pages while they sit next in the file
            n, index = min(length, ps - off), first
            while n < length and self._pfn_index.get(pfn + 1) == index + 1:
                pfn, index = pfn + 1, index + 1
                n = min(length, n + ps)
            parts.append(self.source.pread(self.pages_offset + first * ps + off, n))
            pa += n
            length -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def pfns(self) -> list[int]:
        """The pfns whose pages the dump holds, ascending."""
        return sorted(self._pfn_index)

    def file_offset(self, pa: int) -> int | None:
        index = self._pfn_index.get(pa // self.page_size)
        if index is None:
            return None
        return self.pages_offset + index * self.page_size + pa % self.page_size

    # -- machine frames (PV) -------------------------------------------------
    def mfn_of_pfn(self, pfn: int) -> int:
        """The machine frame .xen_p2m gives `pfn` (PV only)."""
        index = self._pfn_index.get(pfn) if self.pv else None
        if index is None:
            raise self._missing(pfn)
        return self._mfns[index]

    def pfn_of_mfn(self, mfn: int) -> int:
        """The pseudo-physical frame backed by machine frame `mfn`: the inverse
        of .xen_p2m (PV only). Raises NotInDumpError for a frame that is not the
        guest's (Xen's own, another domain's) and for one .xen_p2m gives to two
        pfns (the inverse is then not a function)."""
        if self._inverse is None:
            self._inverse = self._build_inverse()
        pfn = self._inverse.get(mfn)
        ma = mfn * self.page_size
        if pfn is None:
            raise NotInDumpError(
                f"machine frame {mfn:#x} is not one of the guest's (.xen_p2m maps no pfn to it)",
                ma,
                self.path,
            )
        if pfn < 0:
            pfns = ", ".join(f"{p:#x}" for p in self._shared_mfns[mfn])
            raise NotInDumpError(
                f"machine frame {mfn:#x} backs several pfns in .xen_p2m ({pfns}): "
                "which one a page table means cannot be told",
                ma,
                self.path,
            )
        return pfn

    def _build_inverse(self) -> dict[int, int]:
        if not self.pv:
            raise UnsupportedError("an HVM guest's dump has no machine frames", self.path)
        inverse: dict[int, int] = {}
        for pfn, index in self._pfn_index.items():
            mfn = self._mfns[index]
            seen = inverse.get(mfn)
            if seen is None:
                inverse[mfn] = pfn
                continue
            if seen >= 0:
                self._shared_mfns[mfn] = [seen]
                inverse[mfn] = -1
            self._shared_mfns[mfn].append(pfn)
        if self._shared_mfns:
            self.problems.append(
                f"{len(self._shared_mfns)} machine frames back several pfns in .xen_p2m: "
                "page tables through them are not walked"
            )
        return inverse

    def machine_memory(self) -> MachineMemory:
        """The guest's memory addressed by machine address (PV)."""
        return MachineMemory(self)

    # -- registers -----------------------------------------------------------
    @property
    def shared_info(self) -> bytes | None:
        sec = self.sections.get(".xen_shared_info")
        return self.source.pread(sec.offset, sec.size) if sec else None

    def describe(self) -> str:
        guest = "PV" if self.pv else "HVM"
        version = self.xen_version.get("version")
        on = f", Xen {version}" if version else ""
        return f"Xen dump-core ({guest} guest{on}, {len(self.vcpus)} vCPUs)"


class MachineMemory:
    """A PV guest's memory by machine address: what its page tables point at.
    A `PhysicalLayer` over the pfn-space dump through the inverse of .xen_p2m;
    a frame that is not the guest's raises NotInDumpError."""

    def __init__(self, core: XenDumpCore) -> None:
        self.core = core
        self.path = core.path

    def read_phys(self, ma: int, length: int) -> bytes:
        ps = self.core.page_size
        parts: list[bytes] = []
        while length > 0:
            mfn, off = divmod(ma, ps)
            n = min(length, ps - off)
            parts.append(self.core.read_phys(self.core.pfn_of_mfn(mfn) * ps + off, n))
            ma += n
            length -= n
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def ranges(self) -> list[PhysRange]:
        ps = self.core.page_size
        out: list[PhysRange] = []
        for pfn in sorted(self.core.pfns(), key=self.core.mfn_of_pfn):
            ma = self.core.mfn_of_pfn(pfn) * ps
            if out and out[-1].end == ma:
                out[-1] = PhysRange(out[-1].start, ma + ps)
            else:
                out.append(PhysRange(ma, ma + ps))
        return out

    def file_offset(self, ma: int) -> int | None:
        ps = self.core.page_size
        try:
            return self.core.file_offset(self.core.pfn_of_mfn(ma // ps) * ps + ma % ps)
        except NotInDumpError:
            return None
