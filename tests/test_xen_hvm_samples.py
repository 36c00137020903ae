"""Xen HVM guest dumps of every paging mode (issue 14), from fixtures: real
QEMU ELF dumps of the i386 (PAE and 2-level) and x86_64 samples rewrapped by
tests/xen_dumpcore_writer.py into the dump-core layout `xl dump-core` writes
for an HVM guest (.xen_pfn, vcpu_guest_context from the NT_PRSTATUS and QEMU
notes, no VMCOREINFO note), since no HVM guest can be dumped in CI time.
The walk starts at a vCPU's CR3 in the mode its CR4 says; the answers are
checked against each sample's manifest, its pages against the source ELF's
PT_LOADs read by pyelftools."""

from __future__ import annotations

import pytest
from elftools.elf.elffile import ELFFile
from xen_dumpcore_writer import PAGE, hvm_from_dump

import kvmcore
from kvmcore.registry import get_arch

CASES = {
    "i386-pae": "i386 HVM, PAE",
    "i386-nopae": "i386 HVM, 2-level",
    "x86_64-nokaslr": "x86_64 HVM, 4-level",
}


@pytest.fixture(scope="module", params=sorted(CASES))
def case(request, samples, tmp_path_factory):
    s = samples.get_built(request.param)
    core = hvm_from_dump(s.file("elf"), tmp_path_factory.mktemp("xenhvm") / "hvm.core")
    with kvmcore.open(str(core), samples.vmlinux(request.param)) as dump:
        yield s, core, dump


def test_walk_mode_is_the_vcpus(case):
    s, _, dump = case
    assert dump.format_name == "xen" and dump.mem.facts.kind == "xen-hvm"
    assert dump.arch.name == get_arch(s.manifest["arch"]).name  # uname -m: i686 is i386
    assert dump.translator.describe()["paging"] == CASES[s.id]
    assert dump.translator.describe()["root_from"].endswith("'s CR3")
    ranges = list(dump.walk_pages())  # the kernel's mappings, though the CR3 is a process's
    assert ranges and all(dump.is_kernel_address(r.va) for r in ranges)


def test_pages_are_the_source_elfs(case):
    s, _, dump = case
    checked = 0
    with open(s.file("elf"), "rb") as f:
        elf = ELFFile(f)
        for seg in elf.iter_segments():
            if seg["p_type"] != "PT_LOAD" or not seg["p_filesz"]:
                continue
            for off in range(0, seg["p_filesz"], 61 * PAGE):  # a spread of pages
                f.seek(seg["p_offset"] + off)
                assert dump.read_phys(seg["p_paddr"] + off, PAGE) == f.read(PAGE)
                checked += 1
    assert checked > 500


def test_model_answers_the_manifest(case):
    s, _, dump = case
    m = s.manifest
    by_pid = {t.pid: t for t in dump.kernel.tasks() if not t.is_idle}
    for p in m["processes"]:
        t = by_pid.get(p["pid"])
        assert t is not None and (t.comm, t.ppid) == (p["comm"], p["ppid"]), p
    assert m["marker"] in [r.text for r in dump.kernel.log()]
    panic = dump.kernel.panic
    assert (panic.message, panic.cpu) == (m["panic"]["message"], m["panic"]["cpu"])
    assert (panic.task.pid, panic.task.comm) == (m["panic"]["pid"], m["panic"]["comm"])
    bt = dump.backtrace(panic.task)
    names = [f.function or "" for f in bt.frames]
    assert any(n.startswith("sysrq_handle_crash") for n in names), names
    pc = dump.arch.pc_reg
    assert bt.frames[0].pc == dump.cpu_states[m["panic"]["cpu"]].regs[pc]
