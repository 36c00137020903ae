"""Typed objects (kvmcore.objects; issue 15): kernel variables, members,
pointers and the kernel's collections, read with no vmlinux (BTF types,
kallsyms symbols) and compared with drgn reading the same dump with the -dbg
vmlinux (its DWARF), or with the samples' manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from oracles import drgn_program
from patching import patched_dump, word

import kvmcore
from kvmcore.errors import KvmcoreError, WalkError
from kvmcore.objects import (
    container_of,
    hlist_for_each_entry,
    list_for_each_entry,
    per_cpu_ptr,
    rbtree_inorder,
    xa_for_each,
)

SID = "x86_64-kaslr"
COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"


@pytest.fixture(scope="module")
def pair(samples):
    """(kvmcore Dump without vmlinux, drgn Program with the -dbg vmlinux)."""
    s = samples.get_built(SID)
    dump = kvmcore.open(str(s.file("elf")))
    return dump, drgn_program(str(s.file("elf")), str(samples.vmlinux(SID)))


def test_init_task_members_match_drgn(pair):
    dump, prog = pair
    ours, theirs = dump.object("init_task"), prog["init_task"]
    assert ours.address == theirs.address_
    assert ours.comm.string() == theirs.comm.string_().decode() == "swapper/0"
    for path in (
        "pid",
        "tgid",
        "comm",
        "tasks",
        "thread.sp",
        "real_parent",
        "mm",
        "signal",
        "stack",
    ):
        expect = prog.object("init_task").member_(path.split(".")[0])
        for part in path.split(".")[1:]:
            expect = expect.member_(part)
        assert ours.member(path).address == expect.address_, path
    assert ours.sizeof() == prog.type("struct task_struct").size
    assert ours.stack.value() == theirs.stack.value_()
    assert ours.real_parent.deref().address == theirs.real_parent.value_()


def test_task_list_matches_drgn(pair):
    from drgn.helpers.linux.list import list_for_each_entry as drgn_entries

    dump, prog = pair
    head = dump.object("init_task").tasks.address_of()
    ours = [
        (t.pid.value(), t.comm.string())
        for t in list_for_each_entry("struct task_struct", head, "tasks")
    ]
    theirs = [
        (t.pid.value_(), t.comm.string_().decode())
        for t in drgn_entries("struct task_struct", prog["init_task"].tasks.address_of_(), "tasks")
    ]
    assert ours == theirs and len(ours) > 10


def test_per_cpu_runqueues_match_drgn(pair):
    from drgn.helpers.linux.percpu import per_cpu

    dump, prog = pair
    for cpu in range(dump.kernel.nr_cpus):
        rq = per_cpu_ptr(dump.object("runqueues"), cpu)
        theirs = per_cpu(prog["runqueues"], cpu)
        assert rq.address == theirs.address_
        assert rq.curr.pid.value() == theirs.curr.pid.value_()
        assert rq.nr_running.value() == theirs.nr_running.value_()


def test_jiffies_and_cast_match_drgn(pair):
    dump, prog = pair
    assert dump.object("jiffies").value() == prog["jiffies"].value_()
    addr = prog["init_task"].address_
    task = dump.cast("struct task_struct *", addr)
    assert task.deref().comm.string() == "swapper/0"
    assert container_of(task.tasks.address_of(), "struct task_struct", "tasks").value() == addr


def test_rbtree_matches_drgn(pair):
    from drgn.helpers.linux.rbtree import rbtree_inorder_for_each

    dump, prog = pair
    root = dump.cast("struct rb_root", dump.resolve_symbol("vmap_area_root"))
    ours = list(rbtree_inorder(root))
    theirs = [n.value_() for n in rbtree_inorder_for_each(prog["vmap_area_root"].address_of_())]
    assert ours == theirs and len(ours) > 10


def test_xarray_matches_drgn_idr(pair):
    from drgn.helpers.linux.idr import idr_for_each

    dump, prog = pair
    xa = dump.object("init_pid_ns").idr.idr_rt
    ours = [(i, e) for i, e in xa_for_each(xa)]
    theirs = [(i, e.value_()) for i, e in idr_for_each(prog["init_pid_ns"].idr.address_of_())]
    assert ours == theirs and len(ours) > 10


def test_hlist_of_a_pid_matches_drgn(pair):
    from drgn.helpers.linux.list import hlist_for_each_entry as drgn_hlist

    dump, prog = pair
    pid = dump.object("init_task").tasks.next  # init's list node
    init = container_of(pid, "struct task_struct", "tasks").deref()
    head = init.thread_pid.tasks[0]
    ours = [t.value() for t in hlist_for_each_entry("struct task_struct", head, "pid_links[0]")]
    theirs_init = prog.object("init_task").tasks.next
    from drgn import container_of as drgn_container_of

    t = drgn_container_of(theirs_init, "struct task_struct", "tasks")
    theirs = [
        e.value_()
        for e in drgn_hlist(
            "struct task_struct", t.thread_pid.tasks[0].address_of_(), "pid_links[0]"
        )
    ]
    assert ours == theirs == [init.address]


def test_a_looping_list_is_a_walk_error(samples):
    """A task list whose third node points back at the second: WalkError, no hang."""
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    head = dump.object("init_task").tasks.address
    first = dump.read_ptr(head)
    second = dump.read_ptr(first)
    looped = patched_dump(samples, {second: word(first)})
    with pytest.raises(WalkError, match="loops"):
        list(
            list_for_each_entry(
                "struct task_struct", looped.object("init_task").tasks.address_of(), "tasks"
            )
        )


@pytest.mark.fast
def test_committed_dump_tasks_without_vmlinux():
    """The committed dump (BTF, kallsyms): the task list read through typed
    objects holds every process of the manifest with its comm."""
    manifest = json.loads((COMMITTED / "manifest.json").read_text())
    dump = kvmcore.open(str(COMMITTED / "vmcore.mdf-d31-c"))
    head = dump.object("init_task").tasks.address_of()
    pids = {
        t.pid.value(): t.comm.string()
        for t in list_for_each_entry("struct task_struct", head, "tasks")
    }
    for proc in manifest["processes"]:
        assert pids.get(proc["pid"]) == proc["comm"], proc


@pytest.mark.fast
def test_bad_names_are_one_line_errors():
    dump = kvmcore.open(str(COMMITTED / "vmcore.mdf-d31-c"))
    for bad in (
        lambda: dump.object("no_such_symbol_x"),
        lambda: dump.object("init_task").no_such_member,
        lambda: dump.cast("struct no_such_struct", 0),
        lambda: dump.object("init_task").pid.deref(),
    ):
        with pytest.raises(KvmcoreError) as info:
            bad()
        assert "\n" not in str(info.value)


def test_read_once_objects_read_as_drgn(pair):
    """read_() reads a struct in one go and its members' values come from those
    bytes: for every task, pid, tgid, comm, the thread's sp, a bitfield-free
    nested member and the list pointers are drgn's values."""
    from drgn.helpers.linux.pid import for_each_task

    dump, prog = pair
    checked = 0
    for theirs in for_each_task(prog):
        ours = dump.cast("struct task_struct *", theirs.value_()).deref().read_()
        assert ours.pid.value() == theirs.pid.value_()
        assert ours.tgid.value() == theirs.tgid.value_()
        assert ours.comm.string() == theirs.comm.string_().decode()
        assert ours.member("thread.sp").value() == theirs.thread.sp.value_()
        assert ours.tasks.next.value() == theirs.tasks.next.value_()
        assert ours.real_parent.deref().pid.value() == theirs.real_parent.pid.value_()
        checked += 1
    assert checked == len([t for t in dump.kernel.tasks() if not t.is_idle]) > 20
