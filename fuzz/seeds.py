"""Seeds, read at run time from the real sample dumps (never committed):
the committed x86_64 dump, the cached samples of ~/.cache/kvmcore/samples
when they are there, and FreeBSD dumps made by tests/freebsd_fixtures.

Every accessor is cached per process and opens dumps read-only."""

from __future__ import annotations

import functools
import os
import struct
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "sample_dumps/committed/x86_64-small/vmcore.mdf-d31-c"
PREFIX_CAP = 256 << 10  # at most this much of a file's head is mutated


def cached_samples() -> dict:
    try:
        from sample_dumps.catalog import load_samples

        return load_samples()
    except Exception:  # no cache, or a catalog this harness cannot read: committed seed only
        return {}


@functools.cache
def sample_files() -> list[str]:
    """Every cached sample dump file, sorted (paths only; opened read-only later)."""
    out = []
    for sample in cached_samples().values():
        for fmt in sample.formats:
            try:
                p = sample.file(fmt)
            except KeyError:
                continue
            if p.exists() and os.access(p, os.R_OK):
                out.append(str(p))
    return sorted(out)


def files_of_format(name: str, limit: int = 4) -> list[str]:
    """Cached sample files whose format kvmcore probes as `name` ('elf', 'kdump',
    'flattened', 'xen')."""
    from kvmcore.fileio import DumpFile
    from kvmcore.formats.elf import ElfDump
    from kvmcore.formats.flattened import is_flattened
    from kvmcore.formats.kdump import KdumpDump
    from kvmcore.formats.xen_dumpcore import XenDumpCore

    out = []
    for path in sample_files():
        f = DumpFile(path)
        try:
            kind = (
                "flattened"
                if is_flattened(f)
                else "xen"
                if XenDumpCore.probe(f)
                else "elf"
                if ElfDump.probe(f)
                else "kdump"
                if KdumpDump.probe(f)
                else None
            )
        finally:
            f.close()
        if kind == name and path not in out:
            out.append(path)
    # one per arch is enough; prefer variety of directories
    seen, picked = set(), []
    for p in out:
        d = os.path.basename(os.path.dirname(p))
        if d.split("-")[0] not in seen:
            seen.add(d.split("-")[0])
            picked.append(p)
    return picked[:limit]


@functools.cache
def committed_dump():
    """The committed dump, opened read-only through kvmcore."""
    import kvmcore

    return kvmcore.open(str(COMMITTED))


def kdump_prefix_len(path: str) -> int:
    """Bytes of a kdump file's head: header, sub-header, notes, bitmaps and
    the first descriptors."""
    from kvmcore.fileio import DumpFile
    from kvmcore.formats.kdump import KdumpDump

    mem = KdumpDump(DumpFile(path))
    h = mem.header
    n = mem.desc_base + 24 * 256
    note_end = (h.sub.get("offset_note") or 0) + (h.sub.get("size_note") or 0)
    mem.close()
    return min(max(n, note_end), PREFIX_CAP, os.path.getsize(path))


def elf_prefix_len(path: str) -> int:
    """Bytes of an ELF vmcore's head: header, program headers, notes."""
    from kvmcore.fileio import DumpFile
    from kvmcore.formats.elf import ElfDump

    mem = ElfDump(DumpFile(path))
    h = mem.header
    end = h.e_phoff + (h.e_phentsize or 56) * mem.metadata["phnum"]
    first_load = min((off for _, _, off, _, _ in mem.segments), default=end)
    mem.close()
    return min(max(end, min(first_load, PREFIX_CAP)), PREFIX_CAP)


def flatten_prefix(data: bytes, piece: int = 4096) -> bytes:
    """A makedumpfile flattened header block and records carrying `data` as
    the file's first bytes, in pieces (the last record of the real file's
    rest is added by the caller)."""
    head = struct.pack(">16sqq", b"makedumpfile", 1, 1).ljust(4096, b"\0")
    out = bytearray(head)
    for off in range(0, len(data), piece):
        chunk = data[off : off + piece]
        out += struct.pack(">qq", off, len(chunk)) + chunk
    return bytes(out)


@functools.cache
def freebsd_files() -> list[tuple[str, bytes]]:
    """FreeBSD dumps (amd64 minidump v3, arm64 minidump v2, amd64 full dump
    with and without a kerneldumpheader) built by tests/freebsd_fixtures."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import freebsd_fixtures as F
    finally:
        sys.path.pop(0)
    out = []
    with tempfile.TemporaryDirectory(prefix="kvmcore-fuzz-") as d:
        amd = F.amd64_machine()
        F.build_kernel(amd)
        arm = F.arm64_machine()
        F.build_kernel(arm)
        for name, write in (
            ("amd64-minidump-v3", lambda p: F.write_minidump(amd, p, 3)),
            ("arm64-minidump-v2", lambda p: F.write_minidump(arm, p, 2)),
            ("amd64-full", lambda p: F.write_full_dump(amd, p)),
            ("amd64-full-kdh", lambda p: F.write_full_dump(amd, p, header=True)),
        ):
            path = os.path.join(d, name)
            write(path)
            out.append((name, Path(path).read_bytes()))
    return out


@functools.cache
def xen_fixture(pages: int = 24) -> bytes:
    """A small Xen HVM dump-core (tests/xen_dumpcore_writer.py) holding the
    committed dump's vCPUs and its first dumped pages."""
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        import xen_dumpcore_writer as X
    finally:
        sys.path.pop(0)
    mem = committed_dump().mem
    prstatus = [n.desc for n in mem.notes if n.name == "CORE" and n.type == 1]
    qemu = [n.desc for n in mem.notes if n.name == "QEMU"]
    vcpus = [X.hvm_context(p, q) for p, q in zip(prstatus, qemu)]
    pfns = X.present_pfns(mem)[:pages]
    with tempfile.TemporaryDirectory(prefix="kvmcore-fuzz-") as d:
        path = Path(d) / "xen.core"
        X.write_dumpcore(
            path,
            hvm=True,
            pfns=pfns,
            read_page=lambda pfn: mem.read_phys(pfn * 4096, 4096),
            vcpus=vcpus,
        )
        return path.read_bytes()
