"""A real kdump (capture kernel loaded with `kexec -p`): the panic CPU's
PRSTATUS pc is `_THIS_IP_` in __crash_kexec (crash_setup_regs, inlined),
a function objtool left without any ORC entry. kvmcore follows its code to
the entry objtool would have written (kvmcore.unwind.x86_stack), so the trace
is exact with and without the vmlinux, and the symbol file gives gdb the
same rows. Oracles: drgn's stack_trace() with the -dbg vmlinux (DWARF CFI),
and gdb with `kvmcore symfile` as its only symbols."""

from __future__ import annotations

import pytest
from test_symfile_gdb import functions, gdb, write_symfile
from test_unwind import base, drgn_trace_pcs

import kvmcore
from kvmcore.unwind import orc
from kvmcore.unwind.x86_stack import function_entries

SID = "x86_64-kdump"


@pytest.fixture(scope="module")
def drgn_frames(samples):
    """(pc, function) of drgn's physical frames (inlined ones, such as
    crash_setup_regs, share their caller's pc), kernel frames only."""
    s = samples.get_built(SID)
    frames = drgn_trace_pcs(samples.vmlinux(SID), s.file("proc-elf"), None)
    return [(pc, base(name)) for pc, name in frames if pc >= 0xFFFF800000000000]


@pytest.mark.parametrize("fmt", ["proc-elf", "mdf-d31-l"])
@pytest.mark.parametrize("with_vmlinux", [False, True], ids=["kallsyms", "vmlinux"])
def test_kdump_panic_trace_matches_drgn(samples, drgn_frames, fmt, with_vmlinux):
    s = samples.get_built(SID)
    assert s.manifest["kind"] == "kdump"
    vmlinux = str(samples.vmlinux(SID)) if with_vmlinux else None
    with kvmcore.open(str(s.file(fmt)), vmlinux=vmlinux) as dump:
        task = dump.kernel.panic_task()
        assert task.pid == s.manifest["panic"]["pid"]
        bt = dump.backtrace(task)
    ours = [base(n) for n in bt.functions()]
    assert ours[:3] == ["__crash_kexec", "panic", "sysrq_handle_crash"], str(bt)
    # the same frames as drgn: pcs identical, names the same (kallsyms may
    # name a label inside a function: entry_SYSCALL_64_after_hwframe)
    assert [f.pc for f in bt.frames] == [pc for pc, _ in drgn_frames], (str(bt), drgn_frames)
    assert all(o.startswith(t) for o, (_, t) in zip(ours, drgn_frames)), (ours, drgn_frames)
    assert len(ours) >= 9 and ours[-1].startswith("entry_SYSCALL_64"), str(bt)
    assert not any(f.guessed for f in bt.frames), str(bt)
    if not with_vmlinux:  # the frame after __crash_kexec came from its code, not a scan
        assert bt.frames[1].method == "code", str(bt)


def test_gdb_with_the_symfile_gets_past_crash_kexec(samples, tmp_path):
    s = samples.get_built(SID)
    sym = tmp_path / "vmlinux.sym"
    write_symfile(s.file("proc-elf"), sym)
    out = gdb("x86_64", s.file("proc-elf"), sym, ["bt"])
    names = [base(name) for _, name in functions(out)]
    assert names[:3] == ["__crash_kexec", "panic", "sysrq_handle_crash"], out
    assert "do_syscall_64" in names, out


def _entries(code: bytes, start: int = 0x1000) -> dict[int, orc.OrcEntry] | None:
    return function_entries(code, start)


def test_stack_depth_of_a_frame_pointer_function():
    code = bytes.fromhex(
        "55"  # push %rbp
        "4889e5"  # mov %rsp,%rbp
        "53"  # push %rbx
        "4883ec20"  # sub $0x20,%rsp
        "85ff"  # test %edi,%edi
        "7406"  # je +6 -> the mov at 0x13
        "e800000000"  # call
        "90"  # nop
        "488b5df8"  # mov -0x8(%rbp),%rbx
        "c9"  # leave
        "c3"
    )  # ret
    e = _entries(code)
    assert e is not None
    depth = {at - 0x1000: (x.sp_offset, x.bp_reg, x.bp_offset) for at, x in e.items()}
    saved = (orc.REG_PREV_SP, -16)  # rbp saved at CFA-16
    assert depth[0] == (8, orc.REG_UNDEFINED, 0)
    assert depth[1] == depth[4] == (16, *saved)
    assert depth[5] == (24, *saved)
    assert depth[9] == depth[0xD] == depth[0x12] == (56, *saved)
    assert depth[0x13] == depth[0x17] == (56, *saved)  # the jump target: the same both ways
    assert depth[0x18] == (8, orc.REG_UNDEFINED, 0)  # ret, after leave
    assert sorted(depth) == [0, 1, 4, 5, 9, 0xB, 0xD, 0x12, 0x13, 0x17, 0x18]


@pytest.mark.parametrize(
    "hexcode",
    [
        "554889e54883e4f0c9c3",  # and $-16,%rsp: a realignment
        "4889c4c3",  # mov %rax,%rsp
        "53750158c3",  # the two paths to the ret disagree (push; jne; pop; ret)
    ],
)
def test_stack_depth_gives_up(hexcode):
    assert _entries(bytes.fromhex(hexcode)) is None
