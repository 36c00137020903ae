"""FreeBSD dumps: minidumps, full ELF dumps and their wrappers, the kernel model.

Every dump here is SYNTHETIC (tests/freebsd_fixtures.py): no real FreeBSD dump
can be made on this machine, so the fixture writes them byte for byte as
FreeBSD's minidump_machdep.c / kern_dump.c / kerneldump.h lay them out, over
page tables and kernel data it builds itself. The expected values are the
fixture's model (what it planted), never values read back by kvmcore.
"""

from __future__ import annotations

import os

import freebsd_fixtures as F
import pytest

import kvmcore
from kvmcore.errors import KvmcoreError, TruncatedDumpError, WalkError
from kvmcore.freebsd import FreeBSDKernel

pytestmark = pytest.mark.fast  # generated fixtures only: the fast tier

MINIDUMPS = [("amd64", 1), ("amd64", 2), ("amd64", 3), ("arm64", 1), ("arm64", 2)]
FULL = {
    "plain": {},
    "kdh": {"header": True},
    "gz": {"compression": "gzip"},
    "zst": {"compression": "zstd"},
    "kdh-zst": {"header": True, "compression": "zstd"},
}


def machine(arch: str, helpers: bool = True) -> F.Machine:
    m = F.amd64_machine() if arch == "amd64" else F.arm64_machine()
    F.build_kernel(m, helpers=helpers)
    return m


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("freebsd")


@pytest.fixture(scope="module", params=MINIDUMPS, ids=lambda p: f"{p[0]}-v{p[1]}")
def minidump(request, workdir):
    arch, version = request.param
    m = machine(arch)
    path = str(workdir / f"vmcore-{arch}-v{version}.mini")
    facts = F.write_minidump(m, path, version)
    return m, path, version, facts


@pytest.fixture(scope="module", params=sorted(FULL))
def full_dump(request, workdir):
    m = machine("amd64")
    path = str(workdir / f"vmcore.full.{request.param}")
    F.write_full_dump(m, path, **FULL[request.param])
    return m, path, request.param


def dmap_va(m: F.Machine, version: int, pa: int) -> int:
    base = F.AMD64[version][1] if m.arch == "amd64" else F.ARM64_DMAP_MIN
    return base + pa - m.dmap_phys


def assert_one_line(exc: KvmcoreError, path: str, words: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(path + ": ") and words in text, text


# -- minidumps ----------------------------------------------------------------------
def test_minidump_header_and_facts(minidump):
    """Synthetic minidump (no real FreeBSD dump can be made here): header
    fields and facts match what the fixture wrote."""
    m, path, version, facts = minidump
    with kvmcore.open(path) as dump:
        mem = dump.mem
        assert mem.format_name == "freebsd-minidump"
        assert (mem.facts.os, mem.facts.kind) == ("freebsd", "mini")
        assert mem.facts.machine == ("x86_64" if m.arch == "amd64" else "aarch64")
        assert mem.metadata["minidump_version"] == version
        assert mem.metadata["kernbase"] == facts["kernbase"]
        assert (mem.metadata["dmapbase"], mem.metadata["dmapend"]) == (
            facts["dmapbase"],
            facts["dmapend"],
        )
        assert mem.metadata["pages_dumped"] == len(facts["pages"])
        assert not mem.metadata["truncated"]
        assert mem.msgbuf() == m.expect["msgbuf_ring"]
        has_avail = version >= (3 if m.arch == "amd64" else 2)
        if has_avail:
            assert mem.dump_avail == m.mem.avail
        dumped = sorted(facts["pages"])
        covered = [pa for r in mem.ranges() for pa in range(r.start, r.end, F.PAGE)]
        assert covered == dumped


def test_minidump_reads_through_kva_and_dmap(minidump):
    """Synthetic minidump: planted patterns read back through kernel virtual
    addresses on 2 MB and 4K pages, and through the direct map."""
    m, path, version, _ = minidump
    with kvmcore.open(path) as dump:
        sizes = set()
        for va, (pa, size) in m.kva_pages.items():
            page = pa & ~(F.PAGE - 1)
            assert dump.read(va, F.PAGE) == F.pattern(page), hex(va)
            t = dump.translate(va + 0x10)
            assert t.pa == page + 0x10
            sizes.add(size)
        assert sizes == {F.PAGE, F.NBPDR}
        for pa in m.dmap_pages:
            assert dump.read(dmap_va(m, version, pa), F.PAGE) == F.pattern(pa)
        # a read across two non-contiguous 4K frames
        kmem = min(va for va, (_, size) in m.kva_pages.items() if size == F.PAGE)
        pa0, pa1 = m.kva_pages[kmem][0], m.kva_pages[kmem + F.PAGE][0]
        assert dump.read(kmem + F.PAGE - 8, 16) == F.pattern(pa0)[-8:] + F.pattern(pa1)[:8]


def test_minidump_walk_pages(minidump):
    """Synthetic minidump: walk_pages reports every planted kva page at its pa."""
    m, path, _, _ = minidump
    with kvmcore.open(path) as dump:
        walked = list(dump.walk_pages())
        for va, (pa, _) in m.kva_pages.items():
            hit = [r for r in walked if r.va <= va < r.va + r.size]
            assert hit and hit[0].pa + (va - hit[0].va) == pa & ~(F.PAGE - 1), hex(va)


def test_minidump_kernel_model(minidump):
    """Synthetic minidump: threads, PCB registers and msgbuf from helper variables."""
    m, path, _, _ = minidump
    with kvmcore.open(path) as dump:
        kernel = FreeBSDKernel(dump, symbols=m.symbols)
        check_threads(kernel, m)
        assert kernel.msgbuf_text() == m.msgbuf_text.decode()


# -- full dumps ---------------------------------------------------------------------
def test_full_dump_reads(full_dump):
    """Synthetic FreeBSD full dump (ELF, kern_dump.c layout; plain, behind a
    kerneldumpheader, gzip, zstd): page-table root from KPML4phys via symbols."""
    m, path, kind = full_dump
    with kvmcore.open(path, symbol_map=m.symbols) as dump:
        assert dump.os == "freebsd" and dump.mem.format_name == "elf"
        assert [(r.start, r.end) for r in dump.mem.ranges()] == m.mem.avail
        for va, (pa, _) in m.kva_pages.items():
            assert dump.read(va, F.PAGE) == F.pattern(pa & ~(F.PAGE - 1)), hex(va)
        assert dump.translate(min(m.kva_pages)).page_size == F.NBPDR
        wrappers = dump.mem.metadata.get("container")
        expected = {
            "plain": None,
            "kdh": ["kerneldumpheader"],
            "gz": ["gzip"],
            "zst": ["zstd"],
            "kdh-zst": ["kerneldumpheader", "zstd"],
        }[kind]
        assert wrappers == expected
        if "kdh" in kind:
            hdr = dump.mem.metadata["kerneldumpheader"]
            assert hdr["architecture"] == "amd64" and hdr["version"] == 4
            assert hdr["panicstring"] == "synthetic panic for kvmcore tests"


def test_full_dump_explicit_root(workdir):
    """Synthetic full dump: with no symbols, an explicit PML4 address works."""
    m = machine("amd64")
    path = str(workdir / "vmcore.root")
    F.write_full_dump(m, path)
    with kvmcore.open(path) as dump:
        dump.set_page_table_root(m.root)
        for va, (pa, _) in m.kva_pages.items():
            assert dump.read(va, 64) == F.pattern(pa & ~(F.PAGE - 1))[:64]


def test_full_dump_kernel_model(full_dump):
    """Synthetic full dump: the same threads and registers as the minidumps."""
    m, path, _ = full_dump
    with kvmcore.open(path, symbol_map=m.symbols) as dump:
        check_threads(FreeBSDKernel(dump, symbols=m.symbols), m)


# -- kernel model without helper variables: types ---------------------------------
@pytest.mark.parametrize("arch", ["amd64", "arm64"])
def test_kernel_model_from_types(arch, workdir):
    """Synthetic minidump of a kernel without kgdb's helper variables: layouts
    come from types (the model's struct layouts given through the types hook),
    giving the same threads and PCB registers; td_state and linker_files too."""
    m = machine(arch, helpers=False)
    path = str(workdir / f"vmcore-{arch}-notypes.mini")
    F.write_minidump(m, path, 3 if arch == "amd64" else 2)
    assert not m.helper_symbols & set(m.symbols)
    with kvmcore.open(path) as dump:
        kernel = FreeBSDKernel(dump, symbols=m.symbols, types=F.ModelTypes(arch))
        threads = check_threads(kernel, m)
        assert [t.td_state for t in threads] == [
            {1: "inhibited", 4: "running"}[e["state"]] for e in m.expect["threads"]
        ]
        # TDS_INHIBITED with no inhibitor bit is a sleep; TDS_RUNNING runs
        assert [t.state for t in threads] == [
            {1: "S", 4: "R"}[e["state"]] for e in m.expect["threads"]
        ]
        assert [t.ppid for t in threads] == [e["ppid"] for e in m.expect["threads"]]
        mods = kernel.kld_modules()
        assert [(k.id, k.name, k.path, k.size, k.refs, k.address) for k in mods] == [
            (e["id"], e["name"], e["path"], e["size"], e["refs"], e["address"])
            for e in m.expect["modules"]
        ]
        assert kernel.msgbuf_text() == m.msgbuf_text.decode()


def test_kernel_model_without_layouts_fails_cleanly(workdir):
    """Synthetic minidump with neither helper variables nor types: one clear error."""
    m = machine("amd64", helpers=False)
    path = str(workdir / "vmcore-nolayout.mini")
    F.write_minidump(m, path, 3)

    class NoTypes:
        def offsetof(self, t, member):
            from kvmcore.errors import TypeInfoError

            raise TypeInfoError(f"{t} is unknown")

    with kvmcore.open(path) as dump:
        with pytest.raises(KvmcoreError) as info:
            FreeBSDKernel(dump, symbols=m.symbols, types=NoTypes()).tasks()
        assert "\n" not in str(info.value) and "struct proc" in str(info.value)


def check_threads(kernel: FreeBSDKernel, m: F.Machine):
    threads = kernel.tasks()
    expect = m.expect["threads"]
    assert [(t.pid, t.tid, t.name, t.proc_comm, t.cpu, t.on_cpu, t.address) for t in threads] == [
        (e["pid"], e["tid"], e["name"], e["comm"], e["cpu"], e["cpu"] != -1, e["address"])
        for e in expect
    ]
    for t, e in zip(threads, expect):
        regs = t.registers()
        assert {k: regs[k] for k in e["regs"]} == e["regs"], t.tid
    return threads


# -- damaged dumps: one-line errors, no hang ------------------------------------------
def test_bitmap_claims_more_pages_than_file(workdir):
    """Synthetic minidump whose bitmap lists 3 pages the file does not hold."""
    m = machine("amd64")
    path = str(workdir / "vmcore-lying-bitmap.mini")
    F.write_minidump(m, path, 3, extra_claimed=3)
    with pytest.raises(TruncatedDumpError, match="truncated"):
        kvmcore.open(path)  # refused by default: one line naming the file
    with kvmcore.open(path, allow_truncated=True) as dump:
        assert dump.mem.metadata["truncated"]
        last = dump.mem.ranges()[-1]
        with pytest.raises(TruncatedDumpError) as info:
            dump.read_phys(last.end - F.PAGE, 8)
        assert_one_line(info.value, path, "truncated")
        # pages before the missing ones still read
        for pa in m.dmap_pages:
            assert dump.read_phys(pa, 16) == F.pattern(pa)[:16]


@pytest.mark.parametrize("cut", [100, 4096 * 3, 4096 * 600])
def test_truncated_minidump(workdir, cut):
    """Synthetic minidump cut short inside its header sections."""
    m = machine("amd64")
    path = str(workdir / f"vmcore-cut-{cut}.mini")
    F.write_minidump(m, path, 3)
    os.truncate(path, cut)
    with pytest.raises(TruncatedDumpError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "truncated")


def test_truncated_gzip(workdir):
    """Synthetic gzip-compressed full dump cut in half."""
    m = machine("amd64")
    path = str(workdir / "vmcore.cut.gz")
    F.write_full_dump(m, path, compression="gzip")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(KvmcoreError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "truncated")


def test_decompression_limit(workdir, monkeypatch):
    """Synthetic zstd full dump larger than the decompression limit."""
    m = machine("amd64")
    path = str(workdir / "vmcore.bomb.zst")
    F.write_full_dump(m, path, compression="zstd")
    monkeypatch.setenv("KVMCORE_MAX_DECOMPRESSED", str(1 << 20))
    with pytest.raises(KvmcoreError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "limit")


def test_page_table_cycle(workdir):
    """Synthetic full dump whose PML4 points back at itself."""
    m = machine("amd64")
    va = 0xFFFFFC8000000000
    F.add_pml4_cycle(m, va)
    path = str(workdir / "vmcore.cycle")
    F.write_full_dump(m, path)
    with kvmcore.open(path) as dump:
        dump.set_page_table_root(m.root)
        with pytest.raises(WalkError) as info:
            dump.read(va, 8)
        assert_one_line(info.value, path, "cycle")
        with pytest.raises(WalkError) as info:
            list(dump.walk_pages())
        assert_one_line(info.value, path, "cycle")


def test_bad_kerneldumpheader_parity(workdir):
    """Synthetic dump behind a kerneldumpheader with one flipped byte."""
    m = machine("amd64")
    path = str(workdir / "vmcore.badparity")
    F.write_full_dump(m, path, header=True)
    with open(path, "r+b") as f:
        f.seek(70)
        f.write(b"X")
    with pytest.raises(KvmcoreError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "parity")
