"""Xen HVM guest dumps (issue 14), from a fixture: no HVM guest can be dumped in
CI time, so tests/xen_dumpcore_writer.py rewraps the committed real dump
(sample_dumps/committed/x86_64-small: a Debian x86_64 kernel panicked under
QEMU by sysrq-c) into the dump-core layout `xl dump-core` writes for an HVM
guest: .xen_pfn, one vcpu_guest_context per vCPU filled as Xen fills an HVM
guest's (from the sample's NT_PRSTATUS and QEMU notes), no VMCOREINFO note.

Ground truth: the sample's manifest (what the guest printed), the committed
file decoded independently (test_committed_sample.RawKdump), the writer's
ctypes layout of Xen's structs. Bad input is a patched sparse copy of the
fixture."""

from __future__ import annotations

import json
import struct
import subprocess
import sys

import pytest
from conftest import ROOT
from manifest_checks import assert_tasks_match_manifest
from test_committed_sample import RawKdump
from xen_dumpcore_writer import (
    PAGE,
    VcpuGuestContext,
    hvm_from_dump,
    patch,
    qemu_cpu_state,
    sections,
    sparse_copy,
)

import kvmcore
from kvmcore.errors import NotInDumpError
from kvmcore.formats import open_physical
from kvmcore.linux.panic import CPU_LINE_RE
from kvmcore.report import build_report

pytestmark = pytest.mark.fast

SAMPLE_DIR = ROOT / "sample_dumps" / "committed" / "x86_64-small"
MANIFEST = json.loads((SAMPLE_DIR / "manifest.json").read_text())
SOURCE = SAMPLE_DIR / MANIFEST["files"]["mdf-d31-c"]["path"]
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


@pytest.fixture(scope="module")
def core(tmp_path_factory):
    return hvm_from_dump(SOURCE, tmp_path_factory.mktemp("xen") / "hvm.core")


@pytest.fixture(scope="module")
def raw() -> RawKdump:
    return RawKdump(SOURCE.read_bytes())


@pytest.fixture(scope="module")
def dump(core):
    with kvmcore.open(str(core)) as d:
        yield d


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*KVMCORE, *args], capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL
    )


# ------------------------------------------------------------------ the format


def test_probed_as_an_hvm_dump_core(dump, core):
    assert sizeof_context() == 5168  # the C layout of vcpu_guest_context on x86_64
    assert dump.format_name == "xen"
    assert dump.mem.facts.kind == "xen-hvm"
    assert dump.arch.name == MANIFEST["arch"]
    assert dump.mem.metadata["xen"]["guest"] == "HVM"
    assert not [n for n in dump.mem.notes if n.name == "VMCOREINFO"]
    assert {n.type for n in dump.mem.notes} == set(range(0x2000000, 0x2000004))
    assert dump.mem.problems == []
    names = set(sections(core))
    assert {".xen_pfn", ".xen_pages", ".xen_prstatus"} <= names and ".xen_p2m" not in names


def sizeof_context() -> int:
    import ctypes

    return ctypes.sizeof(VcpuGuestContext)


def test_vmcoreinfo_is_the_kernels_note_in_memory(dump, raw):
    assert dump.mem.metadata["vmcoreinfo_source"].startswith("kernel's note in memory")
    assert dump.vmcoreinfo.text == raw.vmcoreinfo_text


def test_every_page_reads_as_the_source_holds_it(dump, raw):
    mem = dump.mem
    for pfn, page in raw.pages.items():
        assert mem.read_phys(pfn * PAGE, PAGE) == page, f"pfn {pfn:#x}"
    missing = next(p for p in range(raw.max_mapnr) if p not in raw.pages)
    with pytest.raises(NotInDumpError):
        mem.read_phys(missing * PAGE, 8)
    covered = sum(r.size for r in mem.ranges()) // PAGE
    assert covered == len(raw.pages)


def test_registers_are_the_vcpu_contexts(dump):
    source = open_physical(str(SOURCE))
    prstatus = [n for n in source.notes if n.name == "CORE" and n.type == 1]
    qemu = [qemu_cpu_state(n.desc) for n in source.notes if n.name == "QEMU"]
    states = dump.cpu_states
    assert len(states) == len(prstatus) == MANIFEST["qemu"]["smp"]
    for state, note, q in zip(states, prstatus, qemu):
        regs = dict(
            zip(
                ("r15", "r14", "r13", "r12", "rbp", "rbx"),
                struct.unpack_from("<6Q", note.desc, 112),
            )
        )
        for name, value in regs.items():
            assert state.regs[name] == value, name
        assert (state.regs["rip"], state.regs["rsp"]) == (q["rip"], q["rsp"])
        assert (state.regs["cr3"], state.regs["cr4"], state.regs["cr0"]) == (
            q["cr3"],
            q["cr4"],
            q["cr0"],
        )
        assert state.regs["gs_base"] == q["gs_base"]  # in the kernel: GS.base is its own
    assert [s.cpu for s in states] == list(range(len(states)))
    info = json.loads(cli("info", "--json", str(dump.path)).stdout)
    assert info["cpus_dumped"] == MANIFEST["qemu"]["smp"]
    assert info["format"].startswith("Xen dump-core (HVM guest")


def test_translation_starts_at_a_vcpus_cr3(dump):
    desc = dump.translator.describe()
    assert desc["paging"] == "x86_64 HVM, 4-level"
    cr3 = {s.regs["cr3"] & 0x000FFFFFFFFFF000 for s in dump.cpu_states}
    assert int(desc["root"], 16) in cr3
    # the kernel's own top table maps the kernel the same way
    info = dump.vmcoreinfo
    init_top_pgt = info.symbol("init_top_pgt") - 0xFFFFFFFF80000000 + info.number("phys_base")
    dump.set_page_table_root(init_top_pgt)
    try:
        va = info.symbol("init_uts_ns")
        assert dump.translate(va).pa == va - 0xFFFFFFFF80000000 + info.number("phys_base")
    finally:
        dump.set_page_table_root(int(desc["root"], 16))


# ------------------------------------------------------------------ the kernel model


def test_ps_has_the_manifest_processes(dump):
    assert_tasks_match_manifest(dump.kernel.task_list, MANIFEST)


def test_dmesg_has_the_marker(dump):
    texts = [r.text for r in dump.kernel.log()]
    assert MANIFEST["marker"] in texts
    cpu_lines = [m for t in texts if (m := CPU_LINE_RE.search(t))]
    assert int(cpu_lines[-1].group(2)) == MANIFEST["panic"]["pid"]


def test_panic_task_vcpu_and_backtrace(dump):
    panic = dump.kernel.panic
    m = MANIFEST["panic"]
    assert panic.message == m["message"]
    assert panic.cpu == m["cpu"]
    assert (panic.task.pid, panic.task.comm, panic.task.cpu) == (m["pid"], m["comm"], m["cpu"])
    bt = dump.backtrace(panic.task)
    names = [f.function or "" for f in bt.frames]
    crash_at = next(i for i, n in enumerate(names) if n.startswith("sysrq_handle_crash+"))
    assert any(n.startswith("panic+") for n in names[:crash_at]), names
    # the trace starts at the vCPU's own registers, not a context switch
    assert bt.frames[0].pc == dump.cpu_states[m["cpu"]].regs["rip"]


def test_analyze_on_the_cli_and_mods(core, dump):
    out = cli("analyze", "--json", str(core))
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    head = report["headline"]
    assert head["panic_message"] == MANIFEST["panic"]["message"]
    assert (head["task"]["pid"], head["cpu"]) == (
        MANIFEST["panic"]["pid"],
        MANIFEST["panic"]["cpu"],
    )
    assert report["dump"]["format"] == "xen"
    assert not [p for p in report["problems"] if p.startswith("dump:")], report["problems"]
    assert dump.kernel.modules(), "the guest had modules loaded (pvpanic)"


# ------------------------------------------------------------------ bad input


def test_truncated_inside_xen_pages_is_a_one_line_error(core, tmp_path):
    _, pages = sections(core)[".xen_pages"]
    cut = sparse_copy(core, tmp_path / "cut.core", pages.sh_offset + pages.sh_size // 2)
    out = cli("info", str(cut))
    assert out.returncode == 2, out
    assert len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert str(cut) in out.stderr and "truncated" in out.stderr


def test_xen_pages_shorter_than_the_header_says_is_partial(core, tmp_path, raw):
    """.xen_pages' section header shrunk by 100 pages: the pages it no longer
    holds read as missing, every other page as before, and the dump says so."""
    copy = sparse_copy(core, tmp_path / "short.core")
    at, pages = sections(core)[".xen_pages"]
    patch(copy, at + 32, struct.pack("<Q", pages.sh_size - 100 * PAGE))  # sh_size
    kept = pages.sh_size // PAGE - 100
    _, table = sections(core)[".xen_pfn"]
    with open(core, "rb") as f:
        f.seek(table.sh_offset)
        pfns = struct.unpack(f"<{table.sh_size // 8}Q", f.read(table.sh_size))
    with kvmcore.open(str(copy)) as d:
        assert any("missing" in p for p in d.mem.problems), d.mem.problems
        for pfn in pfns[kept:]:
            with pytest.raises(NotInDumpError):
                d.read_phys(pfn * PAGE, 8)
        for pfn in pfns[: kept : max(1, kept // 500)]:
            assert d.read_phys(pfn * PAGE, PAGE) == raw.pages[pfn]
    info = json.loads(cli("info", "--json", str(copy)).stdout)
    assert any("missing" in p for p in info["problems"])


def test_a_pfn_named_twice_is_never_read(core, tmp_path, raw):
    copy = sparse_copy(core, tmp_path / "twice.core")
    _, table = sections(core)[".xen_pfn"]
    with open(core, "rb") as f:
        f.seek(table.sh_offset)
        first, second = struct.unpack("<QQ", f.read(16))
    patch(copy, table.sh_offset + 8, struct.pack("<Q", first))  # entry 1 says entry 0's pfn
    with kvmcore.open(str(copy)) as d:
        for pfn in (first, second):
            with pytest.raises(NotInDumpError):
                d.read_phys(pfn * PAGE, 8)
        assert any("twice" in p for p in d.mem.problems), d.mem.problems
        third = next(p for p in sorted(raw.pages) if p > second)
        assert d.read_phys(third * PAGE, PAGE) == raw.pages[third]


@pytest.mark.parametrize("header_vcpus", [1, 3])
def test_vcpu_count_disagreeing_with_prstatus_is_marked(core, tmp_path, header_vcpus):
    """The header's xch_nr_vcpus patched: only the contexts both agree on are
    used, the dump says so, and a CPU left without registers has its task's
    trace start at its last context switch, with a note."""
    copy = sparse_copy(core, tmp_path / "vcpus.core")
    _, note = sections(core)[".note.Xen"]
    with open(core, "rb") as f:
        f.seek(note.sh_offset)
        notes = f.read(note.sh_size)
    header = notes.index(struct.pack("<III", 4, 32, 0x2000001) + b"Xen\0")
    patch(copy, note.sh_offset + header + 16 + 8, struct.pack("<Q", header_vcpus))
    m = MANIFEST["panic"]
    with kvmcore.open(str(copy)) as d:
        problem = d.mem.notes_problem
        assert problem and f"counts {header_vcpus} vCPUs" in problem
        assert len(d.cpu_states) == min(header_vcpus, MANIFEST["qemu"]["smp"])
        report = build_report(d)
        assert any("vCPUs" in p for p in report["problems"])
        assert report["headline"]["task"]["pid"] == m["pid"]
        if m["cpu"] >= header_vcpus:
            assert d.kernel.registers_note(d.kernel.panic.task), "the missing registers are noted"
        else:
            names = [f["function"] or "" for f in report["backtrace"]["frames"]]
            assert any(n.startswith("sysrq_handle_crash+") for n in names), names


def test_pv_magic_without_p2m_is_a_one_line_error(core, tmp_path):
    copy = sparse_copy(core, tmp_path / "magic.core")
    _, note = sections(core)[".note.Xen"]
    with open(core, "rb") as f:
        f.seek(note.sh_offset)
        notes = f.read(note.sh_size)
    header = notes.index(struct.pack("<III", 4, 32, 0x2000001) + b"Xen\0")
    patch(copy, note.sh_offset + header + 16, struct.pack("<Q", 0xF00FEBED))
    out = cli("ps", str(copy))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1
    assert ".xen_p2m" in out.stderr and str(copy) in out.stderr
