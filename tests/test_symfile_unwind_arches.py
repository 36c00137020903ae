"""`kvmcore symfile`'s unwind rows on s390x (the back chain), ppc64le (the
back chain and the LR save slot) and 32-bit Arm (the kernel's .ARM.exidx
tables turned into DWARF CFI; the armmp and armmp-lpae samples), each a real
sample,
read by gdb-multiarch with the symfile as its only symbol file over
`kvmcore serve`. gdb evaluates the rows with its own DWARF unwinder; the
server supplies memory and registers only.

Checked: the panicking task's backtrace runs through sysrq_handle_crash to the
syscall entry and names, frame for frame, what kvmcore's own `bt` names; from
sysrq_handle_crash down, the same functions as gdb with the -dbg vmlinux (its
compiler-written .debug_frame: an oracle independent of kvmcore's rules); and
every task's backtrace in gdb names what kvmcore's `bt` names for it, ending
without an error (a gdb error in `thread apply all` would cut the output
short). armhf has no BTF, so its server takes the -dbg vmlinux for the task
list, while gdb has only the symfile written with the System.map.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import gdb_binary
from test_symfile_gdb import base, functions, named

import kvmcore

PY = sys.executable
#: sample id -> (whether the server needs the vmlinux, symfile needs the System.map)
ARCHES = {"s390x": False, "ppc64le": False, "armhf": True, "armhf-lpae": True}
SYSCALL_ENTRY = {
    "s390x": "system_call",
    "ppc64le": "system_call_vectored_common",
    # gdb names a return address by address - 1: ret_fast_syscall's first
    # instruction (where the syscall handlers return) by the label before it
    "armhf": "__entry_text_start",
    "armhf-lpae": "__entry_text_start",
}
THREAD = re.compile(r'^Thread \d+ \(Thread \d+ "(\d+) ([^"]*)"', re.M)


def run_gdb(arch: str, dump: Path, symbols: Path, server_args: list[str], cmds: list[str]) -> str:
    args = [gdb_binary(arch), "-nx", "-batch"]
    for c in ["set width 0", "set height 0", "set remotetimeout 60"]:
        args += ["-ex", c]
    server = " ".join([PY, "-m", "kvmcore.cli.main", "serve", "--stdio", str(dump), *server_args])
    args += ["-ex", f"target remote | {server}"]
    for c in cmds:
        args += ["-ex", c]
    args.append(str(symbols))
    p = subprocess.run(args, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    return p.stdout + p.stderr


@pytest.fixture(scope="module", params=list(ARCHES))
def run(request, samples, tmp_path_factory):
    sid = request.param
    s = samples.get_built(sid)
    vmlinux = samples.vmlinux(sid)
    dump = s.file("elf")
    arch = s.manifest["arch"]
    sym = tmp_path_factory.mktemp(sid) / "vmlinux.sym"
    symfile_args = ["--system-map", str(s.system_map())] if ARCHES[sid] else []
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "symfile", str(dump), "-o", str(sym), *symfile_args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0 and ".debug_frame" in p.stdout, p.stdout + p.stderr
    server_args = [str(vmlinux)] if ARCHES[sid] else []
    with kvmcore.open(str(dump), str(vmlinux) if ARCHES[sid] else None) as d:
        offset = d.kernel_offset
        kvm = {}
        for task in d.kernel.tasks():
            bt = d.backtrace(task)
            kvm[(task.pid, str(task.comm))] = bt
        panic = d.kernel.panic_task()
        panic_key = (panic.pid, str(panic.comm))
    load = [f"symbol-file -o {offset:#x} {sym}"] if offset else []
    cmds = load + [
        "echo ==BT==\\n",
        "bt 60",
        "echo ==ALL==\\n",
        "thread apply all bt 60",
        "echo ==END==\\n",
    ]
    out = run_gdb(arch, dump, sym, server_args, cmds)
    vml = run_gdb(
        arch, dump, vmlinux, [str(vmlinux)], ["echo ==BT==\\n", "bt 60", "echo ==END==\\n"]
    )
    return {
        "sid": sid,
        "manifest": s.manifest,
        "out": out,
        "vml": vml,
        "kvm": kvm,
        "panic": panic_key,
    }


def kvm_names(bt) -> list[str]:
    """kvmcore's frames as gdb sees them: the server hands gdb the first frame
    in kernel text (ppc64le's firmware frame #0 is left out), and names by
    base name (kallsyms' clone suffixes, which gdb prints shortened)."""
    names = []
    for f in bt.frames:
        name = (f.function or "?").split("+")[0]
        if name == "?" and not names:
            continue
        names.append(base(name))
    return names


def gdb_names(block: str) -> list[str]:
    return [base(n) for _, n in named(functions(block))]


def test_panic_backtrace_matches_kvmcore_bt(run):
    """The panicking task: gdb with the symfile names kvmcore's frames, from
    the first to the syscall entry (the last frame's name aside on armhf,
    see SYSCALL_ENTRY)."""
    m = run["manifest"]
    assert run["panic"] == (m["panic"]["pid"], m["panic"]["comm"])
    bt_text = run["out"].split("==BT==")[1].split("==ALL==")[0]
    got = gdb_names(bt_text)
    want = kvm_names(run["kvm"][run["panic"]])
    assert "sysrq_handle_crash" in got, run["out"][-3000:]
    assert got[-1] == SYSCALL_ENTRY[run["sid"]], got
    assert got[:-1] == want[:-1], (got, want)
    assert "Backtrace stopped" not in bt_text or "inner to this frame" in bt_text, bt_text


def test_panic_backtrace_matches_gdb_with_vmlinux(run):
    """From sysrq_handle_crash down, the frames gdb finds with the -dbg
    vmlinux's own CFI (inlined callers folded into their frame): the same
    pcs, and the same functions but for armhf's syscall entry, a return
    address on two labels (__entry_text_start, __idmap_text_end) of which each
    file names another."""
    got = named(functions(run["out"].split("==BT==")[1].split("==ALL==")[0]))
    want = named(functions(run["vml"].split("==BT==")[1].split("==END==")[0]))
    got_names, want_names = [base(n) for _, n in got], [base(n) for _, n in want]
    assert "sysrq_handle_crash" in want_names, run["vml"][-3000:]
    g = got[got_names.index("sysrq_handle_crash") :]
    w = want[want_names.index("sysrq_handle_crash") :]
    n = min(len(g), len(w))
    assert n >= 5 and [pc for pc, _ in g[:n]] == [pc for pc, _ in w[:n]], (g, w)
    names = n - 1 if run["sid"].startswith("armhf") and n == len(g) else n
    assert [base(x) for _, x in g[:names]] == [base(x) for _, x in w[:names]], (g, w)


def test_every_task_matches_kvmcore_bt(run):
    """Every thread gdb lists (every task, idle tasks included) unwinds to the
    frames kvmcore's `bt` gives it; gdb may show one more frame past the end
    of an idle task's stack, where kvmcore stops at its known bottom."""
    body = run["out"].split("==ALL==")[1].split("==END==")[0]
    parts = THREAD.split(body)
    blocks = {(int(parts[i]), parts[i + 1]): parts[i + 2] for i in range(1, len(parts), 3)}
    assert set(blocks) == set(run["kvm"]), set(blocks) ^ set(run["kvm"])
    last = SYSCALL_ENTRY[run["sid"]]
    for key, block in blocks.items():
        got = gdb_names(block)
        want = kvm_names(run["kvm"][key])
        assert "PC not saved" not in block and "Cannot access memory" not in block, (key, block)
        if run["sid"].startswith("armhf") and want[-1] == "ret_fast_syscall":
            want[-1] = last
        assert got[: len(want)] == want, (key, got, want)
        assert len(got) <= len(want) + (1 if key[0] == 0 else 0), (key, got, want)
