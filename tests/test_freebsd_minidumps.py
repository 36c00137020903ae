"""FreeBSD minidumps of i386 (PAE and not), arm, riscv and powerpc64 (HPT, big-
and little-endian).

Every dump here is SYNTHETIC (tests/freebsd_fixtures.py, write_mini_minidump):
no real FreeBSD dump can be made on this machine, so the fixture writes each
flavour from its documented layout (sys/<arch>/include/minidump.h, the
minidump_machdep writers, the entry formats of libkvm's kvm_<arch>.h and the
Power ISA's hashed page table). Expected values are the fixture's model,
never values read back by kvmcore.
"""

from __future__ import annotations

import os

import freebsd_fixtures as F
import pytest

import kvmcore
from kvmcore.errors import KvmcoreError, NotMappedError, TruncatedDumpError

pytestmark = pytest.mark.fast  # generated fixtures only: the fast tier

FLAVOURS = [
    ("i386", 1),
    ("i386", 2),
    ("i386-pae", 1),
    ("i386-pae", 2),
    ("arm", 1),
    ("arm", 2),
    ("riscv", 1),
    ("riscv", 2),
    ("powerpc64", 1),
    ("powerpc64", 2),
    ("powerpc64le", 2),
]
#: a little-endian powerpc64 minidump's machine hint is ppc64le, an Arch that
#: comes with the Linux ppc64le package; until then it is opened with --arch
ARCH_OPTION = {"powerpc64le": "powerpc64"}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("freebsd-mini")


@pytest.fixture(scope="module", params=FLAVOURS, ids=lambda p: f"{p[0]}-v{p[1]}")
def minidump(request, workdir):
    flavour, version = request.param
    m = F.mini_machine(flavour)
    path = str(workdir / f"vmcore-{flavour}-v{version}.mini")
    facts = F.write_mini_minidump(m, path, version)
    return m, path, version, facts


def open_dump(m: F.MiniModel, path: str):
    return kvmcore.open(path, arch=ARCH_OPTION.get(m.flavour))


def assert_one_line(exc: KvmcoreError, path: str, words: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(path + ": ") and words in text, text


def test_probed(minidump):
    """Synthetic minidump from the documented layout (no real FreeBSD dump can be
    made here): the format, machine, version and sections are recognized."""
    m, path, version, facts = minidump
    with open_dump(m, path) as dump:
        mem = dump.mem
        assert mem.format_name == "freebsd-minidump"
        assert (mem.facts.os, mem.facts.kind, mem.facts.machine) == ("freebsd", "mini", m.machine)
        assert mem.metadata["minidump_version"] == version
        assert mem.metadata["kernbase"] == facts["kernbase"]
        assert mem.msgbuf() == facts["msgbuf"]
        if version >= 2:
            assert mem.dump_avail == m.mem.avail
        assert sorted(pa for r in mem.ranges() for pa in range(r.start, r.end, F.PAGE)) == sorted(
            facts["pages"]
        )
        expected_arch = "powerpc64" if m.flavour.startswith("powerpc64") else m.machine
        assert dump.arch.name == expected_arch
        if m.flavour == "powerpc64":
            assert mem.facts.byteorder == "big"


def test_probed_without_arch_option(workdir):
    """Synthetic minidumps from the documented layout: each big-endian or
    little-endian flavour with an Arch is claimed with no --arch."""
    for flavour in ("i386", "arm", "riscv", "powerpc64"):
        m = F.mini_machine(flavour)
        path = str(workdir / f"vmcore-{flavour}-probe.mini")
        F.write_mini_minidump(m, path, 2)
        with kvmcore.open(path) as dump:
            assert dump.arch.name == m.machine


def test_planted_pages_read(minidump):
    """Synthetic minidump from the documented layout: every planted kva page
    (and direct-map page, and powerpc64 image page) reads its pattern."""
    m, path, _, _ = minidump
    with open_dump(m, path) as dump:
        for va, pa in m.kva_pages.items():
            assert dump.read(va, F.PAGE) == F.pattern(pa), hex(va)
            assert dump.translate(va + 0x18).pa == pa + 0x18
        for pa in m.dmap_pages:
            base, _, phys = m.dmap
            assert dump.read(base + pa - phys, F.PAGE) == F.pattern(pa)
        for va, pa in m.image_pages.items():
            assert dump.read(va, 64) == F.pattern(pa)[(va & 0xFFF) : (va & 0xFFF) + 64]


def test_read_across_frames(minidump):
    """Synthetic minidump from the documented layout: a read across two
    virtually contiguous, physically non-contiguous frames."""
    m, path, _, _ = minidump
    kmem = m.kernbase + 0x400000
    pa0, pa1 = m.kva_pages[kmem], m.kva_pages[kmem + F.PAGE]
    assert pa1 != pa0 + F.PAGE
    with open_dump(m, path) as dump:
        assert dump.read(kmem + F.PAGE - 8, 16) == F.pattern(pa0)[-8:] + F.pattern(pa1)[:8]


def test_walk_pages(minidump):
    """Synthetic minidump from the documented layout: walk_pages reports every
    planted kva page at its pa, and no invalid entry."""
    m, path, _, _ = minidump
    with open_dump(m, path) as dump:
        walked = list(dump.walk_pages())
        assert [r.va for r in walked] == sorted(r.va for r in walked)

        def find(va):
            hit = [r for r in walked if r.va <= va < r.va + r.size]
            return hit[0].pa + (va - hit[0].va) if hit else None

        for va, pa in m.kva_pages.items():
            assert find(va) == pa, hex(va)
        for va in m.invalid_kva:
            assert find(va) is None, hex(va)
        for pa in m.dmap_pages:
            base, _, phys = m.dmap
            assert find(base + pa - phys) == pa


def test_invalid_entries(minidump):
    """Synthetic minidump from the documented layout: invalid kernel-map
    entries, and addresses past the map, raise NotMappedError in one line."""
    m, path, _, _ = minidump
    with open_dump(m, path) as dump:
        past = [m.kernbase + F.KVA_SPAN + F.PAGE]
        if m.flavour.startswith("powerpc64"):
            past.append(m.kernbase + 4 * F.PPC_SEG)  # past kernend: no segment
        for va in m.invalid_kva + past:
            with pytest.raises(NotMappedError) as info:
                dump.read(va, 8)
            assert_one_line(info.value, path, hex(va))


@pytest.mark.parametrize("flavour", ["i386", "i386-pae", "arm", "riscv", "powerpc64"])
def test_truncated(workdir, flavour):
    """Synthetic minidump from the documented layout, cut inside its header
    sections, and cut inside its pages: refused with one line."""
    m = F.mini_machine(flavour)
    path = str(workdir / f"vmcore-{flavour}-cut.mini")
    F.write_mini_minidump(m, path, 2)
    size = os.path.getsize(path)
    os.truncate(path, F.PAGE * 2 + 100)
    with pytest.raises(TruncatedDumpError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "truncated")
    F.write_mini_minidump(m, path, 2, truncate_pages=2)
    assert os.path.getsize(path) < size
    with pytest.raises(TruncatedDumpError) as info:
        kvmcore.open(path)
    assert_one_line(info.value, path, "truncated")
