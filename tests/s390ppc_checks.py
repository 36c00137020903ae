"""Checks shared by tests/test_arch_s390x.py and tests/test_arch_ppc64le.py:
the real s390x and ppc64le samples (QEMU, no vmcoreinfo device, so the
VMCOREINFO is the kernel's own note in memory): Debian trixie's 6.12 kernels,
which have BTF and KALLSYMS_ALL, read both with no vmlinux (kallsyms and BTF
from the dump) and with the -dbg vmlinux. Ground truth: the manifests, the
-dbg package's System.map and vmlinux file bytes (pyelftools), the VMCOREINFO
text decoded here without kvmcore, drgn (with the vmlinux), gdb-multiarch."""

from __future__ import annotations

import mmap
import re
import shutil
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


def phys_addressed_copy(src, dst) -> None:
    """Copy a QEMU ELF dump for drgn. QEMU 7.2 writes s390x and ppc64 dumps as one
    PT_LOAD from physical 0, so every p_paddr is 0, which drgn 0.3.0 takes as a
    core without physical addresses: it maps the segment virtually only and then
    cannot read a page table ("could not find physical memory segment"). The
    copy's PT_LOAD starts one page later (p_paddr 0x1000): the first physical page
    (the absolute lowcore / the exception vectors) is left out. (Bookworm's 6.1
    ppc64le sample, 64K pages, still failed with "recursive address translation"
    on such a copy; the 6.12 samples read.)"""
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        order = ">" if f.read(16)[5] == 2 else "<"
        f.seek(32)
        (phoff,) = struct.unpack(order + "Q", f.read(8))
        f.seek(54)
        phentsize, phnum = struct.unpack(order + "HH", f.read(4))
        fmt = order + "IIQQQQQQ"
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            typ, flags, off, vaddr, paddr, filesz, memsz, align = struct.unpack(fmt, f.read(56))
            if typ == 1 and paddr == 0 and filesz > 0x1000:
                f.seek(phoff + i * phentsize)
                f.write(
                    struct.pack(
                        fmt,
                        typ,
                        flags,
                        off + 0x1000,
                        vaddr + 0x1000,
                        0x1000,
                        filesz - 0x1000,
                        memsz - 0x1000,
                        align,
                    )
                )


def check_drgn(path, vmlinux, arch: str, m, tmp_path) -> None:
    """drgn's task list, printk records (text, level, facility, continuation)
    and online CPUs (with the vmlinux) = kvmcore's, read with the vmlinux and
    with none."""
    drgn = drgn_module()
    from drgn.helpers.linux.cpumask import for_each_online_cpu
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.printk import get_printk_records

    copy = tmp_path / "phys.elf"
    phys_addressed_copy(path, copy)
    prog = drgn.Program(vmcoreinfo=vmcoreinfo_text(path, arch))
    prog.set_core_dump(str(copy))
    prog.load_debug_info([str(vmlinux)], default=False, main=False)
    theirs = {
        t.pid.value_(): (
            t.tgid.value_(),
            t.real_parent.tgid.value_(),
            t.comm.string_().decode(),
        )
        for t in for_each_task(prog)
    }
    # text, then the `u8 flags:5; u8 level:3` bit-fields drgn reads through the
    # vmlinux's DWARF (on big-endian s390x GCC puts flags in the high bits)
    their_log = [
        (r.text.decode(errors="replace"), r.level, r.facility, r.continuation)
        for r in get_printk_records(prog)
    ]
    # cpu_online_mask: unsigned long words in the kernel's byte order
    their_online = list(for_each_online_cpu(prog))
    copy.unlink()
    assert len({level for _, level, _, _ in their_log}) >= 3, their_log[:20]
    for vml in (str(vmlinux), None):
        with kvmcore.open(str(path), vmlinux=vml) as dump:
            ours = {t.pid: (t.tgid, t.ppid, t.comm) for t in dump.kernel.tasks() if t.pid}
            log = [(r.text, r.level, r.facility, r.continuation) for r in dump.kernel.log()]
            online = dump.kernel.online_cpus
        assert ours == theirs, vml
        assert online == their_online and online, (vml, online, their_online)
        assert [x[0] for x in log] == [x[0] for x in their_log], vml
        assert log == their_log, (vml, [(a, b) for a, b in zip(log, their_log) if a != b][:5])
        assert m["marker"] in [x[0] for x in log]


def system_map(path) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in path.read_text().splitlines():
        addr, _, name = line.split()
        out.setdefault(name, int(addr, 16))
    return out


def vmcoreinfo_lines(path, arch: str) -> dict[str, str]:
    text = vmcoreinfo_text(path, arch).decode(errors="replace")
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


#: symbols every check looks up: text, data, bss, the page tables
IMAGE_SYMBOLS = (
    "_stext",
    "panic",
    "sysrq_handle_crash",
    "__schedule",
    "linux_banner",
    "init_task",
    "swapper_pg_dir",
)


def check_symbols(dump, path, arch: str, smap_path) -> None:
    """The dump's symbols (kallsyms, or the vmlinux's relocated) = System.map's
    moved by the kernel's slide, which is VMCOREINFO's SYMBOL(_stext) less
    System.map's _stext (s390x 6.12: the image runs at a fixed KERNELOFFSET even
    with KASLR off; ppc64le: no slide)."""
    smap = system_map(smap_path)
    info = vmcoreinfo_lines(path, arch)
    slide = int(info["SYMBOL(_stext)"], 16) - smap["_stext"]
    if arch == "s390x":
        assert slide == int(info["KERNELOFFSET"], 16)
    else:
        assert slide == 0
    for name in IMAGE_SYMBOLS:
        assert dump.symbols.get(name) == smap[name] + slide, name
    assert int(info["SYMBOL(swapper_pg_dir)"], 16) == smap["swapper_pg_dir"] + slide


def check_image_bytes(dump, vmlinux, m) -> None:
    """linux_banner read through the kernel's page tables = the vmlinux file's
    bytes at its link address (the image mapping, KERNELOFFSET/KERNELOFFPHYS on
    s390x, PAGE_OFFSET on ppc64le)."""
    from elftools.elf.elffile import ELFFile

    addr = dump.symbols.get("linux_banner")
    got = dump.read(addr, 64)
    slide = dump.symbols.get("_stext") - elf_symbol_value(vmlinux, "_stext")
    link = addr - slide
    with open(vmlinux, "rb") as f:
        for sec in ELFFile(f).iter_sections():
            lo = sec["sh_addr"]
            if sec["sh_type"] == "SHT_PROGBITS" and lo <= link < lo + sec["sh_size"]:
                f.seek(sec["sh_offset"] + link - lo)
                want = f.read(64)
                break
        else:
            pytest.fail("linux_banner is in no PROGBITS section of the vmlinux")
    assert got == want
    assert got.startswith(b"Linux version " + m["kernel_release"].encode())


def elf_symbol_value(vmlinux, name: str) -> int:
    """A symbol's link address from the vmlinux's ELF symbol table (pyelftools)."""
    from elftools.elf.elffile import ELFFile

    with open(vmlinux, "rb") as f:
        sym = ELFFile(f).get_section_by_name(".symtab").get_symbol_by_name(name)
        assert sym, name
        return int(sym[0]["st_value"])


def check_s390x_image_translation(dump, path) -> None:
    """Kernel-image addresses translate as crash's s390x_vr_VTOP computes them from
    VMCOREINFO (va - KERNELOFFSET + KERNELOFFPHYS, for va >= KERNELOFFSET), identity-
    map addresses as va - IDENTITYBASE, and [SAMODE31, EAMODE31) (the amode31
    section, mapped 1:1) as itself."""
    info = vmcoreinfo_lines(path, "s390x")
    kvbase, offphys = int(info["KERNELOFFSET"], 16), int(info["KERNELOFFPHYS"], 16)
    ident = int(info["IDENTITYBASE"], 16)
    assert kvbase, "a 6.12 kernel image always has its own mapping"
    for name in IMAGE_SYMBOLS:
        va = dump.symbols.get(name)
        assert va >= kvbase
        assert dump.translate(va).pa == va - kvbase + offphys, name
    amode31 = int(info["SAMODE31"], 16)
    assert dump.translate(amode31).pa == amode31
    for pa in (0x10000, 0x1000000, 0x8000000):
        assert dump.translate(ident + pa).pa == pa


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


def dump_or_fail(samples, sid: str, fmt: str, with_vmlinux: bool = True):
    s = samples.get_built(sid)
    return s, samples.vmlinux(sid) if with_vmlinux else None, s.file(fmt)
