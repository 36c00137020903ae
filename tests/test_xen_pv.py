"""Xen PV guest dumps (issue 14): the real `xl dump-core` files of the xen-pv
sample (sample_dumps: a Debian PV domU under Debian's Xen 4.17 in QEMU TCG,
running the samples' guest init; "xen-core" after its panic, "xen-core-live"
of the running guest, paused).

Ground truth: the sample's manifest (what the guest printed on its console,
and the Xen build facts), the file decoded here independently (ctypes and
struct from Xen's headers: tests/xen_dumpcore_writer.py's mirrors, and a
4-level walk over machine frames written below), crash 8.0.2 and gdb. Bad
input is a patched sparse copy of the real file."""

from __future__ import annotations

import ctypes
import hashlib
import json
import re
import shutil
import struct
import subprocess
import sys
from functools import cached_property
from pathlib import Path

import pytest
from manifest_checks import (
    assert_idle_task_per_cpu,
    assert_marker_then_panic,
    assert_tasks_match_manifest,
)
from test_gdbserver import run_gdb
from xen_dumpcore_writer import PAGE, VcpuGuestContext, patch, sections, sparse_copy

import kvmcore
from kvmcore.errors import NotInDumpError, NotMappedError
from kvmcore.report import build_report

SID = "xen-pv"
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]
ADDR = 0x000FFFFFFFFFF000
INVALID = (1 << 64) - 1


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KVMCORE, *args], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )


class RawXenCore:
    """A PV dump-core file read without kvmcore: sections, vCPU contexts,
    .xen_p2m both ways, and the guest's page tables walked over machine
    frames (x86_64 4-level: PS leaves at the PDPT and PD levels)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sections = {name: sh for name, (_, sh) in sections(path).items()}
        self.data = path.read_bytes()
        pages, p2m = self.sections[".xen_pages"], self.sections[".xen_p2m"]
        self.pages_offset = pages.sh_offset
        words = struct.unpack_from(f"<{p2m.sh_size // 8}Q", self.data, p2m.sh_offset)
        self.index: dict[int, int] = {}
        self.mfn: dict[int, int] = {}
        for i in range(len(words) // 2):
            pfn, mfn = words[2 * i], words[2 * i + 1]
            if pfn != INVALID and mfn != INVALID:
                self.index[pfn], self.mfn[pfn] = i, mfn
        self.pfn_of = {mfn: pfn for pfn, mfn in self.mfn.items()}
        assert len(self.pfn_of) == len(self.mfn), "a real p2m maps each MFN once"

    @cached_property
    def vcpus(self) -> list[VcpuGuestContext]:
        sec = self.sections[".xen_prstatus"]
        size = ctypes.sizeof(VcpuGuestContext)
        assert sec.sh_entsize == size
        return [
            VcpuGuestContext.from_buffer_copy(self.data, sec.sh_offset + i * size)
            for i in range(sec.sh_size // size)
        ]

    def page(self, pfn: int) -> bytes:
        at = self.pages_offset + self.index[pfn] * PAGE
        return self.data[at : at + PAGE]

    def entry_offset(self, table_mfn: int, index: int) -> int:
        return self.pages_offset + self.index[self.pfn_of[table_mfn]] * PAGE + index * 8

    def walk(self, va: int, root_mfn: int | None = None) -> list[tuple[int, int]]:
        """[(file offset of the entry, the entry)] from the top table down to
        the leaf, for `va` from vCPU 0's ctrlreg[3]."""
        mfn = self.vcpus[0].ctrlreg[3] >> 12 if root_mfn is None else root_mfn
        path = []
        for level, shift in enumerate((39, 30, 21, 12)):
            at = self.entry_offset(mfn, (va >> shift) & 511)
            entry = struct.unpack_from("<Q", self.data, at)[0]
            path.append((at, entry))
            if not entry & 1 or (level in (1, 2) and entry & 0x80):
                break
            mfn = (entry & ADDR) >> 12
        return path

    def leaf_mfn(self, va: int) -> int | None:
        path = self.walk(va)
        entry = path[-1][1]
        if not entry & 1:
            return None
        shift = (39, 30, 21, 12)[len(path) - 1]
        return ((entry & ADDR) >> 12) + ((va >> 12) & ((1 << (shift - 12)) - 1))

    def read_va(self, va: int, length: int) -> bytes:
        mfn = self.leaf_mfn(va)
        assert mfn is not None and va % PAGE + length <= PAGE
        return self.page(self.pfn_of[mfn])[va % PAGE : va % PAGE + length]


@pytest.fixture(scope="module")
def sample(samples):
    return samples.get_built(SID)


@pytest.fixture(scope="module")
def path(sample) -> Path:
    return sample.file("xen-core")


@pytest.fixture(scope="module")
def raw(path) -> RawXenCore:
    return RawXenCore(path)


@pytest.fixture(scope="module", params=["kallsyms", "vmlinux"])
def dump(request, samples, path):
    vmlinux = samples.vmlinux(SID) if request.param == "vmlinux" else None
    with kvmcore.open(str(path), vmlinux) as d:
        assert d.symbols.source == request.param
        yield d


@pytest.fixture(scope="module")
def plain(path):
    with kvmcore.open(str(path)) as d:
        yield d


def page_offset_base(dump, raw: RawXenCore) -> int:
    """The direct map's start, read by the independent walk at the address
    the kernel's symbols give."""
    return int.from_bytes(raw.read_va(dump.symbols.lookup("page_offset_base"), 8), "little")


# ------------------------------------------------------------------ the format


def test_format_and_xen_facts(plain, sample, raw):
    m = sample.manifest
    mem = plain.mem
    assert (plain.format_name, mem.facts.kind, plain.arch.name) == ("xen", "xen-pv", m["arch"])
    xen = mem.metadata["xen"]
    assert xen["guest"] == "PV" and xen["version"] == m["xen"]["version"]
    assert xen["vcpus"] == m["xen"]["guest"]["vcpus"] == len(plain.cpu_states)
    assert xen["pages"] * PAGE <= m["xen"]["guest"]["memory_mb"] << 20
    assert mem.problems == []
    assert not [n for n in mem.notes if n.name == "VMCOREINFO"]
    info = plain.vmcoreinfo
    assert mem.metadata["vmcoreinfo_source"].startswith("kernel's note in memory")
    assert (info.osrelease, info.build_id) == (m["kernel_release"], m["build_id"])
    assert sum(r.size for r in mem.ranges()) == len(raw.index) * PAGE


def test_registers_are_the_vcpu_contexts(plain, raw):
    for state, ctx in zip(plain.cpu_states, raw.vcpus, strict=True):
        u = ctx.user_regs
        for name in ("rip", "rsp", "rbp", "rax", "rbx", "r15"):
            assert state.regs[name] == getattr(u, name), name
        assert state.regs["eflags"] == u.rflags
        assert [state.regs[f"cr{i}"] for i in range(8)] == list(ctx.ctrlreg)
        assert [state.regs[f"dr{i}"] for i in range(8)] == list(ctx.debugreg)
        assert state.regs["fs_base"] == ctx.fs_base
        kernel = u.rip >= 1 << 63
        assert state.regs["gs_base"] == (ctx.gs_base_kernel if kernel else ctx.gs_base_user)
        # a PV kernel runs in ring 3; its own frames see CS.RPL 0 (Xen's bounce frame)
        assert state.regs["cs"] == (u.cs & ~3 if kernel else u.cs)


# ------------------------------------------------------------------ PV translation


def test_walk_starts_at_vcpu0s_cr3(plain, raw):
    desc = plain.translator.describe()
    assert int(desc["root_mfn"], 16) == raw.vcpus[0].ctrlreg[3] >> 12
    assert int(desc["root_pfn"], 16) == raw.pfn_of[raw.vcpus[0].ctrlreg[3] >> 12]


def test_every_page_through_the_pv_walk_is_the_p2m_page(plain, raw):
    """Each pfn's page read through the direct map (the PV walk over machine
    frames) is the page .xen_p2m puts at that pfn, and the walk's leaf is
    the MFN .xen_p2m names for it."""
    pob = page_offset_base(plain, raw)
    assert pob % (1 << 30) == 0 and pob >= 0xFFFF888000000000
    for pfn in sorted(raw.index):
        va = pob + pfn * PAGE
        assert raw.leaf_mfn(va) == raw.mfn[pfn], f"pfn {pfn:#x}"
        assert plain.translate(va).pa == pfn * PAGE, f"pfn {pfn:#x}"
        assert plain.read(va, PAGE) == raw.page(pfn), f"pfn {pfn:#x}"


def test_kernel_image_and_stacks_agree_with_the_independent_walk(plain, raw):
    vas = [plain.symbols.lookup(n) for n in ("init_uts_ns", "_stext", "prb", "init_task")]
    vas += [t.address for t in plain.kernel.tasks()[:50]]
    for va in vas:
        mfn = raw.leaf_mfn(va)
        assert mfn is not None
        assert plain.translate(va).pa == raw.pfn_of[mfn] * PAGE + va % PAGE, hex(va)
        assert plain.read(va, 64) == raw.read_va(va, 64), hex(va)


def test_a_walk_of_every_mapping_stays_in_the_guest(plain, raw):
    ranges = list(plain.walk_pages())
    assert ranges and all(r.va >= 1 << 63 for r in ranges)  # the kernel half only
    pob = page_offset_base(plain, raw)
    direct = [r for r in ranges if pob <= r.va < pob + (1 << 40)]
    assert sum(r.size for r in direct) == len(raw.index) * PAGE
    assert all(r.pa // PAGE in raw.index for r in ranges[:: max(1, len(ranges) // 5000)])
    for va in range(0xFFFF800000000000, 0xFFFF880000000000, 1 << 39):  # Xen's own slots
        with pytest.raises(NotMappedError):
            plain.translate(va)


# ------------------------------------------------------------------ the kernel model


def test_ps_has_the_manifest_processes(dump, sample):
    m = sample.manifest
    tasks = dump.kernel.task_list
    assert_tasks_match_manifest(tasks, m)
    assert_idle_task_per_cpu(tasks, m["xen"]["guest"]["vcpus"])


def test_dmesg_has_the_marker_and_the_panic(dump, sample):
    m = sample.manifest
    assert_marker_then_panic([r.text for r in dump.kernel.log()], m)


def test_panic_task_vcpu_and_backtrace(dump, sample):
    m = sample.manifest["panic"]
    panic = dump.kernel.panic
    assert (panic.message, panic.cpu) == (m["message"], m["cpu"])
    assert (panic.task.pid, panic.task.comm, panic.task.cpu) == (m["pid"], m["comm"], m["cpu"])
    assert panic.task.on_cpu
    bt = dump.backtrace(panic.task)
    assert bt.frames[0].pc == dump.cpu_states[m["cpu"]].regs["rip"]  # the vCPU's own registers
    names = [f.function or "" for f in bt.frames]
    crash_at = next(i for i, n in enumerate(names) if n.startswith("sysrq_handle_crash+"))
    assert any(n.startswith("panic+") for n in names[:crash_at]), names
    assert any(n.startswith("__handle_sysrq") for n in names[crash_at + 1 :]), names


@pytest.mark.parametrize("with_vmlinux", [False, True])
def test_cli_commands(samples, path, sample, with_vmlinux):
    extra = [str(samples.vmlinux(SID))] if with_vmlinux else []
    m = sample.manifest
    report = cli("analyze", "--json", str(path), *extra)
    assert report.returncode == 0, report.stderr
    r = json.loads(report.stdout)
    assert r["headline"]["panic_message"] == m["panic"]["message"]
    assert (r["headline"]["task"]["pid"], r["headline"]["cpu"]) == (
        m["panic"]["pid"],
        m["panic"]["cpu"],
    )
    assert r["dump"]["format"] == "xen"
    assert not [p for p in r["problems"] if p.startswith("dump:")], r["problems"]
    for command in (["info"], ["ps"], ["dmesg"], ["mods"], ["bt"], ["bt", "--all"]):
        out = cli(*command, str(path), *extra)
        assert out.returncode == 0 and not out.stderr.strip(), (command, out.stderr)
    assert m["marker"] in cli("dmesg", str(path), *extra).stdout
    bt = cli("bt", str(path), *extra).stdout
    assert f"PID: {m['panic']['pid']} " in bt and "sysrq_handle_crash+" in bt


def test_live_dump_has_the_running_guest(samples, sample):
    live = sample.manifest["xen"]["live_dump"]
    with kvmcore.open(str(sample.file(live["file"]))) as d:
        pids = {t.pid: t.comm for t in d.kernel.tasks()}
        for p in sample.manifest["processes"]:
            if p["comm"] in live["absent_processes"]:
                assert p["pid"] not in pids or pids[p["pid"]] != p["comm"]
            else:
                assert pids.get(p["pid"]) == p["comm"], p
        assert sample.manifest["marker"] in [r.text for r in d.kernel.log()]
        assert d.kernel.panic.message is None


# ------------------------------------------------------------------ crash 8.0.2


def test_crash_agrees_on_the_log_and_panic_task(samples, path, plain, tmp_path):
    """crash 8.0.2 opens a PV dump-core with the vmlinux; its ps finds only
    the tasks on a CPU ("active task ... not found in PID hash": its reading
    of the pid hash fails on this dump), so what is compared is what it gets:
    those tasks (pid, comm, CPU, task address), the panicking task and the
    log."""
    exe = shutil.which("crash")
    if exe is None:
        pytest.fail("crash not found: apt-get install crash", pytrace=False)
    cmds = tmp_path / "cmds"
    cmds.write_text('ps\n!echo "==BT=="\nbt\n!echo "==LOG=="\nlog\nquit\n')
    p = subprocess.run(
        [exe, "-s", "-i", str(cmds), str(samples.vmlinux(SID)), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert "==LOG==" in p.stdout, p.stdout[-3000:] + p.stderr[-3000:]
    ps_text, rest = p.stdout.split("==BT==", 1)
    bt_text, log_text = rest.split("==LOG==", 1)
    rows = re.findall(r"^>?\s+(\d+)\s+-?\d+\s+(\d+)\s+([0-9a-f]+)\s+\S+\s.*\s(\S+)$", ps_text, re.M)
    assert rows, ps_text
    ours = {t.address: t for t in plain.kernel.tasks()}
    for pid, cpu, task, comm in rows:
        t = ours.get(int(task, 16))
        assert t is not None, (pid, comm, task)
        assert (t.pid, t.cpu, t.comm) == (int(pid), int(cpu), comm.strip("[]"))
    head = re.search(r'PID: (\d+)\s+TASK: ([0-9a-f]+)\s+CPU: (\d+)\s+COMMAND: "([^"]+)"', bt_text)
    panic = plain.kernel.panic
    assert head and (int(head[1]), int(head[2], 16), int(head[3]), head[4]) == (
        panic.task.pid,
        panic.task.address,
        panic.cpu,
        panic.task.comm,
    )
    theirs = [re.sub(r"^\[\s*[\d.]+\] ", "", line) for line in log_text.splitlines()]
    ours_log = [r.text for r in plain.kernel.log()]
    assert [line for line in theirs if line] == [t for t in ours_log if t]


# ------------------------------------------------------------------ gdb over serve


@pytest.fixture(scope="module", params=["served without vmlinux", "served with vmlinux"])
def gdb_out(request, samples, path) -> str:
    vmlinux = samples.vmlinux(SID)
    return run_gdb(
        "x86_64",
        vmlinux,
        path,
        [
            "info threads",
            "bt 24",
            "set var jiffies = 0",
            "break panic",
            "continue",
            "monitor ps",
            "echo ==PSEND==\\n",
        ],
        serve_vmlinux=vmlinux if request.param == "served with vmlinux" else None,
    )


def test_gdb_threads_are_the_guests_tasks(gdb_out, plain, sample):
    rows = re.findall(r"^[ *] +\d+ +Thread ", gdb_out, re.M)
    assert len(rows) == len(plain.kernel.tasks()), gdb_out[-3000:]
    for p in sample.manifest["processes"]:
        assert f'"{p["pid"]} {p["comm"]}"' in gdb_out, p
    current = re.search(r"^\* +\d+ +Thread (\d+) ", gdb_out, re.M)
    assert current and int(current[1]) == sample.manifest["panic"]["pid"]


def test_gdb_backtrace_of_the_panicking_vcpu(gdb_out):
    funcs = re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+)", gdb_out, re.M)
    assert "sysrq_handle_crash" in funcs, gdb_out[-3000:]
    at = funcs.index("sysrq_handle_crash")
    assert "panic" in funcs[:at] and funcs[at + 1] == "__handle_sysrq", funcs


def test_gdb_monitor_ps_and_refused_writes(gdb_out, plain, path, sample):
    from kvmcore.commands import COMMANDS

    want = COMMANDS["ps"].run(plain)
    got = gdb_out.split("Command aborted.\n", 1)[-1].split("==PSEND==")[0]
    assert want.strip() in got, got[:2000]
    assert "Cannot access memory at address" in gdb_out  # set var: the write refused
    assert "Cannot insert breakpoint 1" in gdb_out
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    assert digest == sample.manifest["files"]["xen-core"]["sha256"]


# ------------------------------------------------------------------ bad input


def test_pte_naming_a_frame_outside_the_guest(plain, raw, path, tmp_path):
    """init_uts_ns's leaf PTE patched to a machine frame .xen_p2m does not
    have: its translation is an error naming the frame, the walk leaves it
    out, and the page still reads by its pfn (in a PV guest the image's first
    page tables also serve the direct map, so that alias fails too)."""
    va = plain.symbols.lookup("init_uts_ns")
    at, entry = raw.walk(va)[-1]
    foreign = max(raw.pfn_of) + 0x1000
    copy = sparse_copy(path, tmp_path / "pte.core")
    patch(copy, at, struct.pack("<Q", (entry & ~ADDR) | foreign << 12))
    before = plain.translator
    list(plain.walk_pages())
    foreign_before = before.describe()["foreign_pages_in_last_walk"]
    pfn = raw.pfn_of[raw.leaf_mfn(va)]
    with kvmcore.open(str(copy)) as d:
        with pytest.raises(NotMappedError, match=f"machine frame {foreign:#x} is not one of"):
            d.translate(va)
        list(d.walk_pages())
        # counted once per mapping through the patched table (the image's
        # page tables may be reached from more than one upper entry)
        assert d.translator.describe()["foreign_pages_in_last_walk"] > foreign_before
        assert d.read_phys(pfn * PAGE, PAGE) == raw.page(pfn)
    out = cli("rd", str(copy), f"{va:#x}")
    assert out.returncode == 5 and len(out.stderr.strip().splitlines()) == 1, out
    assert "Traceback" not in out.stderr and f"{foreign:#x}" in out.stderr


def test_table_entry_naming_a_frame_outside_the_guest(plain, raw, path, tmp_path):
    va = plain.symbols.lookup("init_uts_ns")
    at, entry = raw.walk(va)[2]  # the PD entry: the page table below is not the guest's
    foreign = max(raw.pfn_of) + 0x2000
    copy = sparse_copy(path, tmp_path / "pmd.core")
    patch(copy, at, struct.pack("<Q", (entry & ~ADDR) | foreign << 12))
    with kvmcore.open(str(copy)) as d:
        try:
            d.translate(va)
        except NotMappedError as exc:
            assert "page table at" in exc.message and f"machine frame {foreign:#x}" in exc.message
        else:
            pytest.fail(f"{va:#x} translated through a page table that is not the guest's")


@pytest.mark.parametrize("level", ["table", "leaf"])
def test_p2m_giving_one_mfn_to_two_pfns(plain, raw, path, tmp_path, level):
    """.xen_p2m patched so that the MFN of init_uts_ns's page table (or of
    its page) also backs another pfn: the walk through it is refused, never
    guessed; both pfns still read their own pages."""
    va = plain.symbols.lookup("init_uts_ns")
    walk = raw.walk(va)
    mfn = (walk[-1][1] & ADDR) >> 12 if level == "leaf" else (walk[-2][1] & ADDR) >> 12
    owner = raw.pfn_of[mfn]
    other = next(p for p in sorted(raw.index) if p > owner + 16)
    copy = sparse_copy(path, tmp_path / "p2m.core")
    p2m = raw.sections[".xen_p2m"]
    patch(copy, p2m.sh_offset + raw.index[other] * 16 + 8, struct.pack("<Q", mfn))
    with kvmcore.open(str(copy)) as d:
        with pytest.raises(NotMappedError, match="backs several pfns"):
            d.translate(va)
        for pfn in (owner, other):
            assert d.read_phys(pfn * PAGE, PAGE) == raw.page(pfn)
        assert any("several pfns" in p for p in d.mem.problems), d.mem.problems
        with pytest.raises(NotInDumpError):
            d.mem.pfn_of_mfn(mfn)


def test_truncated_pv_dump_is_a_one_line_error(path, raw, tmp_path):
    pages = raw.sections[".xen_pages"]
    cut = sparse_copy(path, tmp_path / "cut.core", pages.sh_offset + pages.sh_size // 3)
    out = cli("ps", str(cut))
    assert out.returncode == 2 and "Traceback" not in out.stderr, out
    assert len(out.stderr.strip().splitlines()) == 1
    assert str(cut) in out.stderr and "truncated" in out.stderr


def test_vcpu_count_disagreeing_with_prstatus(sample, path, raw, tmp_path):
    """The header counts one vCPU: only vCPU 0's context is used, the dump
    says so, and the panicking vCPU's task (on vCPU 1 in this sample when
    the manifest says so) has its trace from its last context switch, noted."""
    note = raw.sections[".note.Xen"]
    notes = raw.data[note.sh_offset : note.sh_offset + note.sh_size]
    header = notes.index(struct.pack("<III", 4, 32, 0x2000001) + b"Xen\0")
    copy = sparse_copy(path, tmp_path / "vcpus.core")
    patch(copy, note.sh_offset + header + 16 + 8, struct.pack("<Q", 1))
    m = sample.manifest["panic"]
    with kvmcore.open(str(copy)) as d:
        assert "counts 1 vCPUs" in (d.mem.notes_problem or "")
        assert len(d.cpu_states) == 1
        report = build_report(d)
        assert any("vCPUs" in p for p in report["problems"])
        assert report["headline"]["task"]["pid"] == m["pid"]
        if m["cpu"] != 0:
            assert d.kernel.registers_note(d.kernel.panic.task)
