"""Checks shared by tests/test_arch_s390x.py and tests/test_arch_ppc64le.py:
the real s390x and ppc64le samples (QEMU, no vmcoreinfo device, so the
VMCOREINFO is the kernel's own note in memory), read with the -dbg vmlinux
(Debian's 6.1 s390x and ppc64el kernels have no BTF: CONFIG_DEBUG_INFO_BTF is
off for both). Ground truth: the manifests, drgn (given the VMCOREINFO text
decoded here without kvmcore), gdb-multiarch."""

from __future__ import annotations

import mmap
import re
import struct
import subprocess
import sys

import pytest
from elftools.elf.elffile import ELFFile
from oracles import drgn_module, gdb_binary

import kvmcore

PY = sys.executable


class ElfPhys:
    """Physical memory of a QEMU ELF dump, read with pyelftools (not kvmcore)."""

    def __init__(self, path) -> None:
        # kept open for the object's lifetime: the mmap and pyelftools read it lazily
        self.f = open(path, "rb")  # noqa: SIM115
        self.map = mmap.mmap(self.f.fileno(), 0, access=mmap.ACCESS_READ)
        self.loads = [
            (s["p_paddr"], s["p_filesz"], s["p_offset"])
            for s in ELFFile(self.f).iter_segments()
            if s["p_type"] == "PT_LOAD"
        ]

    def read(self, pa: int, n: int) -> bytes:
        for start, size, off in self.loads:
            if start <= pa and pa + n <= start + size:
                return self.map[off + pa - start : off + pa - start + n]
        raise KeyError(hex(pa))


def vmcoreinfo_text(path, arch: str) -> bytes:
    """The kernel's VMCOREINFO note text, found without kvmcore: s390x keeps its
    physical address at absolute lowcore 0xe0c; on ppc64le the note (a
    little-endian header: namesz 11, type 0) is searched for in the file."""
    mem = ElfPhys(path)
    if arch == "s390x":
        pa = struct.unpack(">Q", mem.read(0xE0C, 8))[0]
        namesz, descsz, ntype = struct.unpack(">III", mem.read(pa, 12))
        assert (namesz, ntype, mem.read(pa + 12, 11)) == (11, 0, b"VMCOREINFO\0")
        return mem.read(pa + 24, descsz)
    head = struct.pack("<I", 11)
    for m in re.finditer(re.escape(b"VMCOREINFO\0"), mem.map):
        hdr = mem.map[m.start() - 12 : m.start()]
        if hdr[:4] == head and hdr[8:12] == b"\0\0\0\0":
            descsz = struct.unpack("<I", hdr[4:8])[0]
            text = mem.map[m.start() + 12 : m.start() + 12 + descsz]
            if text.startswith(b"OSRELEASE="):
                return text
    raise AssertionError("no VMCOREINFO note in the dump's memory")


def check_ps(dump, m) -> None:
    tasks = {t.pid: t for t in dump.kernel.tasks() if t.pid}
    for p in m["processes"]:
        t = tasks.get(p["pid"])
        assert t is not None, f"process {p} missing"
        assert (t.comm, t.tgid) == (p["comm"], p["pid"])
        if p["pid"] != 1:
            assert t.ppid == p["ppid"], p
    for th in m["threads"]:
        t = tasks.get(th["tid"])
        assert t is not None and (t.tgid, t.comm) == (th["tgid"], th["comm"]), th


def check_dmesg_and_panic(dump, m) -> None:
    texts = [r.text for r in dump.kernel.log()]
    assert m["marker"] in texts
    assert any("sysrq triggered crash" in t for t in texts)
    assert "sysrq triggered crash" in dump.kernel.panic.message
    task = dump.kernel.panic_task()
    assert (task.pid, task.comm, task.cpu) == (m["panic"]["pid"], "crasher", m["panic"]["cpu"])
    names = dump.backtrace(task).functions()
    assert "sysrq_handle_crash" in names, names
    assert "panic" in names and names.index("panic") < names.index("sysrq_handle_crash")


def check_sleepers(dump, m) -> None:
    """Every sleeping manifest task's trace starts in the scheduler (its switch
    frame) and reaches its system call."""
    by_pid = {t.pid: t for t in dump.kernel.tasks()}
    for p in m["processes"] + [{"pid": t["tid"], "comm": t["comm"]} for t in m["threads"]]:
        if p["comm"] in ("busyloop_task", "crasher"):
            continue
        names = dump.backtrace(by_pid[p["pid"]]).functions()
        assert "__schedule" in names[:3], (p, names)
        assert len(names) >= 4 and all(names), (p, names)


def check_linear_map_pages(dump, step_pages: int = 97) -> None:
    """Sample pages across memory: the kernel's page tables map each page's
    linear-map address to that page, and the bytes read through them are the
    physical page's."""
    checked = 0
    for rng in dump.mem.ranges():
        for pa in range(rng.start, rng.end, 4096 * step_pages):
            va = dump.linear_map_address(pa)
            assert dump.translate(va).pa == pa, hex(pa)
            assert dump.read(va, 4096) == dump.mem.read_phys(pa, 4096), hex(pa)
            checked += 1
    assert checked > 100


def check_drgn(path, vmlinux, arch: str, m) -> None:
    drgn = drgn_module()
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.printk import get_printk_records

    prog = drgn.Program(vmcoreinfo=vmcoreinfo_text(path, arch))
    prog.set_core_dump(str(path))
    prog.load_debug_info([str(vmlinux)], default=False, main=False)
    try:
        theirs = {
            t.pid.value_(): (
                t.tgid.value_(),
                t.real_parent.tgid.value_(),
                t.comm.string_().decode(),
            )
            for t in for_each_task(prog)
        }
    except drgn.FaultError as exc:
        if arch != "ppc64le":
            raise
        # drgn 0.3.0 cannot translate this dump's kernel addresses (also when told
        # the platform is little-endian): there is nothing to compare with
        pytest.xfail(f"drgn cannot read the ppc64le QEMU dump: {exc}")
    with kvmcore.open(str(path), vmlinux=str(vmlinux)) as dump:
        ours = {t.pid: (t.tgid, t.ppid, t.comm) for t in dump.kernel.tasks() if t.pid}
        log = [r.text for r in dump.kernel.log()]
    assert ours == theirs
    assert log == [r.text.decode(errors="replace") for r in get_printk_records(prog)]
    assert m["marker"] in log


def check_gdb(path, vmlinux, arch: str, m) -> str:
    server = f"{PY} -m kvmcore.gdbserver --stdio {path} {vmlinux}"
    args = [
        gdb_binary(arch),
        "-nx",
        "-batch",
        "-ex",
        "set width 0",
        "-ex",
        "set height 0",
        "-ex",
        "set remotetimeout 60",
        "-ex",
        f"target remote | {server}",
        "-ex",
        "info threads",
        "-ex",
        "bt 30",
        str(vmlinux),
    ]
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    with kvmcore.open(str(path), vmlinux=str(vmlinux)) as dump:
        ntasks = len(dump.kernel.tasks())
    assert len(re.findall(r"^[ *] +\d+ +Thread ", out, re.M)) == ntasks, out[-3000:]
    assert re.search(rf"^\* +\d+ +Thread {m['panic']['pid']} ", out, re.M), out[-3000:]
    assert re.search(r"^#\d+ .*sysrq_handle_crash", out, re.M), out[-3000:]
    return out


def dump_or_fail(samples, sid: str, fmt: str):
    s = samples.get_built(sid)
    return s, samples.vmlinux(sid), s.file(fmt)


def skip_unless(cond: bool, why: str) -> None:
    if not cond:
        pytest.skip(why)
