"""The fuzz targets: one per parser, plus the whole `analyze` path.

A target turns one input (bytes) into a parser run. Its seeds are real bytes
read at run time (fuzz.seeds). Inputs that drive a whole file (elf, kdump,
flattened, freebsd) replace the head of a real dump through an overlay
(fuzz.sources.OverlaySource): the first input byte picks the base file, the
rest is the new head; the file itself is only ever read.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmcore.errors import KvmcoreError, TypeInfoError

from . import seeds as S
from .sources import BytesSource, Memory, OverlaySource


@dataclass
class Target:
    name: str
    doc: str
    run: Callable[[bytes], object]
    seeds: Callable[[], list[bytes]]
    files: Callable[[], list[str]] = field(default=lambda: [])  # seed files to hash


TARGETS: dict[str, Target] = {}


def target(name: str, seeds: Callable[[], list[bytes]], files=None):
    def deco(fn):
        TARGETS[name] = Target(name, (fn.__doc__ or "").strip(), fn, seeds, files or (lambda: []))
        return fn

    return deco


def sections(data: bytes, count: int) -> list[bytes]:
    """`count` byte strings framed as [u32 LE length][bytes]...; missing
    ones are empty, lengths clamp to what is left."""
    out, pos = [], 0
    for _ in range(count):
        if pos + 4 > len(data):
            out.append(b"")
            continue
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        out.append(data[pos : pos + n])
        pos += n
    return out


def frame_sections(parts: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)


# -- exercising a PhysicalMemory ----------------------------------------------------
def exercise_memory(mem, pages: int = 16) -> None:
    """Touch what the layers above use: ranges, reads at range edges, the
    first dumped pages, notes, VMCOREINFO, exclusion and file offsets."""
    ranges = mem.ranges()[:8]
    for r in ranges:
        for pa in (r.start, max(r.start, r.end - 64)):
            with contextlib.suppress(KvmcoreError):
                mem.read_phys(pa, 64)
            mem.is_excluded(pa)
            mem.file_offset(pa)
    if ranges:
        start = ranges[0].start
        for i in range(pages):
            with contextlib.suppress(KvmcoreError):
                mem.read_phys(start + i * 4096, 4096)
    info = mem.vmcoreinfo
    if info is not None:
        exercise_vmcoreinfo(info)
    mem.prstatus_notes()
    mem.describe()
    _ = mem.notes_problem


def exercise_vmcoreinfo(info) -> None:
    for key in list(info)[:4096]:
        m = re.fullmatch(r"(SYMBOL|OFFSET|SIZE|LENGTH|NUMBER)\((.*)\)", key)
        if not m:
            info.hex(key)
            continue
        kind, arg = m.groups()
        if kind == "SYMBOL":
            info.symbol(arg)
        elif kind == "OFFSET":
            struct_, _, member = arg.partition(".")
            info.offset(struct_, member)
        elif kind == "SIZE":
            info.size(arg)
        elif kind == "LENGTH":
            info.length(arg)
        else:
            info.number(arg)
    _ = (info.osrelease, info.page_size, info.kernel_offset, info.build_id, info.crashtime)


# -- whole files through an overlay ---------------------------------------------------
@dataclass
class Base:
    label: str
    open: Callable[[], object]  # a ByteSource
    replaced: int  # length of the head an input replaces
    prefix: bytes = b""  # the seed head (may differ from the file's bytes: flattened)


@functools.cache
def _dumpfile(path: str):
    from kvmcore.fileio import DumpFile

    return DumpFile(path)


def _file_base(path: str, replaced: int) -> Base:
    src = _dumpfile(path)
    return Base(path, lambda: src, replaced, src.pread(0, replaced))


@functools.cache
def elf_bases() -> list[Base]:
    out = [_file_base(p, S.elf_prefix_len(p)) for p in S.files_of_format("elf")]
    return out or [synthetic_elf_base()]


def synthetic_elf_base() -> Base:
    """An ELF64 core made in memory from the committed dump: its notes and
    VMCOREINFO, and one PT_LOAD of the first dumped pages."""
    mem = S.committed_dump().mem
    notes = b"".join(
        struct.pack("<III", len(n.name) + 1, len(n.desc), n.type)
        + (n.name.encode() + b"\0").ljust((len(n.name) + 4) & ~3, b"\0")
        + n.desc.ljust((len(n.desc) + 3) & ~3, b"\0")
        for n in mem.notes
    )
    raw = mem.metadata.get("vmcoreinfo_raw") or b""
    notes += (
        struct.pack("<III", 11, len(raw), 0)
        + b"VMCOREINFO\0\0"
        + raw.ljust((len(raw) + 3) & ~3, b"\0")
    )
    start = mem.ranges()[0].start
    data = mem.read_phys(start, 8 * 4096)
    phoff, nph = 64, 2
    note_off = phoff + 56 * nph
    load_off = (note_off + len(notes) + 4095) & ~4095
    ehdr = (
        b"\x7fELF\x02\x01\x01"
        + bytes(9)
        + struct.pack("<HHIQQQIHHHHHH", 4, 62, 1, 0, phoff, 0, 0, 64, 56, nph, 0, 0, 0)
    )
    ph = struct.pack("<IIQQQQQQ", 4, 0, note_off, 0, 0, len(notes), 0, 4)
    ph += struct.pack(
        "<IIQQQQQQ", 1, 7, load_off, 0xFFFF888000000000 + start, start, len(data), len(data), 4096
    )
    blob = (ehdr + ph + notes).ljust(load_off, b"\0") + data
    src = BytesSource(blob, "<synthetic elf>")
    return Base("synthetic-elf", lambda: src, load_off, blob[:load_off])


@functools.cache
def kdump_bases() -> list[Base]:
    paths = [str(S.COMMITTED)] + [p for p in S.files_of_format("kdump") if p != str(S.COMMITTED)]
    return [_file_base(p, S.kdump_prefix_len(p)) for p in paths[:4]]


@functools.cache
def flattened_bases() -> list[Base]:
    out = []
    # the committed dump re-framed as a flattened stream: the head in 4 KiB
    # records, then one record holding the rest of the real file
    src = _dumpfile(str(S.COMMITTED))
    cut = 64 << 10
    head = S.flatten_prefix(src.pread(0, cut)) + struct.pack(">qq", cut, src.size - cut)
    out.append(Base("committed-as-flattened", lambda: src, cut, head))
    for p in S.files_of_format("flattened", limit=2):
        out.append(_file_base(p, min(64 << 10, _dumpfile(p).size)))
    return out


@functools.cache
def freebsd_bases() -> list[Base]:
    out = []
    for name, blob in S.freebsd_files():
        src = BytesSource(blob, f"<freebsd {name}>")
        n = min(len(blob), 64 << 10)
        out.append(Base(name, (lambda s=src: s), n, blob[:n]))
    return out


def overlay_seeds(bases: Callable[[], list[Base]]) -> Callable[[], list[bytes]]:
    return lambda: [bytes([i]) + b.prefix for i, b in enumerate(bases())]


def overlay(bases: list[Base], data: bytes) -> OverlaySource:
    base = bases[data[0] % len(bases)] if data else bases[0]
    return OverlaySource(base.open(), data[1:], base.replaced)


def _real_files(bases):
    return lambda: [b.label for b in bases() if b.label.startswith("/")]


@target("elf", overlay_seeds(elf_bases), _real_files(elf_bases))
def run_elf(data: bytes) -> None:
    """ELF vmcores (formats/elf.py) and their notes: a new head for a real ELF sample."""
    from kvmcore.formats.elf import ElfDump

    exercise_memory(ElfDump(overlay(elf_bases(), data)))


@target("kdump", overlay_seeds(kdump_bases), _real_files(kdump_bases))
def run_kdump(data: bytes) -> None:
    """kdump-compressed (formats/kdump.py): header, sub-header, notes, bitmaps and
    page descriptors replaced in the committed dump."""
    from kvmcore.formats.kdump import KdumpDump

    mem = KdumpDump(overlay(kdump_bases(), data))
    exercise_memory(mem, pages=32)
    for pfn in list(range(0, 64)) + [mem.header.max_mapnr - 1]:
        with contextlib.suppress(KvmcoreError):
            mem.read_page(pfn)


@target("flattened", overlay_seeds(flattened_bases), _real_files(flattened_bases))
def run_flattened(data: bytes) -> None:
    """makedumpfile flattened streams (formats/flattened.py), then what they hold."""
    from kvmcore.formats import open_source

    exercise_memory(open_source(overlay(flattened_bases(), data)))


@target("freebsd", overlay_seeds(freebsd_bases))
def run_freebsd(data: bytes) -> None:
    """FreeBSD minidumps, full dumps and kerneldumpheader containers
    (formats/freebsd_*.py), from tests/freebsd_fixtures."""
    from kvmcore.formats import open_source

    mem = open_source(overlay(freebsd_bases(), data))
    exercise_memory(mem)
    msgbuf = getattr(mem, "msgbuf", None)
    if callable(msgbuf):
        msgbuf()


@functools.cache
def xen_bases() -> list[Base]:
    """A small HVM dump-core made from the committed dump (the whole file is
    the head an input replaces), and the head (headers, notes, vCPU contexts)
    of each cached Xen sample."""
    blob = S.xen_fixture()
    src = BytesSource(blob, "<synthetic xen dump-core>")
    out = [Base("synthetic-xen", lambda: src, len(blob), blob)]
    for p in S.files_of_format("xen", limit=2):
        out.append(_file_base(p, min(S.PREFIX_CAP, _dumpfile(p).size)))
    return out


@target("xen", overlay_seeds(xen_bases), _real_files(xen_bases))
def run_xen(data: bytes) -> None:
    """Xen dump-core files (formats/xen_dumpcore.py, xen_vcpu.py) and the
    translators and registers arches/*/xen.py build from them."""
    from kvmcore.formats.xen_dumpcore import XenDumpCore
    from kvmcore.registry import select_arch, select_translator
    from kvmcore.translate import TranslationContext

    mem = XenDumpCore(overlay(xen_bases(), data))
    exercise_memory(mem)
    with contextlib.suppress(KvmcoreError):
        for pfn in range(8):
            mem.pfn_of_mfn(mem.mfn_of_pfn(pfn))
    arch = select_arch(mem)
    flavour = select_translator(arch, mem)
    flavour.cpu_states(arch, mem)
    tr = flavour.build(TranslationContext(mem, None, lambda _name: None))
    for va in (0xFFFFFFFF81000000, 0xFFFF888000000000, 0xC1000000, 0):
        with contextlib.suppress(KvmcoreError):
            tr.translate(va)
    tr.describe()


# -- notes and VMCOREINFO -------------------------------------------------------------
@functools.cache
def note_seeds() -> list[bytes]:
    mem = S.committed_dump().mem
    sub = mem.header.sub
    raw = mem.source.pread(sub["offset_note"], sub["size_note"])
    out = [b"\x01" + raw]
    for base in elf_bases()[:2]:
        m = None
        try:
            from kvmcore.formats.elf import ElfDump

            m = ElfDump(base.open())
        except KvmcoreError:
            continue
        out.append(
            b"\x01"
            + b"".join(
                struct.pack("<III", len(n.name) + 1, len(n.desc), n.type)
                + (n.name.encode() + b"\0").ljust((len(n.name) + 4) & ~3, b"\0")
                + n.desc.ljust((len(n.desc) + 3) & ~3, b"\0")
                for n in m.notes[:8]
            )
        )
    return out


@target("notes", note_seeds)
def run_notes(data: bytes) -> None:
    """ELF notes (notes.parse_notes); byte 0 picks the byte order."""
    from kvmcore.notes import VmcoreInfo, parse_notes

    order = "little" if not data or data[0] & 1 else "big"
    for note in parse_notes(data[1:], order):
        if note.name == "VMCOREINFO":
            exercise_vmcoreinfo(VmcoreInfo.from_bytes(note.desc))


@functools.cache
def vmcoreinfo_seeds() -> list[bytes]:
    return [S.committed_dump().mem.metadata["vmcoreinfo_raw"]]


@target("vmcoreinfo", vmcoreinfo_seeds)
def run_vmcoreinfo(data: bytes) -> None:
    """VMCOREINFO text (notes.VmcoreInfo) and every typed accessor."""
    from kvmcore.notes import VmcoreInfo

    exercise_vmcoreinfo(VmcoreInfo.from_bytes(data))


# -- kallsyms -----------------------------------------------------------------------
KALLSYMS_BASE = 0xFFFFFFFF82000000


class FakeArch:
    kallsyms_absolute_percpu = True


class FakeDump:
    """The little of kvmcore.Dump that the table decoders read."""

    path = "<fuzz memory>"
    byteorder = "little"
    word_size = 8
    _e = "<"
    arch = FakeArch()
    kernel_offset = 0

    def __init__(self, memory: Memory, vmcoreinfo_text: str = "") -> None:
        from kvmcore.notes import VmcoreInfo

        self.memory = memory
        self.vmcoreinfo = VmcoreInfo(vmcoreinfo_text)
        self.layer_cache: dict[str, object] = {}  # what a Dump's decoders memoize in

    def read(self, va: int, length: int) -> bytes:
        return self.memory.read(va, length)

    def read_u32(self, va: int) -> int:
        return int.from_bytes(self.read(va, 4), "little")

    def read_u64(self, va: int) -> int:
        return int.from_bytes(self.read(va, 8), "little")

    def read_ptr(self, va: int) -> int:
        return self.read_u64(va)

    def read_ptrs(self, va: int, count: int) -> list[int]:
        return list(struct.unpack(f"<{count}Q", self.read(va, 8 * count)))

    @property
    def types(self):
        raise TypeInfoError("no types in a fuzz memory")

    @property
    def kernel(self):
        raise TypeInfoError("no kernel model in a fuzz memory")


KALLSYMS_PARTS = ("num_syms", "names", "token_table", "token_index", "offsets", "relative_base")


@functools.cache
def kallsyms_seeds() -> list[bytes]:
    """The committed dump's kallsyms tables, cut to the first symbols."""
    from kvmcore.symbols.kallsyms import _entry_starts

    dump = S.committed_dump()
    info = dump.vmcoreinfo

    def sym(name):
        return info.symbol(name)

    tt, ti = sym("kallsyms_token_table"), sym("kallsyms_token_index")
    index = struct.unpack("<256H", dump.read(ti, 512))
    table = dump.read(tt, max(index) + 64)
    table = table[: table.find(b"\0", max(index)) + 1]
    out = []
    for count in (40, 400):
        names_all = dump.read(sym("kallsyms_names"), count * 64)
        starts = _entry_starts(names_all, count, "<seed>")
        names = names_all[: starts[count]]
        offsets = dump.read(sym("kallsyms_offsets"), 4 * count)
        base = dump.read(sym("kallsyms_relative_base"), 8)
        parts = [struct.pack("<I", count), names, table, dump.read(ti, 512), offsets, base]
        out.append(frame_sections(parts))
    return out


def kallsyms_dump(data: bytes) -> FakeDump:
    """The sections laid out as the kernel links them: offsets, relative_base,
    num_syms, names, token_table, token_index, contiguous."""
    parts = dict(zip(KALLSYMS_PARTS, sections(data, len(KALLSYMS_PARTS))))
    layout = ["offsets", "relative_base", "num_syms", "names", "token_table", "token_index"]
    addr, blob, lines = KALLSYMS_BASE, bytearray(), []
    for name in layout:
        lines.append(f"SYMBOL(kallsyms_{name})={addr + len(blob):x}")
        blob += parts[name]
        blob += bytes(-len(blob) % 8)
    return FakeDump(Memory({addr: bytes(blob)}), "\n".join(lines) + "\n")


@target("kallsyms", kallsyms_seeds)
def run_kallsyms(data: bytes) -> None:
    """kallsyms tables (symbols/kallsyms.py) decoded from dump memory."""
    from kvmcore.symbols.kallsyms import read_kallsyms_columns

    read_kallsyms_columns(kallsyms_dump(data))


# -- BTF ------------------------------------------------------------------------------
@functools.cache
def btf_seeds() -> list[bytes]:
    """The committed dump's BTF, cut to its first types and strings."""
    from kvmcore.types.btf import BtfTypes
    from kvmcore.types.btf_source import btf_from_memory

    blob = btf_from_memory(S.committed_dump())
    full = BtfTypes(blob, 8, "<seed>")
    hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<5I", blob, 4)
    out = []
    for ntypes in (60, 600):
        cut = 4 * full._starts[min(ntypes, len(full._starts) - 1)]
        types = blob[hdr_len + type_off : hdr_len + type_off + cut]
        strings = blob[hdr_len + str_off : hdr_len + str_off + min(str_len, 16 << 10)]
        hdr = blob[:4] + struct.pack("<5I", hdr_len, 0, len(types), len(types), len(strings))
        out.append(hdr.ljust(hdr_len, b"\0") + types + strings)
    return out


@target("btf", btf_seeds)
def run_btf(data: bytes) -> None:
    """BTF (types/btf.py): scan, decode every type, look names up."""
    from kvmcore.types.btf import BtfTypes

    btf = BtfTypes(data, 8, "<fuzz btf>")
    for tid in range(1, min(len(btf), 1000) + 1):
        t = btf.type_by_id(tid)
        if t is None:
            continue
        _ = t.c_name
        t.strip()
        for m in list(t.iter_members())[:64]:
            _ = m.type.c_name
            _ = m.offset
    for space, name in (
        ("struct", "task_struct"),
        ("typedef", "u64"),
        ("base", "int"),
        ("union", "x"),
        ("enum", "pid_type"),
    ):
        btf.lookup(space, name)
    btf.find_enumerator("PIDTYPE_PID")


# -- ORC ------------------------------------------------------------------------------
class FakeSyms:
    def __init__(self, addrs: dict[str, int]) -> None:
        self.addrs = addrs
        self.error = None

    def address(self, name: str) -> int | None:
        return self.addrs.get(name)


@functools.cache
def orc_layout() -> tuple[int, int, int]:
    syms = S.committed_dump().symbols
    return syms.get("__start_orc_unwind_ip"), syms.get("__start_orc_unwind"), syms.get("_stext")


@functools.cache
def orc_seeds() -> list[bytes]:
    """The committed dump's ORC tables (ip offsets and entries), cut short."""
    dump = S.committed_dump()
    ip_at, orc_at, _ = orc_layout()
    out = []
    for count in (64, 2048):
        out.append(
            frame_sections([dump.read(ip_at, 4 * count), dump.read(orc_at, 6 * count), b"\x06\x04"])
        )
    return out


@target("orc", orc_seeds)
def run_orc(data: bytes) -> None:
    """ORC (unwind/orc.py): the ip table and entries at their real addresses."""
    from kvmcore.unwind.orc import OrcTable

    ips, entries, version = sections(data, 3)
    ip_at, orc_at, stext = orc_layout()
    release = f"{version[0] if version else 6}.{version[1] if len(version) > 1 else 1}.0"
    dump = FakeDump(Memory({ip_at: ips, orc_at: entries}), f"OSRELEASE={release}\n")
    syms = FakeSyms(
        {
            "__start_orc_unwind_ip": ip_at,
            "__stop_orc_unwind_ip": ip_at + len(ips),
            "__start_orc_unwind": orc_at,
        }
    )
    table = OrcTable(dump, syms)
    for ip in table.ips[:4096:7] + [table.ips[0] - 1, table.ips[-1] + 1]:
        table.find(ip)
        table.find(ip + 3)


# -- DWARF CFI --------------------------------------------------------------------------
@functools.cache
def cfi_seeds() -> list[bytes]:
    """.debug_frame bytes: the committed dump's ORC as CFI (symbols/cfi.py's
    writer), and the head of the cached amd64 vmlinux's own .debug_frame."""
    from kvmcore.symbols.cfi import CfiRange, encode_debug_frame
    from kvmcore.unwind.orc_cfi import orc_cfi_ranges

    layout, ranges = orc_cfi_ranges(S.committed_dump())
    short = []
    for r in ranges[:1]:
        n = min(len(r.starts), 300)
        short.append(
            CfiRange(r.starts[:n], r.rules[:n], r.starts[n] if n < len(r.starts) else r.end)
        )
    out = [encode_debug_frame(short, layout)]
    for sample in S.cached_samples().values():
        vmlinux = sample.vmlinux() if sample.manifest.get("debian_arch") == "amd64" else None
        if vmlinux is None:
            continue
        from kvmcore.symbols.vmlinux import VmlinuxFile

        image = VmlinuxFile(str(vmlinux))
        try:
            sec = image.section(".debug_frame")
            data = bytes(image.section_bytes(sec))
        finally:
            image.close()
        off = 0
        while off < min(len(data), 48 << 10):  # whole entries only
            off += 4 + struct.unpack_from("<I", data, off)[0]
        out.append(data[:off])
        break
    return out


class _CfiDump(FakeDump):
    def read_ptr(self, va: int) -> int:
        return (va * 0x9E3779B1 + 0x1234) & 0xFFFFFFFFFFFFFFFF  # any memory reads as noise


@target("dwarf_cfi", cfi_seeds)
def run_dwarf_cfi(data: bytes) -> None:
    """.debug_frame (unwind/dwarf_cfi.py): index, CIEs, rows, rules and expressions,
    one caller step per FDE as the unwinder takes it."""
    from arches.x86_64.cpu import ARCH
    from kvmcore.unwind.dwarf_cfi import DebugFrame, DwarfCfi

    frame = DebugFrame(data, 8, "little", "<fuzz .debug_frame>")
    cfi = DwarfCfi(_CfiDump(Memory({})), ARCH.dwarf)
    cfi._frame, cfi._loaded = frame, True
    regs = {name: 0xFFFFC90000010000 + 8 * i for i, name in enumerate(ARCH.dwarf.names.values())}
    for start, end, *_ in frame.fdes[:200]:
        for pc in (start, (start + end) // 2, end - 1):
            cfi.caller(regs, pc, exact=True)


# -- the gdb remote protocol -----------------------------------------------------------
@functools.cache
def rsp_seeds() -> list[bytes]:
    from kvmcore.gdbserver.packets import frame

    pkts = [
        b"qSupported:multiprocess+;swbreak+",
        b"?",
        b"g",
        b"p10",
        b"Hg0",
        b"qfThreadInfo",
        b"m0,8",
        b"xffffffff81000000,40",
        b"qXfer:features:read:target.xml:0,fff",
        b"qRcmd,6c7370",
        b"vCont?",
        b"T1",
        b"QStartNoAckMode",
    ]
    return [b"\x07" + b"+".join(frame(p) for p in pkts), b"\x01$m0,4#fd$g#67-+\x03"]


@functools.cache
def _session_target():
    from kvmcore.gdbserver.target import DumpTarget

    return DumpTarget(S.committed_dump())


class _Escaped(Exception):
    pass


@target("rsp", rsp_seeds)
def run_rsp(data: bytes) -> None:
    """RSP framing (gdbserver/packets.py), then the session's commands on the
    committed dump: byte 0 sets the chunk size."""
    from kvmcore.gdbserver.packets import PacketReader
    from kvmcore.gdbserver.session import Session

    step = (data[0] % 32 + 1) if data else 1
    body = data[1:]
    reader = PacketReader(max_size=64)
    for i in range(0, len(body), step):
        chunk = body[i : i + step]
        reader.feed(chunk)
        # a packet may be held until its checksum's last byte: at most max_size
        # from before plus this chunk and the last, plus '$', '#' and checksum
        if len(reader._buf) > reader.max_size + 2 * step + 4:
            raise AssertionError(f"packet buffer grew to {len(reader._buf)} bytes")
    session = Session(_session_target())
    caught: list[BaseException] = []
    for key, handler in list(session._handlers.items()):

        def wrapped(pkt, handler=handler):
            try:
                return handler(pkt)
            except (KvmcoreError, ValueError, IndexError, UnicodeDecodeError):
                raise  # the session's own answer to a bad packet
            except Exception as exc:
                caught.append(exc)
                raise

        session._handlers[key] = wrapped
    for i in range(0, len(body), step * 64):
        session.feed(body[i : i + step * 64])
        if caught:
            raise caught[0]


# -- the whole analyze path ------------------------------------------------------------
ANALYZE_HEAD = 96 << 10  # file patches land in the head: headers, notes, bitmaps, descriptors


@functools.cache
def hot_pages() -> list[int]:
    """Physical pages a clean analyze of the committed dump reads, in order."""
    import kvmcore
    from kvmcore.report import build_report

    dump = kvmcore.open(str(S.COMMITTED))
    seen: dict[int, None] = {}
    original = dump.mem.read_phys

    def spy(pa: int, length: int) -> bytes:
        for page in range(pa & ~4095, pa + max(length, 1), 4096):
            seen.setdefault(page)
        return original(pa, length)

    dump.mem.read_phys = spy
    build_report(dump)
    dump.close()
    return list(seen)


@dataclass
class Recipe:
    """A mutation of the committed dump, in code: bytes replaced at file
    offsets (the container) and at physical addresses (the kernel's data)."""

    file: dict[int, bytes] = field(default_factory=dict)
    phys: dict[int, bytes] = field(default_factory=dict)

    @classmethod
    def decode(cls, data: bytes) -> Recipe:
        """[u8 kind][u32 where][u8 n][n bytes]...: even kind patches the file
        head at where % ANALYZE_HEAD, odd kind a hot page byte (where picks
        page and offset)."""
        r, pos, pages = cls(), 0, hot_pages()
        while pos + 6 <= len(data) and len(r.file) + len(r.phys) < 64:
            kind, where, n = struct.unpack_from("<BIB", data, pos)
            pos += 6
            value = data[pos : pos + (n % 16 + 1)]
            pos += len(value)
            if kind % 2 == 0:
                r.file[where % ANALYZE_HEAD] = value
            else:
                page = pages[(where >> 12) % len(pages)]
                r.phys[page + (where & 0xFFF)] = value
        return r


def open_mutated(recipe: Recipe):
    """kvmcore.open on the committed dump seen through `recipe` (nothing written)."""
    import kvmcore
    import kvmcore.dump as dump_mod
    from kvmcore.formats import open_source

    base = _dumpfile(str(S.COMMITTED))
    real = dump_mod.open_physical
    dump_mod.open_physical = lambda path, raw=False: open_source(
        OverlaySource(base, patches=recipe.file), raw_ok=raw
    )
    try:
        dump = kvmcore.open(str(S.COMMITTED))
    finally:
        dump_mod.open_physical = real
    if recipe.phys:
        original = dump.mem.read_phys
        by_pa = sorted(recipe.phys.items())

        def read_phys(pa: int, length: int) -> bytes:
            data = original(pa, length)
            out = None
            for at, value in by_pa:
                lo, hi = max(at, pa), min(at + len(value), pa + length)
                if lo < hi:
                    out = out if out is not None else bytearray(data)
                    out[lo - pa : hi - pa] = value[lo - at : hi - at]
            return data if out is None else bytes(out)

        dump.mem.read_phys = read_phys
    return dump


def _strict_section(fn, problems, name):
    """report.collect._section without its net for internal errors: a
    ValueError/KeyError/IndexError/TypeError there is a bug the report hides."""
    try:
        out = fn()
        out.setdefault("available", True)
        return out
    except KvmcoreError as exc:
        problems.append(f"{name}: {exc.message}")
        return {"available": False, "reason": exc.message}


def analyze(recipe: Recipe) -> dict:
    """build_report and every renderer on the mutated dump, as `kvmcore analyze` runs."""
    from kvmcore.report import collect, render

    real = collect._section
    collect._section = _strict_section
    try:
        with open_mutated(recipe) as dump:
            report = collect.build_report(dump)
            render.render_text(report)
            render.render_markdown(report)
            json.dumps(render.safe_report(report))
    finally:
        collect._section = real
    return report


def analyze_seeds() -> list[bytes]:
    return [
        b"",
        struct.pack("<BIB", 0, 0x1000 + 64, 0) + b"\x00",  # a sub-header byte
        struct.pack("<BIB", 1, 0x3000, 7) + bytes(8),  # 8 zero bytes in a hot page
    ]


@target("analyze", analyze_seeds, lambda: [str(S.COMMITTED)])
def run_analyze(data: bytes) -> None:
    """The whole `analyze` path (report.build_report and the renderers) on the
    committed dump under a Recipe of file and memory patches."""
    analyze(Recipe.decode(data))
