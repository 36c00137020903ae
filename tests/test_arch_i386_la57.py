"""The i386 backend (Debian 686-pae: PAE paging; Debian 686: 2-level paging)
and 5-level x86_64 paging, on the real sample dumps i386-pae, i386-nopae and
x86_64-la57.

Ground truth comes from the samples' manifests (what the guest printed), from
VMCOREINFO as readelf decodes it, from QEMU's own per-CPU note (control
registers), from the -dbg package's System.map, and from gdb. The format
variants of i386-pae are compared page for page in tests/test_kdump_formats.py
(parametrized over every sample).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import readelf_vmcoreinfo

import kvmcore
from kvmcore.registry import get_arch
from sample_dumps.catalog import load_samples

ROOT = Path(__file__).resolve().parent.parent
BUILD = "python -m sample_dumps build --only i386-pae,i386-nopae,x86_64-la57"
SAMPLES = load_samples()
I386, NOPAE, LA57 = "i386-pae", "i386-nopae", "x86_64-la57"
START_KERNEL_MAP = 0xFFFFFFFF80000000
I386_PAGE_OFFSET = 0xC0000000  # Debian's CONFIG_VMSPLIT_3G
UTS_FIELD = 65  # __NEW_UTS_LEN + 1
# QEMU's QEMUCPUState note (target/i386/arch_dump.c): version, size, 18 u64
# registers, 10 segments of 24 bytes, then cr[0..4]
QEMU_NOTE_CR4 = 8 + 18 * 8 + 10 * 24 + 4 * 8
CR4_PAE, CR4_LA57 = 1 << 5, 1 << 12


def sample(sid: str):
    if sid not in SAMPLES:
        pytest.fail(f"sample {sid} is not built: run `{BUILD}`")
    return SAMPLES[sid]


def dump_files(sid: str) -> list:
    if sid not in SAMPLES:
        return [pytest.param(sid, None, id=f"{sid}-missing")]
    return [pytest.param(sid, fmt, id=f"{sid}-{fmt}") for fmt in SAMPLES[sid].formats]


def i386_vmlinux(sid: str = I386) -> Path:
    v = sample(sid).vmlinux()
    if v is None:
        pytest.fail(f"the -dbg vmlinux of {sid} is missing: run `{BUILD} --with-dbg`")
    return v


def qemu_cr4(dump) -> list[int]:
    """CR4 of every vCPU from QEMU's "QEMU" notes."""
    notes = [n for n in dump.mem.notes if n.name == "QEMU"]
    assert notes, "the QEMU ELF dump has no QEMU CPU-state notes"
    return [int.from_bytes(n.desc[QEMU_NOTE_CR4 : QEMU_NOTE_CR4 + 8], "little") for n in notes]


def kvmcore_cli(*args: str) -> str:
    exe = Path(sys.executable).parent / "kvmcore"
    if not exe.exists():
        pytest.fail(f"{exe} is missing: pip install -e . in the venv")
    p = subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return p.stdout


# -- arch selection and uts through kernel virtual memory ---------------------


@pytest.mark.parametrize("sid,fmt", dump_files(I386) + dump_files(NOPAE) + dump_files(LA57))
def test_open_picks_arch_and_reads_uts(sid, fmt):
    s = sample(sid)
    m = s.manifest
    want = {I386: "i386", NOPAE: "i386", LA57: "x86_64"}[sid]
    with kvmcore.open(str(s.file(fmt))) as dump:
        assert dump.arch.name == want
        assert dump.word_size == (8 if sid == LA57 else 4)
        info = dump.vmcoreinfo
        base = info.symbol("init_uts_ns") + info.offset("uts_namespace", "name")
        raw = dump.read(base, UTS_FIELD * 5)
    fields = [raw[i * UTS_FIELD : (i + 1) * UTS_FIELD].split(b"\0")[0].decode() for i in range(5)]
    sysname, _node, release, version, machine = fields
    assert (sysname, release, version, machine) == (
        m["uts"]["sysname"],
        m["uts"]["release"],
        m["uts"]["version"],
        m["uts"]["machine"],
    )


@pytest.mark.parametrize("sid,other", [(I386, "x86_64"), (NOPAE, "x86_64"), (LA57, "i386")])
def test_other_x86_backend_does_not_claim(sid, other):
    s = sample(sid)
    with kvmcore.open(str(s.file(s.formats[0]))) as dump:
        assert not get_arch(other).probe(dump.mem)


# -- i386 PAE -----------------------------------------------------------------


@pytest.mark.parametrize("sid,pae", [(I386, True), (NOPAE, False)])
def test_i386_vmcoreinfo_and_cpu_agree_on_pae(sid, pae):
    s = sample(sid)
    fields = readelf_vmcoreinfo(s.file("elf"))
    assert (fields.get("CONFIG_X86_PAE") == "y") == pae
    assert "KERNELOFFSET" not in fields  # i386 shows its relocation only in SYMBOL(_stext)
    with kvmcore.open(str(s.file("elf"))) as dump:
        assert dump.translator.describe()["pae"] == pae
        assert len(dump.translator.table.levels) == (3 if pae else 2)
        assert [bool(cr4 & CR4_PAE) for cr4 in qemu_cr4(dump)] == [pae] * s.manifest["qemu"]["smp"]
        assert dump.translator.describe()["page_offset"] == I386_PAGE_OFFSET
        assert dump.translator.root == int(fields["SYMBOL(swapper_pg_dir)"], 16) - I386_PAGE_OFFSET


@pytest.mark.parametrize("sid,fmt", dump_files(I386) + dump_files(NOPAE))
def test_i386_translate_is_pa_of_direct_map(sid, fmt):
    """Lowmem kernel addresses are __pa(x) = x - PAGE_OFFSET; reading the
    physical page directly gives the manifest's release."""
    s = sample(sid)
    fields = readelf_vmcoreinfo(s.file("elf"))
    uts = int(fields["SYMBOL(init_uts_ns)"], 16)
    with kvmcore.open(str(s.file(fmt))) as dump:
        t = dump.translate(uts)
        assert t.pa == uts - I386_PAGE_OFFSET
        # PAE: 4 KB or 2 MB pages; 2-level: 4 KB or 4 MB
        assert t.page_size in ((4096, 2 << 20) if sid == I386 else (4096, 4 << 20))
        phys = dump.read_phys(t.pa, UTS_FIELD * 3)
        assert phys[2 * UTS_FIELD :].split(b"\0")[0].decode() == s.manifest["kernel_release"]


@pytest.mark.parametrize("sid,large", [(I386, 2 << 20), (NOPAE, 4 << 20)])
def test_i386_walk_pages_page_sizes_and_lowmem(sid, large):
    s = sample(sid)
    with kvmcore.open(str(s.file("elf"))) as dump:
        ranges = list(dump.walk_pages())
    ram = s.manifest["qemu"]["memory_mb"] << 20
    assert ranges, "walk_pages yielded nothing"
    sizes = {r.page_size for r in ranges}
    assert sizes <= {4096, large} and large in sizes, sizes
    assert all(r.va + r.size <= 1 << 32 for r in ranges)
    first = ranges[0]
    assert (first.va, first.pa) == (I386_PAGE_OFFSET, 0)
    # lowmem (up to 896 MB, here all of the guest's RAM) is linearly mapped at
    # PAGE_OFFSET; the legacy VGA hole and firmware-reserved pages may be missing
    lowmem = sum(r.size for r in ranges if r.va - r.pa == I386_PAGE_OFFSET)
    assert min(ram, 896 << 20) - (4 << 20) <= lowmem <= min(ram, 896 << 20), hex(lowmem)


# -- x86_64 5-level -----------------------------------------------------------


def test_la57_vmcoreinfo_and_cpu_say_five_levels():
    s = sample(LA57)
    fields = readelf_vmcoreinfo(s.file("elf"))
    assert fields.get("NUMBER(pgtable_l5_enabled)") == "1"
    with kvmcore.open(str(s.file("elf"))) as dump:
        assert all(cr4 & CR4_LA57 for cr4 in qemu_cr4(dump))
        assert len(dump.translator.table.levels) == 5
    other = SAMPLES.get("x86_64-kaslr")
    if other is None:
        pytest.fail("sample x86_64-kaslr is not built: run `python -m sample_dumps build`")
    with kvmcore.open(str(other.file("elf"))) as dump:
        assert not any(cr4 & CR4_LA57 for cr4 in qemu_cr4(dump))


class CountingReads:
    """Counts the physical reads of one translation (one per table visited)."""

    def __init__(self, read_phys):
        self.read_phys, self.count = read_phys, 0

    def __call__(self, pa: int, n: int) -> bytes:
        self.count += 1
        return self.read_phys(pa, n)


def test_la57_kernel_image_and_direct_map():
    s = sample(LA57)
    fields = readelf_vmcoreinfo(s.file("elf"))
    uts = int(fields["SYMBOL(init_uts_ns)"], 16)
    want_pa = uts - START_KERNEL_MAP + int(fields["NUMBER(phys_base)"])  # NUMBER() is decimal
    with kvmcore.open(str(s.file("elf"))) as dump:
        translator = dump.translator
        counter = CountingReads(dump.mem.read_phys)
        translator.read_phys = counter
        t = translator.translate(uts)
        assert t.pa == want_pa
        # PML5, PML4, PDPT, PD (+ PT for a 4 KB page)
        assert counter.count == (4 if t.page_size == 2 << 20 else 5), (counter.count, t)
        image_bytes = dump.read(uts, UTS_FIELD * 5)
        ranges = list(dump.walk_pages())
        # the direct map (page_offset_base, 0xff11... with 5 levels) also maps want_pa
        dmap = [
            r
            for r in ranges
            if r.pa <= want_pa < r.pa + r.size and 0xFF11000000000000 <= r.va < 0xFF91000000000000
        ]
        assert dmap, "no direct-map range maps init_uts_ns's physical page"
        alias = dmap[0].va + (want_pa - dmap[0].pa)
        assert alias < 0xFFFF800000000000  # beyond what 4-level paging can address
        assert dump.translate(alias).pa == want_pa
        assert dump.read(alias, UTS_FIELD * 5) == image_bytes
    assert image_bytes[2 * UTS_FIELD :].split(b"\0")[0].decode() == s.manifest["kernel_release"]
    assert any(r.va >= START_KERNEL_MAP for r in ranges)
    assert all(a.va + a.size <= b.va for a, b in zip(ranges, ranges[1:]))


# -- the kernel model (ps, dmesg) on both --------------------------------------


def check_ps(tasks: list[dict], manifest: dict) -> None:
    by_pid = {t["pid"]: t for t in tasks}
    for p in manifest["processes"]:
        assert p["pid"] in by_pid, p
        assert by_pid[p["pid"]]["comm"] == p["comm"], (p, by_pid[p["pid"]])
    for th in manifest["threads"]:
        assert th["tid"] in by_pid, th
        assert by_pid[th["tid"]]["comm"] == th["comm"]
        assert by_pid[th["tid"]]["tgid"] == th["tgid"]


@pytest.mark.parametrize("sid,fmt", dump_files(I386) + dump_files(NOPAE) + dump_files(LA57))
def test_ps_and_dmesg(sid, fmt):
    """i386 kernels have no BTF: their types come from the -dbg vmlinux's DWARF."""
    s = sample(sid)
    args = [str(s.file(fmt))] + ([str(i386_vmlinux(sid))] if sid != LA57 else [])
    tasks = json.loads(kvmcore_cli("ps", "--json", *args))["tasks"]
    check_ps(tasks, s.manifest)
    log = kvmcore_cli("dmesg", *args)
    assert s.manifest["marker"] in log
    assert "Kernel panic - not syncing: sysrq triggered crash" in log


def test_i386_dmesg_without_vmlinux():
    """The printk ring buffer is found through VMCOREINFO alone (no BTF on i386)."""
    for sid in (I386, NOPAE):
        s = sample(sid)
        log = kvmcore_cli("dmesg", str(s.file("elf")))
        assert s.manifest["marker"] in log
        assert f"Linux version {s.manifest['kernel_release']}" in log


@pytest.mark.parametrize("sid", [I386, NOPAE])
def test_i386_sleeping_thread_unwinds_through_switch_frame(sid):
    """A worker thread sleeps in pause(): its switch frame leads through
    __schedule back to the int 0x80 entry."""
    s = sample(sid)
    th = s.manifest["threads"][0]
    out = kvmcore_cli("bt", str(s.file("elf")), str(i386_vmlinux(sid)), "--pid", str(th["tid"]))
    names = re.findall(r"\]\s+(\w+)\+", out)
    assert names[:2] == ["__schedule", "schedule"], out
    assert "__ia32_sys_pause" in names and "entry_INT80_32" in names, out


# -- gdb accepts the i386 target description -----------------------------------


def test_gdb_accepts_i386_tdesc():
    s = sample(I386)
    gdb = shutil.which("gdb") or shutil.which("gdb-multiarch")
    if gdb is None:
        pytest.fail("gdb is missing: apt-get install gdb")
    dump = s.file("elf")
    serve = f"{sys.executable} -m kvmcore.gdbserver --stdio {dump}"
    p = subprocess.run(
        [
            gdb,
            "-nx",
            "-batch",
            "-ex",
            f"target remote | {serve}",
            "-ex",
            "show architecture",
            "-ex",
            "info registers eip eflags cs ds",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = p.stdout + p.stderr
    assert 'currently "i386"' in out, out
    eip = int(re.search(r"^eip\s+(0x[0-9a-f]+)", out, re.M)[1], 16)
    # the vCPU stopped in kernel text: check against the -dbg System.map, slid
    # by the runtime _stext VMCOREINFO reports
    smap = s.system_map()
    if smap is None:
        pytest.fail(f"the i386 -dbg System.map is missing: run `{BUILD} --with-dbg`")
    syms = {}
    for line in smap.read_text().splitlines():
        addr, _, name = line.split()
        syms[name] = int(addr, 16)
    slide = int(readelf_vmcoreinfo(dump)["SYMBOL(_stext)"], 16) - syms["_stext"]
    assert syms["_stext"] + slide <= eip < syms["_etext"] + slide, hex(eip)
    assert re.search(r"^cs\s+0x60\s", out, re.M), out  # __KERNEL_CS on i386
    assert re.search(r"^ds\s+0x7b\s", out, re.M), out  # __USER_DS
