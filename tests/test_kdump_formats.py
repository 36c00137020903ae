"""kdump-compressed, flattened and split dumps, checked against the real samples.

Ground truth is the sample's own ELF dump of the same crash (every page a
kdump variant holds must be byte-identical to it), the manifest, and
independent tools: `makedumpfile -R` (flattened -> plain), `makedumpfile
--split`, and `crash` reading what tests/kdump_writer.py writes.
"""

from __future__ import annotations

import contextlib
import hashlib
import mmap
import shutil
import signal
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore.errors import (
    DecompressionError,
    DumpFormatError,
    KvmcoreError,
    NotInDumpError,
    PageExcludedError,
    TruncatedDumpError,
)
from kvmcore.fileio import DumpFile
from kvmcore.formats import open_physical
from kvmcore.formats.flattened import FlattenedSource
from kvmcore.formats.kdump import KdumpDump, open_split
from kvmcore.registry import select_arch
from sample_dumps.catalog import load_samples
from sample_dumps.makedumpfile import fix_qemu_elf

sys.path.insert(0, str(Path(__file__).parent))
from kdump_writer import write_kdump  # noqa: E402

HOW_TO_BUILD = "build the samples with `python -m sample_dumps build` (see sample_dumps/)"
KDUMP_KINDS = {"kdump", "kdump-flattened"}
COMPARED_KINDS = KDUMP_KINDS | {"elf-filtered"}
SAMPLES = load_samples()
WRITER_SAMPLE = "x86_64-kaslr"
CODECS = ["zlib", "lzo", "snappy", "zstd"]
#: manifest "arch" is uname's machine; kvmcore names the 32-bit x86 arch i386
KVMCORE_ARCH = {"i686": "i386", "armv7l": "arm"}


def _reference_fmt(sample) -> str | None:
    for fmt in ("elf", "proc-elf"):
        if fmt in sample.manifest["files"]:
            return fmt
    return None


def _variants() -> list:
    out = []
    for sid, s in SAMPLES.items():
        if _reference_fmt(s) is None:
            continue
        for fmt, info in s.manifest["files"].items():
            if info.get("format") in COMPARED_KINDS:
                out.append(pytest.param(sid, fmt, id=f"{sid}-{fmt}"))
    return out or [pytest.param(None, None, id="no-samples")]


def _sample(sid: str | None, fmt: str | None = None):
    if sid is None or sid not in SAMPLES:
        pytest.fail(
            f"sample {sid or '(any with an ELF and a kdump file)'} is missing: {HOW_TO_BUILD}"
        )
    s = SAMPLES[sid]
    if fmt is not None and fmt not in s.manifest["files"]:
        pytest.fail(f"sample {sid} has no {fmt} file: {HOW_TO_BUILD}")
    return s


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"`{name}` is not installed: apt-get install {name} (Debian)")
    return path


@contextlib.contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: bad input must be refused promptly."""

    def expired(*_):
        raise AssertionError(f"took longer than {seconds}s")

    old = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def _one_line_error(exc: KvmcoreError, path: Path, *words: str) -> str:
    text = str(exc)
    assert "\n" not in text, text
    assert str(path) in text, text
    for w in words:
        assert w in text, f"{w!r} not in {text!r}"
    return text


def _compare_pages(mem, ref) -> dict[str, int]:
    """Every page of `ref` (the ELF) against `mem`: identical, excluded or absent."""
    counts = {"same": 0, "excluded": 0, "absent": 0}
    bs = ref.facts.page_size
    mem_ranges = mem.ranges()
    for r in ref.ranges():
        for pa in range(r.start, r.end, bs):
            try:
                page = mem.read_phys(pa, bs)
            except PageExcludedError:
                assert mem.is_excluded(pa), hex(pa)
                counts["excluded"] += 1
                continue
            except NotInDumpError:
                # only pages the variant does not cover at all (e.g. the BIOS ROM
                # above max_mapnr in makedumpfile output)
                assert not any(x.start <= pa < x.end for x in mem_ranges), hex(pa)
                counts["absent"] += 1
                continue
            assert page == ref.read_phys(pa, bs), f"page at {pa:#x} differs from the ELF"
            counts["same"] += 1
    return counts


# -- every variant against the ELF ------------------------------------------


@pytest.mark.parametrize("sid,fmt", _variants())
def test_variant_pages_match_elf(sid, fmt):
    s = _sample(sid, fmt)
    info = s.manifest["files"][fmt]
    ref = open_physical(str(s.file(_reference_fmt(s))))
    mem = open_physical(str(s.file(fmt)))
    if info["format"] in KDUMP_KINDS:
        assert isinstance(mem, KdumpDump)
        assert mem.metadata["header_version"] >= 1
        if info.get("compression"):
            assert mem.metadata["compression"] == [info["compression"]]
        assert (mem.metadata.get("container") == "flattened") == (
            info["format"] == "kdump-flattened"
        )
        arch = KVMCORE_ARCH.get(s.manifest["arch"], s.manifest["arch"])
        # QEMU's aarch64 kdump header says "Unknown": the arch probes decide then
        assert mem.facts.machine in (arch, None)
        assert select_arch(mem).name == arch
        assert mem.facts.page_size == ref.facts.page_size  # the kernel's, from VMCOREINFO
        if fmt.startswith("mdf-"):  # QEMU fills in only utsname.machine
            assert mem.metadata["utsname"]["release"] == s.manifest["kernel_release"]
    counts = _compare_pages(mem, ref)
    assert counts["same"] > 1000, counts
    if info.get("filtered"):
        assert counts["excluded"] > 0, f"-d 31 dump excluded no page: {counts}"
    else:
        assert counts["excluded"] == 0 and counts["absent"] == 0, counts


@pytest.mark.parametrize("sid,fmt", _variants())
def test_variant_notes_match_elf(sid, fmt):
    s = _sample(sid, fmt)
    ref = open_physical(str(s.file(_reference_fmt(s))))
    mem = open_physical(str(s.file(fmt)))
    assert [(n.name, n.type, n.desc) for n in mem.notes] == [
        (n.name, n.type, n.desc) for n in ref.notes
    ]
    assert mem.vmcoreinfo is not None
    assert mem.vmcoreinfo.text == ref.vmcoreinfo.text
    assert mem.vmcoreinfo.osrelease == s.manifest["kernel_release"]
    if s.manifest["files"][fmt]["format"] in KDUMP_KINDS:
        cpus = [n for n in mem.notes if n.name == "CORE" and n.type == 1]
        assert mem.metadata["nr_cpus"] == s.manifest["qemu"]["smp"] == len(cpus)


def test_flattened_qemu_dump_read_in_place_equals_makedumpfile_R(tmp_path):
    s = _sample(WRITER_SAMPLE, "kdump-zlib")
    mdf = _tool("makedumpfile")
    out = tmp_path / "rearranged"
    with open(s.file("kdump-zlib"), "rb") as src:
        subprocess.run([mdf, "-R", str(out)], stdin=src, check=True, capture_output=True)
    flat = FlattenedSource(DumpFile(s.file("kdump-zlib")))
    assert flat.size == out.stat().st_size
    assert (
        hashlib.sha256(flat.pread(0, flat.size)).digest()
        == hashlib.sha256(out.read_bytes()).digest()
    )
    mem = open_physical(str(s.file("kdump-zlib")))
    assert mem.metadata["container"] == "flattened"
    assert mem.metadata["header_version"] == 6  # QEMU writes version 6


def test_flattened_mdf_equals_plain_page_for_page():
    s = _sample(WRITER_SAMPLE, "mdf-d31-F")
    flat = open_physical(str(s.file("mdf-d31-F")))
    plain = open_physical(str(s.file("mdf-d31-c")))
    assert flat.metadata["container"] == "flattened"
    assert flat.ranges() == plain.ranges()
    assert flat.notes == plain.notes
    bs = plain.block_size
    dumped = 0
    for pfn in range(plain.header.max_mapnr):
        pa = pfn * bs
        assert flat.is_excluded(pa) == plain.is_excluded(pa), hex(pa)
        if plain.has_page(pfn):
            assert flat.read_phys(pa, bs) == plain.read_phys(pa, bs), hex(pa)
            dumped += 1
    assert dumped == plain.dumped_pages == flat.dumped_pages


@pytest.mark.parametrize(
    "sid,fmt",
    [
        p
        for p in _variants()
        if p.values[0] is None
        or SAMPLES[p.values[0]].manifest["files"][p.values[1]]["format"] in KDUMP_KINDS
    ],
)
def test_kdump_open_reads_kernel_memory(sid, fmt):
    """Through kvmcore.open: the arch backend is chosen from what the kdump file says
    (QEMU leaves utsname.machine "Unknown" on aarch64)."""
    s = _sample(sid, fmt)
    with kvmcore.open(str(s.file(fmt))) as dump:
        arch = s.manifest["arch"]
        assert dump.arch.name == KVMCORE_ARCH.get(arch, arch)
        uts = dump.vmcoreinfo.symbol("init_uts_ns")
        blob = dump.read(uts, 512)
        assert s.manifest["kernel_release"].encode() + b"\0" in blob
        assert s.manifest["uts"]["version"].encode() in blob


# -- the writer: every codec, read back and checked by crash ----------------


@pytest.fixture(scope="module")
def writer_source():
    s = _sample(WRITER_SAMPLE, "elf")
    return s, open_physical(str(s.file("elf")))


@pytest.mark.parametrize("codec", CODECS)
def test_writer_codec_reads_back_identical(writer_source, tmp_path, codec):
    s, elf = writer_source
    out = write_kdump(elf, tmp_path / f"vmcore.{codec}", codec, uts=s.manifest["uts"])
    mem = open_physical(str(out))
    assert mem.metadata["compression"] == [codec]
    assert codec in mem.metadata["compressions_seen"]
    assert mem.metadata["header_version"] == 6
    counts = _compare_pages(mem, elf)
    assert counts["excluded"] == counts["absent"] == 0
    assert counts["same"] == sum(r.size for r in elf.ranges()) // 4096
    assert mem.notes == elf.notes


def test_writer_flattened_equals_plain_and_makedumpfile_R(writer_source, tmp_path):
    s, elf = writer_source
    mdf = _tool("makedumpfile")
    plain = write_kdump(elf, tmp_path / "plain", "zstd", uts=s.manifest["uts"])
    flat = write_kdump(elf, tmp_path / "flat", "zstd", uts=s.manifest["uts"], flattened=True)
    rearranged = tmp_path / "rearranged"
    with open(flat, "rb") as src:
        subprocess.run([mdf, "-R", str(rearranged)], stdin=src, check=True, capture_output=True)
    want = plain.read_bytes()
    assert rearranged.read_bytes() == want  # the header is written twice; last one wins
    source = FlattenedSource(DumpFile(flat))
    assert source.pread(0, source.size) == want
    mem = open_physical(str(flat))
    assert mem.metadata["incomplete"] is False


def test_writer_zlib_output_opens_in_crash(writer_source, tmp_path):
    s, elf = writer_source
    crash = _tool("crash")
    vmlinux = s.vmlinux()
    if vmlinux is None:
        pytest.fail(f"no -dbg vmlinux for {s.id}: run `python -m sample_dumps build --with-dbg`")
    out = write_kdump(
        elf,
        tmp_path / "vmcore.zlib",
        "zlib",
        uts=s.manifest["uts"],
        current_cpu=s.manifest["panic"]["cpu"],
    )
    # the marker string the guest left in memory: its page must read back through crash
    marker = s.manifest["marker"].encode()
    with open(s.file("elf"), "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
        at = m.find(marker)
    assert at >= 0, "marker not in the ELF dump"
    pa = next(
        paddr + at - off for paddr, _va, off, filesz, _ in elf.segments if off <= at < off + filesz
    )
    script = f"sys\nrd -p -a {pa:#x}\nq\n"
    p = subprocess.run(
        [crash, "-s", str(vmlinux), str(out)],
        input=script,
        text=True,
        capture_output=True,
        timeout=600,
    )
    text = p.stdout + p.stderr
    assert p.returncode == 0, text[-2000:]
    assert f"RELEASE: {s.manifest['kernel_release']}" in text, text[-2000:]
    assert s.manifest["panic"]["message"] in text, text[-2000:]
    assert "MACHINE: x86_64" in text
    assert f"CPUS: {s.manifest['qemu']['smp']}" in text
    assert s.manifest["marker"] in text, text[-2000:]
    assert "invalid" not in text.lower() and "not a supported" not in text, text[-2000:]


# -- split dumps -------------------------------------------------------------


@pytest.fixture(scope="module")
def split_parts(tmp_path_factory):
    s = _sample(WRITER_SAMPLE, "elf")
    mdf = _tool("makedumpfile")
    tmp = tmp_path_factory.mktemp("split")
    fixed = tmp / "fixed.elf"
    fix_qemu_elf(s.file("elf"), fixed)  # makedumpfile rejects QEMU 7.2's header layout
    parts = [tmp / f"part{i}" for i in range(3)]
    subprocess.run(
        [mdf, "--split", "--splitblock-size", "4", "-c", "-d", "31", str(fixed), *map(str, parts)],
        check=True,
        capture_output=True,
        env={"TMPDIR": str(tmp), "PATH": "/usr/bin:/bin"},
    )
    fixed.unlink()
    return s, parts


def test_split_dump_equals_unsplit(split_parts):
    s, parts = split_parts
    whole = open_physical(str(s.file("mdf-d31-c")))
    mem = open_split(list(reversed(parts)))  # order given does not matter
    spans = [(p["start_pfn"], p["end_pfn"]) for p in mem.metadata["split"]]
    assert spans[0][0] == 0 and spans[-1][1] == whole.header.max_mapnr
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    assert sum(1 for a, b in spans if b > a) >= 2, f"makedumpfile did not split: {spans}"
    assert mem.metadata["dumped_pages"] == whole.dumped_pages
    bs = whole.block_size
    for pfn in range(whole.header.max_mapnr):
        pa = pfn * bs
        if whole.has_page(pfn):
            assert mem.read_phys(pa, bs) == whole.read_phys(pa, bs), hex(pa)
        else:
            assert mem.is_excluded(pa)
            with pytest.raises(PageExcludedError):
                mem.read_phys(pa, bs)


def test_split_dump_through_kvmcore_open(split_parts):
    s, parts = split_parts
    with kvmcore.open([str(p) for p in parts]) as dump:
        assert dump.mem.format_name == "kdump-split"
        blob = dump.read(dump.vmcoreinfo.symbol("init_uts_ns"), 512)
        assert s.manifest["kernel_release"].encode() + b"\0" in blob
    one = open_physical(str(parts[0]))
    assert one.metadata["split"]["start_pfn"] == 0
    later = next(p for p in range(one.end_pfn, one.header.max_mapnr) if one.dumped.test(p))
    with pytest.raises(NotInDumpError, match="another part"):
        one.read_phys(later * one.block_size, 8)


# -- bad input: one line naming the file and the fault, promptly ------------


def _copy(s, fmt: str, dst: Path) -> Path:
    shutil.copyfile(s.file(fmt), dst)
    dst.chmod(0o644)
    return dst


def test_truncated_file(tmp_path):
    s = _sample(WRITER_SAMPLE, "mdf-d31-c")
    src = s.file("mdf-d31-c")
    data = src.read_bytes()
    head = tmp_path / "cut-in-header"
    head.write_bytes(data[:6000])  # inside the sub-header + notes
    with deadline(20), pytest.raises(TruncatedDumpError) as ei:
        open_physical(str(head))
    _one_line_error(ei.value, head, "past the end")

    good = open_physical(str(src))
    _, last = max(
        (good.page_descriptor(p).offset, p)
        for p in range(good.header.max_mapnr)
        if good.has_page(p)
    )  # the page stored last in the file
    tail = tmp_path / "cut-in-data"
    tail.write_bytes(data[: len(data) // 2])
    with deadline(20):
        mem = open_physical(str(tail))
        with pytest.raises(TruncatedDumpError) as ei:
            mem.read_phys(last * mem.block_size, 16)
    _one_line_error(ei.value, tail, f"pfn {last:#x}", "truncated")

    flat = tmp_path / "cut-flattened"
    fdata = s.file("mdf-d31-F").read_bytes()
    flat.write_bytes(fdata[: len(fdata) // 2])
    with deadline(20), pytest.raises(TruncatedDumpError) as ei:
        open_physical(str(flat))
    _one_line_error(ei.value, flat, "runs past the end")


def test_zeroed_header(tmp_path):
    s = _sample(WRITER_SAMPLE, "mdf-d31-c")
    path = _copy(s, "mdf-d31-c", tmp_path / "zeroed-fields")
    with open(path, "r+b") as f:
        f.seek(8)
        f.write(bytes(4096 - 8))  # keep only the signature
    with deadline(20), pytest.raises(DumpFormatError) as ei:
        open_physical(str(path))
    _one_line_error(ei.value, path, "corrupt kdump header")

    blank = _copy(s, "mdf-d31-c", tmp_path / "zeroed-block")
    with open(blank, "r+b") as f:
        f.write(bytes(4096))
    with deadline(20), pytest.raises(DumpFormatError) as ei:
        open_physical(str(blank))
    _one_line_error(ei.value, blank, "not a recognised crash dump")


def test_bitmap_claims_more_pages_than_file_holds(tmp_path):
    s = _sample(WRITER_SAMPLE, "mdf-d31-c")
    good = open_physical(str(s.file("mdf-d31-c")))
    h, bs = good.header, good.block_size
    half = h.bitmap_blocks * bs // 2
    bitmap2_at = (1 + h.sub_hdr_size) * bs + half
    desc_end = good.desc_base + good.dumped_pages * 24
    data = bytearray(s.file("mdf-d31-c").read_bytes()[:desc_end])  # descriptors, no pages
    data[bitmap2_at : bitmap2_at + h.max_mapnr // 8] = b"\xff" * (h.max_mapnr // 8)
    path = tmp_path / "bitmap-all-ones"
    path.write_bytes(bytes(data))
    with deadline(20), pytest.raises(TruncatedDumpError) as ei:
        open_physical(str(path))
    _one_line_error(ei.value, path, f"claims {h.max_mapnr} dumped pages", "past the end")

    huge = _copy(s, "mdf-d31-c", tmp_path / "bitmap-blocks-huge")
    with open(huge, "r+b") as f:
        f.seek(436)  # bitmap_blocks, LP64 layout
        f.write(struct.pack("<I", 1 << 20))
    with deadline(20), pytest.raises(TruncatedDumpError) as ei:
        open_physical(str(huge))
    _one_line_error(ei.value, huge, "bitmaps", "past the end")


@pytest.mark.parametrize("fmt,codec", [("mdf-d31-c", "zlib"), ("mdf-d31-l", "lzo")])
def test_compressed_page_fails_to_inflate(tmp_path, fmt, codec):
    s = _sample(WRITER_SAMPLE, fmt)
    good = open_physical(str(s.file(fmt)))
    pfn = next(
        p
        for p in range(good.header.max_mapnr)
        if good.has_page(p) and good.page_descriptor(p).size < good.block_size
    )
    desc = good.page_descriptor(pfn)
    path = _copy(s, fmt, tmp_path / f"corrupt-{codec}")
    with open(path, "r+b") as f:
        f.seek(desc.offset)
        f.write(b"\xff" * desc.size)
    with deadline(20), pytest.raises(DecompressionError) as ei:
        open_physical(str(path)).read_phys(pfn * good.block_size, 8)
    _one_line_error(ei.value, path, f"pfn {pfn:#x}", codec)


@pytest.mark.parametrize("fmt", ["mdf-d31-c", "mdf-d31-E"])
def test_zero_filled_reads_list_the_filtered_pages(fmt):
    """`read(va, n, zero_excluded=True, excluded=spans)` over 64 MiB of the
    direct map of a makedumpfile -d 31 dump: the bytes are drgn's (libkdumpfile
    for -c, with drgn's faulting pages as zeros; drgn's ELF reader for -E, which
    reads filtered pages as zeros), and the spans listed are exactly the pages
    a plain read refuses as excluded (and, for -c, the pages drgn faults on)."""
    import drgn  # the test extra installs it

    s = _sample("x86_64-kaslr", fmt)
    dump = kvmcore.open(str(s.file(fmt)))
    prog = drgn.Program()
    prog.set_core_dump(str(s.file(fmt)))
    prog.load_debug_info([str(s.vmlinux())])
    base = dump.read_u64(dump.symbols.lookup("page_offset_base")) + (16 << 20)
    size, page = 64 << 20, 4096
    spans: list[tuple[int, int]] = []
    data = dump.read(base, size, zero_excluded=True, excluded=spans)
    listed = {va for start, n in spans for va in range(start, start + n, page)}
    refused, expected = set(), bytearray()
    for va in range(base, base + size, page):
        with contextlib.suppress(PageExcludedError):
            dump.read(va, page)
            continue
        refused.add(va)
    for va in range(base, base + size, page):
        try:
            expected += prog.read(va, page)
        except drgn.FaultError:
            assert fmt == "mdf-d31-c", f"drgn faults on {va:#x} of an ELF"
            assert va in listed
            expected += bytes(page)
    assert len(data) == size and data == bytes(expected)
    assert listed == refused and len(listed) > 100  # -d 31 drops free and cache pages
