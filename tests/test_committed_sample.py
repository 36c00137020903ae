"""The fast tier on the small real dump committed to git
(sample_dumps/committed/x86_64-small: a Debian x86_64 kernel panicked under QEMU
by sysrq-c, written by makedumpfile -c -d 31). No QEMU, no built samples.

Ground truth, never a value kvmcore just produced:
- the manifest beside the dump (what the guest printed on its serial console,
  and the build inputs: release, build id, QEMU's CPUs and memory);
- the dump file itself, decoded here with struct + zlib from makedumpfile's
  documented layout (diskdump_mod.h), independently of kvmcore's reader;
- the VMCOREINFO note the kernel wrote (its SYMBOL/OFFSET/SIZE/NUMBER lines),
  taken from that independent decode;
- x86_64 ABI facts (__START_KERNEL_map, TASK_COMM_LEN).
"""

from __future__ import annotations

import contextlib
import json
import re
import socket
import struct
import subprocess
import sys
import threading
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pytest
from conftest import ROOT
from kdump_writer import write_kdump
from manifest_checks import (
    assert_idle_task_per_cpu,
    assert_marker_then_panic,
    assert_tasks_match_manifest,
)

import kvmcore
from kvmcore.errors import KvmcoreError, NotMappedError, PageExcludedError
from kvmcore.formats import open_physical
from kvmcore.gdbserver import serve
from kvmcore.gdbserver.packets import PacketReader, frame
from kvmcore.linux.panic import CPU_LINE_RE
from kvmcore.symbols import load_symbols
from kvmcore.types import load_types
from kvmcore.types.facade import TypeInfo

pytestmark = pytest.mark.fast

SAMPLE_DIR = ROOT / "sample_dumps" / "committed" / "x86_64-small"
MANIFEST = json.loads((SAMPLE_DIR / "manifest.json").read_text())
FMT = "mdf-d31-c"
DUMP = SAMPLE_DIR / MANIFEST["files"][FMT]["path"]
KVMCORE = Path(sys.executable).with_name("kvmcore")
SCHEMA = ROOT / "kvmcore" / "schema" / "report.schema.json"

START_KERNEL_MAP = 0xFFFFFFFF80000000  # x86_64 ABI: where the kernel image is mapped
TASK_COMM_LEN = 16  # include/linux/sched.h, fixed by the ABI of prctl()
U64 = 1 << 64


# ------------------------------------------------------------------ an independent reader


@dataclass
class RawKdump:
    """makedumpfile's kdump-compressed file, decoded with struct and zlib only
    (layout: makedumpfile diskdump_mod.h, LP64): header, sub-header, 2nd bitmap,
    page descriptors, zlib pages."""

    data: bytes

    HEADER = struct.Struct("<8si390s6xqqIiiIIIIIIi")  # struct disk_dump_header
    SUB = struct.Struct("<QiiQQqQqQqQQQQ")  # struct kdump_sub_header (v6)
    DESC = struct.Struct("<qIIQ")  # page_desc_t
    ZLIB = 0x1  # DUMP_DH_COMPRESSED_ZLIB

    def __post_init__(self) -> None:
        (
            self.signature,
            self.version,
            _uts,
            _sec,
            _usec,
            _status,
            self.block_size,
            self.sub_hdr_size,
            self.bitmap_blocks,
            max_mapnr,
            *_rest,
            self.nr_cpus,
        ) = self.HEADER.unpack_from(self.data, 0)
        sub = self.SUB.unpack_from(self.data, self.block_size)
        self.phys_base, self.dump_level = sub[0], sub[1]
        off_vi, size_vi = sub[5], sub[6]
        self.max_mapnr = sub[13] if self.version >= 6 else max_mapnr
        self.vmcoreinfo_text = self.data[off_vi : off_vi + size_vi].decode()

    @cached_property
    def vmcoreinfo(self) -> dict[str, str]:
        return dict(line.split("=", 1) for line in self.vmcoreinfo_text.splitlines() if "=" in line)

    def symbol(self, name: str) -> int:
        return int(self.vmcoreinfo[f"SYMBOL({name})"], 16)

    @cached_property
    def pages(self) -> dict[int, bytes]:
        """pfn -> page of every page the 2nd bitmap says is dumped."""
        bs = self.block_size
        half = self.bitmap_blocks * bs // 2
        bitmap2 = (1 + self.sub_hdr_size) * bs + half
        desc_at = (1 + self.sub_hdr_size + self.bitmap_blocks) * bs
        out = {}
        for pfn in range(self.max_mapnr):
            if self.data[bitmap2 + (pfn >> 3)] >> (pfn & 7) & 1:
                off, size, flags, _ = self.DESC.unpack_from(self.data, desc_at)
                desc_at += self.DESC.size
                raw = self.data[off : off + size]
                out[pfn] = zlib.decompress(raw) if flags & self.ZLIB else raw
                assert len(out[pfn]) == bs, pfn
        return out

    def read_phys(self, pa: int, length: int) -> bytes:
        bs = self.block_size
        out = b""
        while length > 0:
            pfn, off = divmod(pa, bs)
            chunk = self.pages[pfn][off : off + length]
            out += chunk
            pa += len(chunk)
            length -= len(chunk)
        return out


@pytest.fixture(scope="module")
def raw() -> RawKdump:
    return RawKdump(DUMP.read_bytes())


@pytest.fixture(scope="module")
def dump():
    with kvmcore.open(str(DUMP)) as d:
        yield d


def image_pa(raw: RawKdump, va: int) -> int:
    """The kernel image's linear map: pa = va - __START_KERNEL_map + phys_base
    (phys_base as the kernel's VMCOREINFO NUMBER(phys_base) says)."""
    return (va - START_KERNEL_MAP + int(raw.vmcoreinfo["NUMBER(phys_base)"])) % U64


# ------------------------------------------------------------------ formats


def test_manifest_and_file_agree(raw):
    entry = MANIFEST["files"][FMT]
    assert DUMP.stat().st_size == entry["size"]
    assert (entry["format"], entry["filtered"], entry["compression"]) == ("kdump", "d31", "zlib")
    assert raw.signature == b"KDUMP   "
    assert raw.dump_level == 31
    assert raw.nr_cpus == MANIFEST["qemu"]["smp"]
    assert raw.max_mapnr * raw.block_size == MANIFEST["qemu"]["memory_mb"] << 20
    assert raw.vmcoreinfo["OSRELEASE"] == MANIFEST["kernel_release"]
    assert raw.vmcoreinfo["BUILD-ID"] == MANIFEST["build_id"]  # readelf -n on the -dbg vmlinux


def test_format_metadata(dump, raw):
    assert dump.format_name.startswith("kdump")
    assert dump.arch.name == MANIFEST["arch"]
    assert dump.os == "linux"
    mem = dump.mem
    assert mem.metadata["compression"] == [MANIFEST["files"][FMT]["compression"]]
    assert mem.metadata["nr_cpus"] == MANIFEST["qemu"]["smp"]
    assert dump.vmcoreinfo.text == raw.vmcoreinfo_text
    assert len(dump.cpu_states) == MANIFEST["qemu"]["smp"]


def test_every_dumped_page_reads_as_the_file_holds_it(dump, raw):
    bs = raw.block_size
    assert len(raw.pages) > 1000
    for pfn, page in raw.pages.items():
        assert dump.read_phys(pfn * bs, bs) == page, f"pfn {pfn:#x}"
    # and a read across a page boundary joins the two pages
    pfn = next(p for p in raw.pages if p + 1 in raw.pages)
    assert dump.read_phys((pfn + 1) * bs - 8, 16) == raw.pages[pfn][-8:] + raw.pages[pfn + 1][:8]


def test_filtered_pages_are_reported_as_excluded(dump, raw, pob):
    bs = raw.block_size
    missing = [p for p in range(raw.max_mapnr) if p not in raw.pages]
    assert missing, "a -d 31 dump of a running system leaves some pages out"
    for pfn in missing[:: max(1, len(missing) // 200)]:
        with pytest.raises(PageExcludedError):
            dump.read_phys(pfn * bs, 8)
        # through the direct map, a caller that asks for zeros gets them (crash's -z)
        assert dump.read(pob + pfn * bs, 8, zero_excluded=True) == bytes(8)


@pytest.mark.parametrize(
    "codec, flattened", [("lzo", False), ("snappy", False), ("zstd", False), ("zlib", True)]
)
def test_repacked_in_each_codec_reads_the_same_pages(raw, tmp_path, codec, flattened):
    """The committed file's pages re-packed by tests/kdump_writer.py in another codec (or
    in makedumpfile's flattened stream) read back as the file holds them."""
    out = write_kdump(
        open_physical(str(DUMP)),
        tmp_path / f"vmcore.{codec}",
        codec,
        uts=MANIFEST["uts"],
        flattened=flattened,
    )
    mem = open_physical(str(out))
    assert mem.metadata["compression"] == [codec]
    assert (mem.metadata.get("container") == "flattened") == flattened
    bs = raw.block_size
    for pfn, page in raw.pages.items():
        assert mem.read_phys(pfn * bs, bs) == page, f"pfn {pfn:#x}"
    excluded = next(p for p in range(raw.max_mapnr) if p not in raw.pages)
    with pytest.raises(PageExcludedError):
        mem.read_phys(excluded * bs, 8)
    with kvmcore.open(str(out)) as again:
        assert again.kernel.panic.message == MANIFEST["panic"]["message"]


# ------------------------------------------------------------------ translation


def test_kernel_image_va_translates_by_the_linear_map(dump, raw):
    for name in ("init_uts_ns", "_stext", "prb", "init_top_pgt", "node_data"):
        va = raw.symbol(name)
        t = dump.translate(va)
        assert t.pa == image_pa(raw, va), name
        assert dump.read(va, 64) == raw.read_phys(image_pa(raw, va), 64), name


@pytest.fixture(scope="module")
def pob(dump, raw) -> int:
    """page_offset_base, the KASLR'd start of the direct map: read through the
    image's linear map from the independent decode, at the address kallsyms gives."""
    va = load_symbols(dump).lookup("page_offset_base")
    value = int.from_bytes(raw.read_phys(image_pa(raw, va), 8), "little")
    assert value % (1 << 30) == 0 and value >= 0xFFFF800000000000, hex(value)
    return value


def test_direct_map_va_translates_by_page_offset_base(dump, raw, pob):
    # the direct-map alias of the kernel's own uts_namespace
    pa = image_pa(raw, raw.symbol("init_uts_ns"))
    assert dump.translate(pob + pa).pa == pa
    assert dump.read(pob + pa, 390) == raw.read_phys(pa, 390)
    # VMCOREINFO's mem_section is a pointer into the direct map (SPARSEMEM_EXTREME)
    sections = raw.symbol("mem_section")
    assert dump.translate(sections).pa == sections - pob
    assert dump.read(sections, 64) == raw.read_phys(sections - pob, 64)


def test_direct_map_chunks_read_as_the_file_holds_them(dump, raw, pob):
    """Reads of many pages at once through the direct map (4 KiB pages where the
    kernel split it, 2 MiB elsewhere; kvmcore reads a physically contiguous run
    in one step): 64 KiB chunks, and chunks of odd length and alignment, equal
    the independent decode's pages, zeros for the pages the dump filtered,
    which `excluded` lists exactly; without zero_excluded a chunk holding a
    filtered page raises, naming its first one."""
    bs = raw.block_size
    start = 0x100000  # above the legacy VGA/BIOS hole, which is not RAM
    end = start  # up to the first page the direct map leaves out (reserved at RAM's top)
    with contextlib.suppress(NotMappedError):
        while end < raw.max_mapnr * bs:
            dump.translate(pob + end)
            end += bs
    assert end - start > (raw.max_mapnr * bs) // 2
    expected = b"".join(raw.pages.get(pfn, bytes(bs)) for pfn in range(start // bs, end // bs))
    filtered = {pob + pfn * bs for pfn in range(start // bs, end // bs) if pfn not in raw.pages}
    assert filtered and len(filtered) < (end - start) // bs
    listed: set[int] = set()
    for size, step in ((0x10000, 0x10000), (0x6A38, 0x7000 + 0x123)):
        for at in range(start, end - size, step):
            spans: list[tuple[int, int]] = []
            data = dump.read(pob + at, size, zero_excluded=True, excluded=spans)
            assert data == expected[at - start : at - start + size], f"pa {at:#x}+{size:#x}"
            for va, n in spans:
                first, last = va & ~(bs - 1), (va + n - 1) & ~(bs - 1)
                pages = set(range(first, last + 1, bs))
                assert pages <= filtered, f"listed {va:#x}+{n:#x}: not all filtered"
                if size == 0x10000:
                    listed |= pages
            if size != 0x10000:
                continue
            gone = [p for p in range(pob + at, pob + at + size, bs) if p in filtered]
            if gone:
                with pytest.raises(PageExcludedError) as ei:
                    dump.read(pob + at, size)
                assert f"{gone[0]:#x}" in str(ei.value)
            else:
                assert dump.read(pob + at, size) == data
    window = {p for p in filtered if p < pob + start + ((end - start) // 0x10000 - 1) * 0x10000}
    assert listed == window


def test_init_uts_ns_reads_the_manifest_uts(dump, raw):
    base = raw.symbol("init_uts_ns") + int(raw.vmcoreinfo["OFFSET(uts_namespace.name)"])
    blob = dump.read(base, 6 * 65)
    fields = [blob[i * 65 : (i + 1) * 65].split(b"\0")[0].decode() for i in range(6)]
    uts = MANIFEST["uts"]
    assert (fields[0], fields[2], fields[3], fields[4]) == (
        uts["sysname"],
        uts["release"],
        uts["version"],
        uts["machine"],
    )


def test_unmapped_va_is_an_error(dump):
    with pytest.raises(KvmcoreError):
        dump.read(0, 8)  # page 0 is never mapped


# ------------------------------------------------------------------ symbols


def test_kallsyms_agrees_with_vmcoreinfo(dump, raw):
    table = load_symbols(dump)
    assert table.source == "kallsyms"
    # kallsyms_num_syms, read independently at the address the kernel wrote into VMCOREINFO
    num = int.from_bytes(raw.read_phys(image_pa(raw, raw.symbol("kallsyms_num_syms")), 4), "little")
    assert len(table) == num
    checked = []
    for key, value in raw.vmcoreinfo.items():
        m = re.fullmatch(r"SYMBOL\((\w+)\)", key)
        if not m or m[1] not in table:
            continue
        if m[1] == "mem_section":
            # VMCOREINFO_SYMBOL_ARRAY(mem_section): SPARSEMEM_EXTREME's pointer, not its address
            at = image_pa(raw, table.lookup("mem_section"))
            assert int.from_bytes(raw.read_phys(at, 8), "little") == int(value, 16)
        else:
            assert table.lookup(m[1]) == int(value, 16), m[1]
        checked.append(m[1])
    assert {"init_uts_ns", "_stext", "prb", "init_top_pgt"} <= set(checked), checked


def test_kallsyms_knows_the_panic_path(dump, raw):
    table = load_symbols(dump)
    text_start, text_end = table.lookup("_stext"), table.lookup("_etext")
    # Debian's x86_64 kernels link _stext at __START_KERNEL_map + CONFIG_PHYSICAL_START
    # (16 MB, System.map); KASLR slides it by KERNELOFFSET
    assert text_start == START_KERNEL_MAP + (16 << 20) + int(raw.vmcoreinfo["KERNELOFFSET"], 16)
    assert (int(raw.vmcoreinfo["KERNELOFFSET"], 16) != 0) == MANIFEST["kaslr"]
    for name in ("panic", "sysrq_handle_crash", "__handle_sysrq", "schedule"):
        sym = table.symbol(name)
        assert sym.type in "tT" and text_start <= sym.address < text_end, name
    crash = table.lookup("sysrq_handle_crash")
    assert table.symbolize(crash + 4).startswith("sysrq_handle_crash+0x4/")
    banner = dump.read_cstring(table.lookup("linux_banner"))
    assert banner.startswith(f"Linux version {MANIFEST['kernel_release']} ")
    assert MANIFEST["uts"]["version"] in banner


# ------------------------------------------------------------------ types


@pytest.fixture(scope="module")
def btf(dump) -> TypeInfo:
    types = load_types(dump)
    assert types.sources[0].name == "btf" and "(memory)" in types.sources[0].origin
    return TypeInfo([types.sources[0]])  # BTF alone: no VMCOREINFO helpers behind it


def test_btf_task_struct(btf):
    comm = btf.member_type("struct task_struct", "comm").strip()
    assert (comm.kind, comm.length) == ("array", TASK_COMM_LEN)
    for member in ("pid", "tgid", "tasks", "real_parent", "comm", "__state", "stack"):
        assert btf.has_member("struct task_struct", member), member
    assert btf.sizeof("pid_t") == 4
    assert btf.sizeof("struct list_head") == 16


def test_btf_agrees_with_every_vmcoreinfo_layout_line(btf, raw):
    checked = 0
    for key, value in raw.vmcoreinfo.items():
        if m := re.fullmatch(r"OFFSET\((\w+)\.(\w+)\)", key):
            names = (f"struct {m[1]}", m[1])
            got = next(btf.offsetof(n, m[2]) for n in names if btf.find(n))
        elif m := re.fullmatch(r"SIZE\((\w+)\)", key):
            names = (f"struct {m[1]}", m[1])
            got = next(btf.sizeof(n) for n in names if btf.find(n))
        else:
            continue
        assert got == int(value), key
        checked += 1
    assert checked >= 40, checked


# ------------------------------------------------------------------ the kernel model


def test_ps_has_the_manifest_processes_and_threads(dump):
    tasks = dump.kernel.task_list
    assert_tasks_match_manifest(tasks, MANIFEST)
    assert_idle_task_per_cpu(tasks, MANIFEST["qemu"]["smp"])


def test_dmesg_has_the_marker_and_the_panic(dump):
    log = dump.kernel.kernel_log
    assert not log.partial, log.problem
    texts = [r.text for r in log.records]
    assert_marker_then_panic(texts, MANIFEST)
    # dump_stack()'s "CPU: n PID: p Comm: c" line names the panicking task
    cpu_lines = [m for t in texts if (m := CPU_LINE_RE.search(t))]
    assert (int(cpu_lines[-1].group(1)), int(cpu_lines[-1].group(2))) == (
        MANIFEST["panic"]["cpu"],
        MANIFEST["panic"]["pid"],
    )
    # the marker's bytes are in the ring buffer's memory, as the file holds it
    assert MANIFEST["marker"].encode() in b"".join(
        dump.read_phys(pfn * 4096, 4096) for pfn in _ring_pfns(dump)
    )


def _ring_pfns(dump) -> list[int]:
    info = dump.vmcoreinfo
    ring = dump.read_ptr(info.symbol("prb")) + info.offset("printk_ringbuffer", "text_data_ring")
    data = dump.read_ptr(ring + info.offset("prb_data_ring", "data"))
    size = 1 << dump.read_u32(ring + info.offset("prb_data_ring", "size_bits"))
    return sorted({dump.translate(va).pa >> 12 for va in range(data, data + size, 4096)})


def test_panic_task_and_backtrace(dump):
    panic = dump.kernel.panic
    m = MANIFEST["panic"]
    assert panic.message == m["message"]
    assert panic.cpu == m["cpu"]
    assert (panic.task.pid, panic.task.comm) == (m["pid"], m["comm"])
    assert panic.task.on_cpu and panic.task.cpu == m["cpu"]
    names = [f.function or "" for f in dump.backtrace(panic.task).frames]
    crash_at = next(i for i, n in enumerate(names) if n.startswith("sysrq_handle_crash+"))
    assert any(n.startswith("panic+") for n in names[:crash_at]), names
    assert any(n.startswith("__handle_sysrq") for n in names[crash_at + 1 :]), names


def test_sleeping_threads_unwind_through_schedule(dump):
    for th in MANIFEST["threads"]:
        task = dump.kernel.find_task(th["tid"])
        names = [f.function or "" for f in dump.backtrace(task).frames]
        assert any(n.startswith("schedule+") for n in names), (th, names)


# ------------------------------------------------------------------ the report (CLI)


def kvmcore_cli(*args: str) -> str:
    if not KVMCORE.exists():
        pytest.fail(
            f"{KVMCORE} is missing: install kvmcore into this venv (pip install -e .)",
            pytrace=False,
        )
    p = subprocess.run(
        [str(KVMCORE), *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.fixture(scope="module")
def report() -> dict:
    return json.loads(kvmcore_cli("analyze", str(DUMP), "--json"))


def test_report_validates_against_the_schema(report):
    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is missing: pip install -e '.[test]'", pytrace=False)
    jsonschema.validate(report, json.loads(SCHEMA.read_text()))
    assert report["schema_version"] == 1


def test_report_headline_is_the_manifest_panic(report):
    h, m = report["headline"], MANIFEST
    assert h["panic_message"] == m["panic"]["message"]
    assert (h["task"]["pid"], h["task"]["comm"]) == (m["panic"]["pid"], m["panic"]["comm"])
    assert (h["cpu"], h["release"], h["arch"]) == (
        m["panic"]["cpu"],
        m["kernel_release"],
        m["arch"],
    )
    names = [f["function"] or "" for f in report["backtrace"]["frames"]]
    assert any(n.startswith("sysrq_handle_crash+") for n in names), names
    d = report["dump"]
    assert (d["format"], d["dump_level"], d["size"]) == ("kdump", 31, m["files"][FMT]["size"])
    assert (d["symbols"], d["types"]) == ("kallsyms", "btf")
    assert {p["pid"] for p in m["processes"]} <= {t["pid"] for t in report["tasks"]["list"]}
    assert any(m["panic"]["message"] in line for line in report["log"]["lines"])


def test_report_text_headline_and_ps_json():
    text = kvmcore_cli("analyze", str(DUMP))
    assert "\x1b" not in text, "piped output must carry no escape codes"
    assert text.splitlines()[0] == f"Kernel panic: {MANIFEST['panic']['message']}"
    assert f"{MANIFEST['kernel_release']} ({MANIFEST['arch']})" in text
    ps = json.loads(kvmcore_cli("ps", str(DUMP), "--json"))
    got = {t["pid"]: t for t in ps["tasks"]}
    for p in MANIFEST["processes"]:
        assert got[p["pid"]]["comm"] == p["comm"], p


# ------------------------------------------------------------------ the gdb server


@pytest.fixture(scope="module")
def server(dump):
    box, ready = {}, threading.Event()

    def on_ready(srv):
        box["server"] = srv
        ready.set()

    threading.Thread(
        target=serve,
        args=(dump, "127.0.0.1:0"),
        kwargs={"log": lambda _line: None, "ready": on_ready},
        daemon=True,
    ).start()
    assert ready.wait(30)
    yield box["server"]
    box["server"].close()


def exchange(sock: socket.socket, payload: bytes) -> bytes:
    sock.sendall(frame(payload))
    reader = PacketReader()
    while True:
        data = sock.recv(1 << 16)
        assert data, "server closed the connection"
        for ev in reader.feed(data):
            if ev.kind == "packet":
                sock.sendall(b"+")
                return ev.data


def test_gdb_server_threads_are_the_manifest_tasks(server, raw):
    sock = socket.create_connection(server.address, timeout=30)
    try:
        sock.sendall(b"$qC#00")  # a bad checksum: NAK, and the session goes on
        assert sock.recv(1) == b"-"
        assert exchange(sock, b"qC") == b"QC%x" % MANIFEST["panic"]["pid"]
        tids: set[int] = set()
        reply = exchange(sock, b"qfThreadInfo")
        while reply.startswith(b"m"):
            tids |= {int(t, 16) for t in reply[1:].split(b",")}
            reply = exchange(sock, b"qsThreadInfo")
        assert reply == b"l"
        want = {p["pid"] for p in MANIFEST["processes"]} | {t["tid"] for t in MANIFEST["threads"]}
        assert want <= tids
        va = raw.symbol("init_uts_ns")
        got = bytes.fromhex(exchange(sock, b"m%x,40" % va).decode())
        assert got == raw.read_phys(image_pa(raw, va), 0x40)
    finally:
        sock.close()
