"""Kernel backtraces (kvmcore.unwind) on the real sample dumps.

Ground truth: the manifests (panic CPU, the sysrq-c path, the sleepers) and
independent tools: crash's `bt` and drgn's ORC/DWARF stack traces, both with
the -dbg vmlinux. kvmcore itself unwinds without a vmlinux (kallsyms + ORC
from the dump) except where the kernel model needs types (arm64: BTF)."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest
from conftest import sample_files, sample_ids

import kvmcore
from kvmcore.linux.switch_frame import switch_frame
from kvmcore.unwind import unwind

PANIC_PATH = {  # the panicking CPU's call chain, innermost first (each a name prefix)
    "x86_64": [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
        "do_syscall_64",
        "entry_SYSCALL_64",
    ],
    "aarch64": [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
        "el0_svc",
        "el0t_64_sync",
    ],
    "i686": [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
    ],
    "riscv64": [
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
        "do_trap_ecall_u",
        "handle_exception",
    ],
    # s390x: panic's notifier stops the CPU in disabled wait (QEMU: GUEST_PANICKED)
    "s390x": [
        "stop_run",
        "on_panic_notify",
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
        "__do_syscall",
        "system_call",
    ],
    # pseries: the CPU sits in RTAS firmware (ibm,os-term), so frame #0 has no name
    "ppc64le": [
        "rtas_call",
        "rtas_os_term",
        "pseries_panic",
        "panic",
        "sysrq_handle_crash",
        "__handle_sysrq",
        "write_sysrq_trigger",
        "vfs_write",
        "ksys_write",
        "system_call_exception",
        "system_call_vectored_common",
    ],
}
# armhf's kernel has no BTF (tasks need the -dbg vmlinux, which these generic tests do
# not give) and QEMU caught its panic CPU on the banked IRQ vector (frame #0 is lr_irq - 4,
# not the saved pc): its CPU backtraces are tested in tests/test_arch_arm.py (armhf-lpae:
# tests/test_arch_arm_lpae.py)
NO_VMLINUX_CPU_UNWIND = ("armhf", "armhf-lpae")
APT_HINT = "apt-get install $(grep -v '^#' sample_dumps/apt-packages.txt)"


def base(name: str | None) -> str:
    return (name or "?").split(".", 1)[0]


def in_order(names: list[str], wanted: list[str]) -> bool:
    """Every prefix in `wanted` matches some name, in this order."""
    pos = 0
    for name in names:
        if pos < len(wanted) and name.startswith(wanted[pos]):
            pos += 1
    return pos == len(wanted)


def main_file(sample) -> str:
    return "elf" if "elf" in sample.formats else sample.formats[0]


def panic_backtrace(dump, manifest):
    cpu = manifest["panic"]["cpu"]
    states = dump.cpu_states
    assert cpu < len(states), f"{len(states)} PRSTATUS notes, panic cpu is {cpu}"
    return unwind(dump, states[cpu].regs)


# ------------------------------------------------------------ panicking CPU


@pytest.mark.parametrize(
    "sid,fmt", [p for p in sample_files() if p[0] not in NO_VMLINUX_CPU_UNWIND]
)
def test_panic_cpu_backtrace(samples, sid, fmt):
    s = samples.get_built(sid)
    m = s.manifest
    with kvmcore.open(str(s.file(fmt))) as dump:
        bt = panic_backtrace(dump, m)
    names = [base(n) for n in bt.functions()]
    assert in_order(names, ["sysrq_handle_crash", "__handle_sysrq"]), str(bt)
    assert in_order(names, PANIC_PATH[m["arch"]]), str(bt)
    assert bt.error is None, str(bt)
    if m["arch"] == "s390x":  # user and kernel addresses overlap: the PSW says user mode
        assert bt.user_regs is not None and bt.user_regs["pswm"] & (1 << 48), str(bt)
    elif m["arch"] != "i686":  # i386: the ebp chain just ends at the entry code
        assert bt.user_regs is not None and not dump.is_kernel_address(
            bt.user_regs[dump.arch.pc_reg]
        ), "walk should end at the syscall entry"
    # the frames from the syscall entry down to the crash are exact, not guessed
    start = names.index("sysrq_handle_crash")
    assert not any(f.guessed for f in bt.frames[start + 1 :]), str(bt)


@pytest.mark.parametrize("sid", [i for i in sample_ids() if i not in NO_VMLINUX_CPU_UNWIND])
def test_every_cpu_unwinds_without_raising(samples, sid):
    s = samples.get_built(sid)
    with kvmcore.open(str(s.file(main_file(s)))) as dump:
        for state in dump.cpu_states:
            bt = unwind(dump, state.regs)
            if not bt.frames:  # a CPU stopped in user mode has no kernel frames
                assert bt.user_regs == state.regs and bt.error is None
                continue
            assert bt.frames[0].pc == state.regs[dump.arch.pc_reg]
            assert len(bt.frames) <= 64


@pytest.mark.parametrize(
    "sid", [i for i in sample_ids(kind="qemu") if i not in NO_VMLINUX_CPU_UNWIND]
)
def test_bounds_and_missing_memory(samples, sid):
    s = samples.get_built(sid)
    with kvmcore.open(str(s.file(main_file(s)))) as dump:
        regs = dict(dump.cpu_states[s.manifest["panic"]["cpu"]].regs)
        bt = unwind(dump, regs, max_frames=3)
        assert len(bt.frames) == 3 and bt.error and "3 frames" in bt.error
        # a stack pointer into unmapped kernel space: an error, not an exception
        for reg in (dump.arch.sp_reg, dump.arch.fp_reg):
            regs[reg] = 0xFFFFFFFFFFFFF000 & ~0xFFFFF
        bt = unwind(dump, regs)
        assert bt.error, str(bt)


# ------------------------------------------------------------ independent tools


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {APT_HINT}", pytrace=False)
    return path


def crash_bt_names(crash: str, vmlinux, vmcore, cpu: int, tmp_path) -> list[str]:
    cmds = tmp_path / "cmds"
    cmds.write_text(f"bt -c {cpu}\nquit\n")
    p = subprocess.run(
        [crash, "-s", "-i", str(cmds), str(vmlinux), str(vmcore)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=600,
    )
    names = re.findall(r"^\s*#\d+ \[[0-9a-f]+\] (\S+) at [0-9a-f]+", p.stdout, re.M)
    assert names, p.stdout[-3000:] + p.stderr[-2000:]
    return names


@pytest.mark.parametrize("sid", sample_ids(arch="x86_64", kind="qemu"))
def test_matches_crash_bt(samples, sid, tmp_path):
    crash = tool("crash")
    s = samples.get_built(sid)
    m = s.manifest
    theirs = crash_bt_names(
        crash, samples.vmlinux(sid), s.file(main_file(s)), m["panic"]["cpu"], tmp_path
    )
    with kvmcore.open(str(s.file(main_file(s)))) as dump:
        ours = [n for n in panic_backtrace(dump, m).functions() if n]
    ours = ours[ours.index("sysrq_handle_crash") :]
    theirs = theirs[theirs.index("sysrq_handle_crash") :]
    # crash's x86_64 bt (without ORC) also lists stale return addresses its
    # stack scan meets (seen: filp_close, do_dup2, exit_to_user_mode_prepare
    # between do_syscall_64 and the entry): ours must be crash's frames, in
    # crash's order, from the same first to the same last
    it = iter(theirs)
    assert all(name in it for name in ours), (ours, theirs)
    assert ours[-1] == theirs[-1], (ours, theirs)
    assert len(ours) >= 8, (ours, theirs)


def drgn_trace_pcs(vmlinux, vmcore, tid: int | None):
    try:
        import drgn
    except ImportError:
        pytest.fail("drgn is not importable: .venv/bin/pip install drgn", pytrace=False)
    prog = drgn.Program()
    prog.set_core_dump(str(vmcore))
    prog.load_debug_info([str(vmlinux)], default=False, main=False)
    thread = prog.crashed_thread() if tid is None else prog.thread(tid)
    pcs = []
    for frame in thread.stack_trace():
        if frame.is_inline:
            continue
        try:
            pcs.append((frame.pc, frame.name))
        except LookupError:
            pcs.append((frame.pc, None))
    return pcs


# drgn reads x86_64 and arm64 kernels only
@pytest.mark.parametrize(
    "sid", [i for a in ("x86_64", "aarch64") for i in sample_ids(arch=a, kind="qemu")]
)
def test_matches_drgn_from_sysrq_handle_crash(samples, sid):
    """drgn unwinds with ORC (x86_64) / DWARF CFI (arm64) from the vmlinux; from
    sysrq_handle_crash to the syscall entry the frames' pcs must be identical."""
    s = samples.get_built(sid)
    m = s.manifest
    theirs = [pc for pc, _ in drgn_trace_pcs(samples.vmlinux(sid), s.file(main_file(s)), None)]
    with kvmcore.open(str(s.file(main_file(s)))) as dump:
        bt = panic_backtrace(dump, m)
    names = [base(n) for n in bt.functions()]
    ours = [f.pc for f in bt.frames[names.index("sysrq_handle_crash") :]]
    assert ours[0] in theirs, ([hex(p) for p in ours], [hex(p) for p in theirs])
    theirs = theirs[theirs.index(ours[0]) :]
    theirs = [pc for pc in theirs if dump.is_kernel_address(pc)]
    assert ours == theirs, ([hex(p) for p in ours], [hex(p) for p in theirs])


# ------------------------------------------------------------ sleeping tasks


@pytest.mark.parametrize("sid", sample_ids(kind="qemu"))
def test_sleeping_task_backtrace(samples, sid):
    s = samples.get_built(sid)
    m = s.manifest
    # only amd64's kallsyms has __start_BTF (KALLSYMS_ALL); elsewhere types come from the vmlinux
    vmlinux = str(samples.vmlinux(sid)) if m["arch"] != "x86_64" else None
    by_comm = {p["comm"]: p for p in m["processes"]}
    sleeper = by_comm["sleeper_a"]["pid"]
    child = next(p["pid"] for p in m["processes"] if p["comm"] == "sleep" and p["ppid"] == sleeper)
    with kvmcore.open(str(s.file(main_file(s))), vmlinux=vmlinux) as dump:
        kernel = dump.kernel
        task = kernel.find_task(child)
        assert task is not None and not task.on_cpu
        bt = unwind(dump, switch_frame(dump, task.address))
    names = [base(n) for n in bt.functions()]
    assert "schedule" in names, str(bt)
    assert in_order(names, ["schedule", "do_nanosleep"]) or in_order(
        names, ["schedule", "hrtimer_nanosleep"]
    ), str(bt)
    assert bt.error is None, str(bt)
    if m["arch"] != "i686":  # i386: the ebp chain just ends at the entry code
        assert bt.user_regs is not None, str(bt)
