"""Exploration commands in crash's vocabulary (issue 15): `p`, `struct`, `rd`,
`runq`, `task`, `list`, `whatis`, `vtop`, read with no vmlinux (BTF, kallsyms)
and compared with drgn reading the same dump with the -dbg vmlinux; and the
shell, fed from a pipe and driven at a real terminal (tmux) as a person would."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from oracles import drgn_program

import kvmcore
from kvmcore.commands import COMMANDS

SID = "x86_64-kaslr"
COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"
SMALL = COMMITTED / "vmcore.mdf-d31-c"
MANIFEST = json.loads((COMMITTED / "manifest.json").read_text())
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


def run(dump, line: str) -> dict:
    words = line.split()
    cmd = COMMANDS[words[0]]
    return cmd.data(dump, **cmd.parse(words[1:]))


@pytest.fixture(scope="module")
def pair(samples):
    s = samples.get_built(SID)
    return kvmcore.open(str(s.file("elf"))), drgn_program(
        str(s.file("elf")), str(samples.vmlinux(SID))
    )


def test_p_matches_drgn(pair):
    dump, prog = pair
    assert run(dump, "p init_task.comm")["value"] == prog["init_task"].comm.string_().decode()
    assert run(dump, "p init_task.tasks.next")["value"] == prog["init_task"].tasks.next.value_()
    assert run(dump, "p jiffies")["value"] == prog["jiffies"].value_()
    assert (
        run(dump, "p sizeof(struct task_struct)")["value"] == prog.type("struct task_struct").size
    )
    assert (
        run(dump, "p init_task.se.load.weight")["value"]
        == prog["init_task"].se.load.weight.value_()
    )
    # a cast of a list_head pointer, as C allows: the pid read at that address + offsetof
    ours = run(dump, "p ((struct task_struct *)init_task.tasks.next)->pid")
    assert ours["type"] == "pid_t"
    addr = prog["init_task"].tasks.next.value_()
    offset = prog.type("struct task_struct").member("pid").offset
    assert ours["value"] == int.from_bytes(prog.read(addr + offset, 4), "little", signed=True)


def test_struct_offsets_match_drgn(pair):
    dump, prog = pair
    for name in ("task_struct", "mm_struct", "list_head", "rq"):
        ours = {
            m["name"]: m["bit_offset"]
            for m in run(dump, f"struct {name} -o")["members"]
            if m["name"]
        }
        theirs = {m.name: m.bit_offset for m in prog.type(f"struct {name}").members if m.name}
        assert ours == theirs, name


def test_struct_at_address_matches_drgn(pair):
    dump, prog = pair
    addr = prog["init_task"].address_
    value = run(dump, f"struct task_struct {addr:#x}")["value"]
    assert value["pid"] == 0 and value["comm"] == "swapper/0"
    assert value["tasks"]["next"] == prog["init_task"].tasks.next.value_()


def test_rd_reads_the_bytes_drgn_reads(pair):
    dump, prog = pair
    addr = prog["init_task"].address_
    data = run(dump, f"rd {addr:#x} 16")
    assert bytes.fromhex(data["bytes"]) == prog.read(addr, 16 * 8)
    assert run(dump, "rd -a linux_banner")["ascii"] == prog["linux_banner"].string_().decode()


def test_runq_matches_drgn(pair):
    from drgn.helpers.linux.percpu import per_cpu

    dump, prog = pair
    for cpu in run(dump, "runq")["cpus"]:
        rq = per_cpu(prog["runqueues"], cpu["cpu"])
        assert cpu["current"]["pid"] == rq.curr.pid.value_()
        assert cpu["nr_running"] == rq.nr_running.value_()


def test_task_list_and_whatis(pair, samples):
    dump, prog = pair
    m = samples.get_built(SID).manifest
    task = run(dump, f"task --pid {m['panic']['pid']} -R pid,comm")
    assert task["fields"] == {"pid": m["panic"]["pid"], "comm": m["panic"]["comm"]}
    entries = run(dump, "list init_task.tasks -m task_struct.tasks -s pid -H")["entries"]
    pids = [int(e["pid"]) for e in entries]
    from drgn.helpers.linux.list import list_for_each_entry

    head = prog["init_task"].tasks.address_of_()
    assert pids == [
        t.pid.value_() for t in list_for_each_entry("struct task_struct", head, "tasks")
    ]
    assert run(dump, "whatis init_task")["type"] == "struct task_struct"


def test_vtop_matches_drgn(pair):
    from drgn.helpers.linux.mm import follow_phys

    dump, prog = pair
    addr = prog["init_task"].address_
    assert (
        int(run(dump, f"vtop {addr:#x}")["physical"], 16)
        == follow_phys(prog["init_mm"].address_of_(), addr).value_()
    )


# -- the shell --------------------------------------------------------------------------
@pytest.mark.fast
def test_shell_from_a_pipe_runs_each_line():
    """`kvmcore shell DUMP < cmds` (the committed dump): each command's output
    in order, errors as one line, the shell going on after them."""
    panic = MANIFEST["panic"]
    script = (
        "\n".join(
            [
                f"ps | grep {panic['comm']}",
                f"set {panic['pid']}",
                "task -R comm",
                "p init_task.comm",
                "p 1 +",  # does not parse
                "struct no_such_struct",  # no such type
                "rd 0x10 1",  # not mapped
                "p jiffies",
                "q",
                "p never_reached",
            ]
        )
        + "\n"
    )
    out = subprocess.run(
        [*KVMCORE, "shell", str(SMALL)], input=script, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f" {panic['pid']} " in text.split("kvmcore> set")[0]  # ps | grep found it
    assert f'comm = "{panic["comm"]}"' in text
    assert '$1 = "swapper/0"' in text
    errors = [line for line in text.splitlines() if ": error: " in line]
    assert [e.split(":")[0] for e in errors] == ["p", "struct", "rd"], errors
    assert "never_reached" not in text.split("kvmcore> q")[1]
    assert "Traceback" not in text + out.stderr


def _tmux(*args: str) -> str:
    return subprocess.run(
        ["tmux", *args], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def _wait_for(session: str, needle: str, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    screen = ""
    while time.monotonic() < deadline:
        screen = _tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", session)
        if needle in screen:
            return screen
        time.sleep(0.2)
    raise AssertionError(f"{needle!r} did not appear; screen:\n{screen}")


@pytest.mark.fast
def test_shell_at_a_terminal(tmp_path):
    """The shell in a real terminal (tmux): ten commands typed and read off the
    screen, a struct name completed with TAB, a pipe to grep, into Python and back."""
    if not shutil.which("tmux"):
        pytest.fail("tmux is missing: apt-get install tmux")
    session = f"kvmcore-shell-{time.monotonic_ns()}"
    env = f"KVMCORE_CACHE={tmp_path}"
    cmd = " ".join([env, *KVMCORE[:1], "-c", repr(KVMCORE[2]), "shell", str(SMALL)])
    _tmux("new-session", "-d", "-s", session, "-x", "200", "-y", "50", cmd)
    try:
        _wait_for(session, "kvmcore>")

        def type_line(text: str, expect: str) -> str:
            _tmux("send-keys", "-t", session, "-l", text)
            _tmux("send-keys", "-t", session, "Enter")
            return _wait_for(session, expect)

        panic = MANIFEST["panic"]
        type_line("ps | grep init", " init")
        type_line(f"set {panic['pid']}", "COMMAND:")
        type_line("bt", "sysrq_handle_crash")
        type_line("p init_task.comm", '"swapper/0"')
        type_line("p jiffies", "$1 = ")
        type_line("whatis pid_t", "typedef int pid_t;")
        type_line("struct list_head -o", "[0x8]")
        type_line("sys", "RELEASE")
        type_line("p 1 +", "p: error:")
        # completion: "struct task_stru" + TAB becomes task_struct
        _tmux("send-keys", "-t", session, "-l", "struct task_stru")
        _wait_for(session, "kvmcore> struct task_stru")
        _tmux("send-keys", "-t", session, "Tab")
        screen = _wait_for(session, "kvmcore> struct task_struct")
        _tmux("send-keys", "-t", session, "C-u")
        type_line("help", "set [PID]")
        # into Python and back
        type_line("py", ">>>")
        type_line("print('arch', dump.arch.name)", "arch x86_64")
        _tmux("send-keys", "-t", session, "C-d")
        type_line("p init_task.pid", "$1 = 0")
        assert "Traceback" not in screen
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True, timeout=30)


def test_tree_matches_drgn(pair):
    """`tree` walks an rbtree in order and an xarray in index order as drgn's helpers do."""
    from drgn.helpers.linux.idr import idr_for_each
    from drgn.helpers.linux.rbtree import rbtree_inorder_for_each_entry

    dump, prog = pair
    rb = run(dump, "tree vmap_area_root -m vmap_area.rb_node -s va_start")["entries"]
    theirs = [
        v.va_start.value_()
        for v in rbtree_inorder_for_each_entry(
            "struct vmap_area", prog["vmap_area_root"].address_of_(), "rb_node"
        )
    ]
    assert [int(e["va_start"]) for e in rb] == theirs and len(theirs) > 10
    xa = run(dump, "tree &init_pid_ns.idr.idr_rt -t xarray")["entries"]
    assert [(e["index"], int(e["node"], 16)) for e in xa] == [
        (i, p.value_()) for i, p in idr_for_each(prog["init_pid_ns"].idr.address_of_())
    ]
