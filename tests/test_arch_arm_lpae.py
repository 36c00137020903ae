"""32-bit Arm with LPAE on the real sample `armhf-lpae`: Debian trixie's 6.12
armmp-lpae kernel (the long-descriptor, three-level page tables) panicked
under QEMU's virt machine (cortex-a15), read with its -dbg vmlinux (no BTF).
The armmp sample (short descriptors) is tests/test_arch_arm.py.

Ground truth: the manifest (what the guest printed), the -dbg package's
System.map, the fixed layout of QEMU's virt machine (RAM at 0x40000000) and
of Linux arm's 3G/1G split (PAGE_OFFSET 0xc0000000), and the ARMv7
long-descriptor format (ARM ARM B3.6) decoded here from the dump's physical
memory, apart from kvmcore's walker: 4 first-level entries of 1 GB, 512
second-level of 2 MB (block or table), 512 third-level 4K pages, the output
address in bits 39:12, type bits 1:0 (3 table/page, 1 block)."""

from __future__ import annotations

import random
import struct

import pytest
from test_arch_arm import check_panic_bt

import kvmcore

SID = "armhf-lpae"
QEMU_VIRT_RAM = 0x40000000
PAGE_OFFSET = 0xC0000000
PAGE = 4096
ADDR = 0x000000FFFFFFF000


@pytest.fixture(scope="module")
def opened(samples):
    s = samples.get_built(SID)
    with kvmcore.open(str(s.file("elf")), str(samples.vmlinux(SID))) as dump:
        yield s, dump


def system_map_symbol(s, name: str) -> int:
    for line in s.system_map().read_text().splitlines():
        addr, _, sym = line.split()
        if sym == name:
            return int(addr, 16)
    raise AssertionError(f"{name} not in System.map")


def lpae_walk(dump, root_pa: int, va: int) -> tuple[int, int]:
    """(pa, page size) of va by the long-descriptor tables at root_pa."""

    def entry(table: int, index: int) -> int:
        return struct.unpack("<Q", dump.mem.read_phys(table + 8 * index, 8))[0]

    e1 = entry(root_pa, va >> 30)
    assert e1 & 3 == 3, f"{va:#x}: first-level entry {e1:#x} is no table"
    e2 = entry(e1 & ADDR, (va >> 21) & 511)
    if e2 & 3 == 1:  # a 2 MB block
        return (e2 & ADDR & ~0x1FFFFF) | (va & 0x1FFFFF), 2 << 20
    assert e2 & 3 == 3, f"{va:#x}: second-level entry {e2:#x}"
    e3 = entry(e2 & ADDR, (va >> 12) & 511)
    assert e3 & 3 == 3, f"{va:#x}: third-level entry {e3:#x}"
    return (e3 & ADDR) | (va & 0xFFF), PAGE


def test_probe_finds_lpae(opened):
    s, dump = opened
    assert dump.arch.name == "arm" and dump.os == "linux"
    assert s.manifest["kernel_release"].endswith("-armmp-lpae")
    desc = dump.translator.describe()
    assert desc["paging"] == "LPAE", desc
    assert desc["page_offset"] == hex(PAGE_OFFSET) and desc["phys_offset"] == hex(QEMU_VIRT_RAM)
    pgd = system_map_symbol(s, "swapper_pg_dir")
    assert desc["swapper_pg_dir_pa"] == hex(pgd - PAGE_OFFSET + QEMU_VIRT_RAM)


def test_linear_map_pages_through_lpae_tables(opened):
    """Random lowmem pages: the walk puts each at PAGE_OFFSET - PHYS_OFFSET,
    as the tables decoded here do (2 MB blocks), with the same bytes."""
    s, dump = opened
    root = system_map_symbol(s, "swapper_pg_dir") - PAGE_OFFSET + QEMU_VIRT_RAM
    rng = random.Random(13)
    ranges = [r for r in dump.mem.ranges() if r.start >= QEMU_VIRT_RAM]
    checked = 0
    for _ in range(300):
        r = rng.choice(ranges)
        pa = rng.randrange(r.start, r.end) & ~(PAGE - 1)
        va = PAGE_OFFSET + pa - QEMU_VIRT_RAM
        if va >= 0xF0000000:
            continue  # above lowmem's end (vmalloc, fixmap)
        t = dump.translate(va)
        assert (t.pa, t.page_size) == lpae_walk(dump, root, va) and t.pa == pa, hex(va)
        try:
            phys = dump.mem.read_phys(pa, PAGE)
        except kvmcore.errors.KvmcoreError:
            continue
        assert dump.read(va, PAGE) == phys, hex(va)
        checked += 1
    assert checked >= 200


def test_vmalloc_stacks_through_third_level(opened):
    """Tasks' vmalloc'ed stacks (VMAP_STACK, above lowmem's end: PAGE_OFFSET
    plus the guest's RAM): 4K pages of third-level tables."""
    s, dump = opened
    lowmem_end = PAGE_OFFSET + (s.manifest["qemu"]["memory_mb"] << 20)
    root = system_map_symbol(s, "swapper_pg_dir") - PAGE_OFFSET + QEMU_VIRT_RAM
    off = dump.types.offsetof("struct task_struct", "stack")
    seen = 0
    for task in dump.kernel.tasks():
        stack = dump.read_ptr(task.address + off)
        if stack < lowmem_end:
            continue
        for va in (stack, stack + PAGE):
            t = dump.translate(va)
            assert (t.pa, t.page_size) == lpae_walk(dump, root, va), hex(va)
            assert t.page_size == PAGE
        seen += 1
    assert seen >= 10
    assert sum(1 for r in dump.walk_pages() if r.page_size == PAGE and r.va >= lowmem_end)


def test_ps_dmesg_panic_and_mods(opened):
    s, dump = opened
    m = s.manifest
    tasks = {t.pid: t for t in dump.kernel.tasks()}
    for p in m["processes"]:
        assert (tasks[p["pid"]].ppid, tasks[p["pid"]].comm) == (p["ppid"], p["comm"]), p
    text = "\n".join(r.text for r in dump.kernel.log())
    assert m["marker"] in text and "Kernel panic - not syncing: sysrq triggered crash" in text
    panic = dump.kernel.panic
    assert (panic.task.pid, panic.cpu) == (m["panic"]["pid"], m["panic"]["cpu"])
    check_panic_bt(dump.backtrace(panic.task))
    mods = {mod.name: mod for mod in dump.kernel.modules()}
    for want in m["modules"]:
        assert (mods[want["name"]].base, mods[want["name"]].size) == (
            want["address"],
            want["size"],
        )
