"""`kvmcore symfile` as gdb's only symbol file: a real gdb (Debian's gdb,
gdb-multiarch for arm64) unwinds with the .debug_frame synthesized from the
dump (ORC on x86_64, frame records on arm64) and names the frames as gdb with
the -dbg vmlinux does. Both gdb sessions unwind on their own (gdb's DWARF
unwinder), independently of kvmcore's unwinder; the server only supplies
memory and registers."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from oracles import gdb_binary

PY = sys.executable
FRAME = re.compile(r"^#(\d+) +(?:(0x[0-9a-f]+) in )?([\w.]+|\?\?) \(", re.M)
INFO_SYMBOL = "==SYM {}=="


def write_symfile(dump_path, out) -> None:
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "symfile", str(dump_path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert ".debug_frame" in p.stdout, p.stdout


def gdb(arch: str, dump_path, symbols, commands: list[str], offset: int | None = None) -> str:
    """gdb with `symbols` as its only symbol file; `offset` loads it with
    symbol-file -o (the vmlinux: its non-.text sections too), else the
    server's qOffsets places it."""
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
    ]
    if offset is not None:
        args += ["-ex", f"symbol-file -o {offset:#x} {symbols}"]
    args += ["-ex", f"target remote | {PY} -m kvmcore.gdbserver --stdio {dump_path}"]
    for c in commands:
        args += ["-ex", c]
    if offset is None:
        args.append(str(symbols))
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return p.stdout + p.stderr


def functions(bt: str) -> list[tuple[str | None, str]]:
    """(pc, function) per physical frame of one backtrace: gdb prints inlined
    callers as extra frames without an address; the function that owns the
    pc is the outermost of such a group (the last line)."""
    groups: list[list] = []
    for m in FRAME.finditer(bt):
        pc, name = m[2], m[3]
        if pc is not None or not groups:
            groups.append([pc, name])
        else:
            groups[-1][1] = name
    return [(pc, name) for pc, name in groups]


def base(name: str) -> str:
    """A function's name without the compiler's clone suffix (.cold,
    .constprop.0, .isra.0): kallsyms has the clone's name, DWARF the function's."""
    return name.split(".", 1)[0]


def named(frames: list[tuple[str | None, str]]) -> list[tuple[str | None, str]]:
    """The frames up to the first one without a symbol."""
    out = []
    for pc, name in frames:
        if name == "??":
            break
        out.append((pc, name))
    return out


def same_function(sym_name: str, vml_name: str, last: bool) -> bool:
    if base(sym_name) == base(vml_name):
        return True
    # the syscall entry: kallsyms lists entry_SYSCALL_64's inner label
    # entry_SYSCALL_64_after_hwframe as a function of its own (no sizes or
    # types to say otherwise); the vmlinux marks it NOTYPE inside entry_SYSCALL_64
    return last and sym_name.startswith(vml_name + "_")


def section(out: str, tag: str) -> str:
    return out.split(f"=={tag}==")[1].split("==")[0]


def sessions(samples, sid: str, fmt: str, tmp_path_factory, extra: list[str]) -> dict:
    s = samples.get_built(sid)
    vmlinux = samples.vmlinux(sid)
    path = s.file(fmt)
    arch = s.manifest["arch"]
    sym = tmp_path_factory.mktemp(sid) / "vmlinux.sym"
    write_symfile(path, sym)
    import kvmcore

    with kvmcore.open(str(path)) as dump:
        offset = dump.kernel_offset
    commands = ["echo ==BT==\\n", "bt 40", "echo ==END==\\n"] + extra
    return {
        "sample": s,
        "arch": arch,
        "path": path,
        "sym": sym,
        "vmlinux": vmlinux,
        "offset": offset,
        "commands": commands,
        "symfile": gdb(arch, path, sym, commands),
        "vml": gdb(arch, path, vmlinux, commands, offset=offset),
    }


def check_panic_bt(run: dict) -> list[tuple[str | None, str]]:
    """The panicking task's bt with the symfile names the same functions, in
    the same order, as with the vmlinux, from sysrq_handle_crash to the end of
    what the vmlinux session names (down to the syscall entry)."""
    got = named(functions(section(run["symfile"], "BT")))
    want = named(functions(section(run["vml"], "BT")))
    got_names = [base(n) for _, n in got]
    want_names = [base(n) for _, n in want]
    assert "sysrq_handle_crash" in want_names, run["vml"][-3000:]
    assert "sysrq_handle_crash" in got_names, run["symfile"][-3000:]
    g, w = (
        got[got_names.index("sysrq_handle_crash") :],
        want[want_names.index("sysrq_handle_crash") :],
    )
    assert len(g) == len(w), (got, want)
    for i, ((gpc, gname), (wpc, wname)) in enumerate(zip(g, w)):
        assert same_function(gname, wname, i == len(w) - 1), (i, got, want)
        assert gpc == wpc, (i, got, want)
    assert [base(n) for _, n in g[:2]] == ["sysrq_handle_crash", "__handle_sysrq"]
    return g


def call_sites(pcs: list[str]) -> list[str]:
    """Return address - 1: inside the calling function (a call can be its
    last instruction, and the vmlinux's sized symbols then do not cover the
    return address itself)."""
    return [hex(int(pc, 16) - 1) for pc in pcs]


def info_symbol_commands(pcs: list[str]) -> list[str]:
    out = []
    for pc in pcs:
        out += [f"echo {INFO_SYMBOL.format(pc)}\\n", f"info symbol {pc}"]
    return out + ["echo ==DONE==\\n"]


def check_info_symbol(run: dict, pcs: list[str]) -> None:
    cmds = info_symbol_commands(pcs)
    got = gdb(run["arch"], run["path"], run["sym"], cmds)
    want = gdb(run["arch"], run["path"], run["vmlinux"], cmds, offset=run["offset"])
    for pc in pcs:
        tag = INFO_SYMBOL.format(pc).strip("=")
        # gdb names the objfile (" of FILE") once it holds more than one: the
        # server's library list adds the entry text's unwind rows (unwindlib)
        g = re.sub(r" of \S+$", "", section(got, tag).strip().splitlines()[0])
        w = re.sub(r" of \S+$", "", section(want, tag).strip().splitlines()[0])
        assert re.match(r"[\w.]+ \+ \d+ in section \.text", w), want[-2000:]
        assert g == w, (pc, g, w)


def check_all_threads(out: str, ntasks: int) -> list[list[tuple[str | None, str]]]:
    """`thread apply all bt 3`: every task is there, each with a named frame
    and no gdb error."""
    blocks = re.split(r"^Thread \d+ ", out, flags=re.M)[1:]
    assert len(blocks) == ntasks, out[-3000:]
    for bad in ("Cannot access memory", "Backtrace stopped", "error", "corrupt"):
        assert bad not in out, out[out.find(bad) - 2000 : out.find(bad) + 500]
    result = []
    for block in blocks:
        frames = functions(block)
        assert frames and frames[0][1] != "??", block
        result.append(frames)
    return result


def ntasks(path) -> int:
    import kvmcore

    with kvmcore.open(str(path)) as dump:
        return len(dump.kernel.tasks())


# ------------------------------------------------------------------ x86_64


@pytest.fixture(scope="module")
def x86_kaslr(samples, tmp_path_factory):
    return sessions(
        samples,
        "x86_64-kaslr",
        "elf",
        tmp_path_factory,
        ["echo ==ALL==\\n", "thread apply all bt 3", "echo ==ALLEND==\\n"],
    )


def test_x86_kaslr_panic_bt_matches_vmlinux(x86_kaslr):
    assert x86_kaslr["sample"].manifest["kaslr"] and x86_kaslr["offset"]
    frames = check_panic_bt(x86_kaslr)
    assert base(frames[-1][1]).startswith("entry_SYSCALL_64")
    # gdb stops cleanly at the syscall entry (user pt_regs), no error line
    bt = section(x86_kaslr["symfile"], "BT")
    assert "Backtrace stopped" not in bt and "??" not in bt, bt


def test_x86_kaslr_info_symbol_matches_vmlinux(x86_kaslr):
    frames = check_panic_bt(x86_kaslr)
    check_info_symbol(x86_kaslr, call_sites([pc for pc, _ in frames[:-1]]))


def test_x86_kaslr_all_threads_bt(x86_kaslr):
    out = section(x86_kaslr["symfile"], "ALL")
    got = check_all_threads(out, ntasks(x86_kaslr["path"]))
    # frame #0 of every thread owns the same function as with the vmlinux
    want_first = [
        functions(b)[0][1]
        for b in re.split(r"^Thread \d+ ", section(x86_kaslr["vml"], "ALL"), flags=re.M)[1:]
    ]
    assert [base(f[0][1]) for f in got] == [base(n) for n in want_first]


def test_x86_small_kdump_panic_bt_matches_vmlinux(samples, tmp_path_factory):
    run = sessions(samples, "x86_64-small", "mdf-d31-c", tmp_path_factory, [])
    frames = check_panic_bt(run)
    assert base(frames[-1][1]).startswith("entry_SYSCALL_64")


# ------------------------------------------------------------------ arm64


@pytest.fixture(scope="module")
def arm64_kaslr(samples, tmp_path_factory):
    return sessions(
        samples,
        "arm64-kaslr",
        "elf",
        tmp_path_factory,
        ["echo ==ALL==\\n", "thread apply all bt 12", "echo ==ALLEND==\\n"],
    )


def test_arm64_panic_bt(arm64_kaslr):
    """The vmlinux session itself cannot unwind the panicking CPU (its pc is
    in the exception vectors; gdb stops after __delay_cycles), so the chain
    is checked against the -dbg vmlinux's names for each frame's pc."""
    got = named(functions(section(arm64_kaslr["symfile"], "BT")))
    names = [base(n) for _, n in got]
    assert "sysrq_handle_crash" in names, arm64_kaslr["symfile"][-3000:]
    i = names.index("sysrq_handle_crash")
    assert names[i - 1] == "panic" and names[i + 1] == "__handle_sysrq", names
    assert names[-1].startswith("el0t_64_sync"), names
    check_info_symbol(arm64_kaslr, call_sites([pc for pc, _ in got[1:]]))


def test_arm64_all_threads_match_vmlinux(arm64_kaslr):
    """Sleeping tasks: the vmlinux's own CFI unwinds them; the frame-record
    CFI of the symfile gives the same functions in the same order."""
    sym_blocks = re.split(r"^Thread \d+ ", section(arm64_kaslr["symfile"], "ALL"), flags=re.M)[1:]
    vml_blocks = re.split(r"^Thread \d+ ", section(arm64_kaslr["vml"], "ALL"), flags=re.M)[1:]
    assert len(sym_blocks) == len(vml_blocks) == ntasks(arm64_kaslr["path"])
    panic = arm64_kaslr["sample"].manifest["panic"]
    compared = 0
    for sb, vb in zip(sym_blocks, vml_blocks):
        assert sb.split("\n", 1)[0] == vb.split("\n", 1)[0]  # the same thread
        if f'"{panic["pid"]} {panic["comm"]}"' in sb.split("\n", 1)[0]:
            continue  # see test_arm64_panic_bt
        got = named(functions(sb))
        want = named(functions(vb))
        assert got and got[0][1] != "??", sb
        n = min(len(got), len(want))
        assert n >= 2, (sb, vb)
        assert [base(x) for _, x in got[:n]] == [base(x) for _, x in want[:n]], (sb, vb)
        compared += 1
    assert compared >= 10
