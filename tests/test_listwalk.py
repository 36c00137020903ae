"""The task walk's loop in C (kvmcore._listwalk, issue 18) against the
pure-Python walk it stands in for, on real dumps: the same tasks from both;
the members it reads equal to those read through the address space's layers;
and on damaged lists the same stop and the same message. The damage is
written into a copy of a real dump's file (in the test's temporary
directory, never the dump), because the C loop reads the file itself: the
reader-only patching of tests/patching.py turns it off."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from manifest_checks import assert_tasks_match_manifest

import kvmcore
from kvmcore.errors import KvmcoreError
from kvmcore.linux import tasks as tasks_mod

BUILD_HINT = (
    "kvmcore._listwalk (kvmcore/_listwalk.c) is not built: install a C compiler and "
    "Python's headers (apt-get install gcc python3-dev) and reinstall kvmcore "
    "(pip install -e .), or run ./dev.sh test, which does both"
)
SID = "x86_64-nokaslr"
#: the ELF dumps, whose stretches of memory the C loop reads from the file
ELF_DUMPS = [
    ("x86_64-kaslr", "elf"),
    ("x86_64-kaslr", "mdf-d31-E"),
    ("x86_64-nokaslr", "elf"),
    ("x86_64-la57", "elf"),
    ("x86_64-kdump", "proc-elf"),
    ("arm64-kaslr", "elf"),
    ("riscv64", "elf"),
    ("s390x", "elf"),
    ("ppc64le", "elf"),
]


def listwalk():
    """The built module; the test fails saying how to build it."""
    if tasks_mod._listwalk is None:
        pytest.fail(BUILD_HINT, pytrace=False)
    return tasks_mod._listwalk


class Counted:
    """kvmcore._listwalk with its steps counted."""

    def __init__(self, module) -> None:
        self.module = module
        self.steps = 0

    def walk_spans(self, *args):
        node, steps = self.module.walk_spans(*args)
        self.steps += steps
        return node, steps

    def build_task_records(self, *args):
        return self.module.build_task_records(*args)


def outcome(path: Path, in_c: bool, monkeypatch, vmlinux: Path | None = None) -> tuple:
    """What the task walk of `path` gives, with the loop in C or without:
    each task's fields, and whether and why it stopped; or the error."""
    counted = Counted(listwalk())
    monkeypatch.setattr(tasks_mod, "_listwalk", counted if in_c else None)
    try:
        dump = kvmcore.open(str(path), str(vmlinux) if vmlinux else None, allow_truncated=True)
        result = dump.kernel.task_list
    except KvmcoreError as exc:
        return ("error", type(exc).__name__, str(exc)), counted.steps
    finally:
        monkeypatch.undo()
    rows = [
        (t.address, t.pid, t.tgid, t.ppid, t.comm, t.state, t.cpu, t.on_cpu, t.is_idle)
        for t in result.tasks
    ]
    return ("tasks", rows, result.partial, result.problem), counted.steps


def test_the_c_loop_is_built():
    assert listwalk().walk_spans.__doc__


@pytest.mark.parametrize("sid,fmt", ELF_DUMPS)
def test_c_and_python_walks_give_the_same_tasks(samples, sid, fmt, monkeypatch):
    path = samples.get_built(sid).file(fmt)
    in_c, _ = outcome(path, True, monkeypatch)
    in_python, steps = outcome(path, False, monkeypatch)
    assert steps == 0
    assert in_c == in_python
    dump = kvmcore.open(str(path))
    assert_tasks_match_manifest(dump.kernel.task_list, samples.get_built(sid).manifest)


def test_c_and_python_walks_give_the_same_tasks_of_a_32_bit_kernel(samples, monkeypatch):
    """i386 with PAE: 32-bit pointers, 2 MiB pages; types from the -dbg vmlinux."""
    sid = "i386-pae"
    path, vmlinux = samples.get_built(sid).file("elf"), samples.vmlinux(sid)
    in_c, steps = outcome(path, True, monkeypatch, vmlinux)
    assert in_c == outcome(path, False, monkeypatch, vmlinux)[0]
    assert steps > 0, "no task of this i386-pae build lies in a large page"
    dump = kvmcore.open(str(path), str(vmlinux))
    assert_tasks_match_manifest(dump.kernel.task_list, samples.get_built(sid).manifest)


def walk_spans(dump, reader, node, *, head=0, limit=10, seen=None, locate=None, fd=None):
    """kvmcore._listwalk.walk_spans on init_task's list as the task walk calls
    it: (node stopped at, steps, task addresses, their members)."""
    lw = listwalk()
    own_fd, own_locate = dump.aspace.file_blocks()
    span = reader._span
    out: list[int] = []
    found: list[tuple] = []
    stop, steps = lw.walk_spans(
        own_fd if fd is None else fd, {}, locate or own_locate, node, head, reader.off_tasks,
        span.start, span.length, span.layout, span.NAMES.index("tasks"), dump.aspace.mask,
        False, limit, set() if seen is None else seen, out, found,
    )  # fmt: skip
    return stop, steps, out, found


def readable_in_c(dump: kvmcore.Dump, reader: tasks_mod.TaskReader) -> list[int]:
    """Tasks on init_task's list whose members the C loop reads from the file:
    their whole span in 2 MiB blocks that one large page maps each and the
    ELF file holds whole (page sizes from the page tables, offsets from the
    PT_LOADs), every block right after the one before in the file."""
    span = reader._span
    block = 1 << 21
    out = []
    node = dump.read_ptr(dump.kernel.init_task + reader.off_tasks)
    for _ in range(10_000):
        task = node - reader.off_tasks
        if task == dump.kernel.init_task:
            break
        first, last = task + span.start, task + span.start + span.length - 1
        offsets = []
        for va in range(first & ~(block - 1), last + 1, block):
            t = dump.aspace.translate(va)
            run = dump.mem.file_run(t.pa, block) if t.page_size >= block else None
            offsets.append(run)
        if None not in offsets and all(b - a == block for a, b in zip(offsets, offsets[1:])):
            out.append(task)
        node = dump.read_ptr(node)
    return out


def test_the_c_loop_reads_what_the_layers_read(samples):
    """For each task it can read, walk_spans takes one step and unpacks the
    members that the Python walk's struct unpacks from the span read through
    the address space."""
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    reader = tasks_mod.TaskReader(dump, lambda task: {})
    tasks = readable_in_c(dump, reader)
    assert tasks, f"no task of this {SID} build lies in large pages: the C loop reads none"
    span = reader._span
    for task in tasks:
        stop, steps, out, found = walk_spans(dump, reader, task + reader.off_tasks, limit=1)
        layers = span.pick(span.unpack(dump.read(task + span.start, span.length)))
        assert (steps, out, found) == (1, [task], [layers])
        assert stop == layers[span.NAMES.index("tasks")]


def test_task_records_built_in_c_equal_those_built_in_python(samples):
    """build_task_records against TaskReader._record on the members walk_spans
    read: a first pass makes each record with _record where a cache has no
    entry yet (a new comm, state or parent), which fills it; a second pass,
    its caches full, makes every record in C. Both equal _record's."""
    lw = listwalk()
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    tasks = readable_in_c(dump, tasks_mod.TaskReader(dump, lambda task: {}))
    found: list[tuple] = []
    for task in tasks:
        reader = tasks_mod.TaskReader(dump, lambda task: {})
        found += walk_spans(dump, reader, task + reader.off_tasks, limit=1)[3]
    registers = dump.kernel.task_registers  # one for both: a Task compares it too
    in_python = tasks_mod.TaskReader(dump, registers)
    for task, members in zip(tasks, found):
        in_python._record(task, members)
    in_c = tasks_mod.TaskReader(dump, registers)
    by_python: list[int] = []

    def fallback(address: int, members: tuple) -> tuple:
        by_python.append(address)
        return in_c._record(address, members)

    for fresh in (True, False):
        in_c._records.clear()
        by_python.clear()
        lw.build_task_records(
            tasks, found, tasks_mod.Task, registers, in_c._comms, in_c._states, in_c._tgids,
            in_c._records, fallback,
        )  # fmt: skip
        assert in_c._records == in_python._records
        assert by_python if fresh else not by_python


def test_task_records_refuse_what_is_not_a_tasks_members():
    lw = listwalk()
    args = (tasks_mod.Task, None, {}, {}, {}, {}, lambda a, m: None)
    with pytest.raises(ValueError):
        lw.build_task_records([1], [], *args)
    with pytest.raises(ValueError):
        lw.build_task_records([1], [(1, 2, 3)], *args)


def test_the_c_loop_stops_at_a_node_met_before_the_head_and_the_limit(samples):
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    reader = tasks_mod.TaskReader(dump, lambda task: {})
    node = readable_in_c(dump, reader)[0] + reader.off_tasks
    assert walk_spans(dump, reader, node, seen={node}) == (node, 0, [], [])
    assert walk_spans(dump, reader, node, head=node) == (node, 0, [], [])
    assert walk_spans(dump, reader, node, limit=0) == (node, 0, [], [])


def test_the_c_loop_stops_where_the_file_ends(samples):
    """A block the file was to hold but that runs past its end (a dump cut
    short, or one shrinking under the reader): the short read stops the loop
    with no step taken, for the Python walk to read the task and say why."""
    path = samples.get_built(SID).file("elf")
    dump = kvmcore.open(str(path))
    reader = tasks_mod.TaskReader(dump, lambda task: {})
    task = readable_in_c(dump, reader)[0]
    within = (task + reader._span.start) & ((1 << 21) - 1)
    size = path.stat().st_size

    def past_the_end(block_va: int) -> int:  # the span's first 16 bytes are the file's last
        return size - within - 16

    node = task + reader.off_tasks
    with open(path, "rb") as f:
        assert walk_spans(dump, reader, node, locate=past_the_end, fd=f.fileno()) == (
            node,
            0,
            [],
            [],
        )


def test_the_c_loop_refuses_a_layout_that_does_not_fit(samples):
    """Fields outside the span (one so long that offset + size overflows), a
    next field that is not an unsigned number, a field that is not a tuple,
    a locate() that answers something else than an int."""
    lw = listwalk()
    bad = [
        (((0, 8, 0),), 1, ValueError),
        (((4090, 8, 0),), 0, ValueError),
        (((1, 2**63 - 1, 2), (0, 8, 0)), 1, ValueError),
        (((0, 16, 2),), 0, ValueError),
        (((0, 4, 1),), 0, ValueError),
        (([0, 8, 0],), 0, TypeError),
    ]
    with open(samples.get_built(SID).file("elf"), "rb") as f:
        for layout, field, error in bad:
            with pytest.raises(error):
                lw.walk_spans(
                    f.fileno(), {}, lambda va: -1, 1, 2, 0, 0, 4096, layout, field,
                    2**64 - 1, False, 10, set(), [], [],
                )  # fmt: skip
        with pytest.raises(TypeError):
            lw.walk_spans(
                f.fileno(), {}, lambda va: "0", 1, 2, 0, 0, 4096, ((0, 8, 0),), 0,
                2**64 - 1, False, 10, set(), [], [],
            )  # fmt: skip


def test_pure_python_env_turns_the_c_loop_off(samples, monkeypatch):
    listwalk()
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    assert tasks_mod.TaskReader(dump, lambda task: {})._in_c is not None
    monkeypatch.setenv(tasks_mod.PURE_PYTHON_ENV, "1")
    assert tasks_mod.TaskReader(dump, lambda task: {})._in_c is None


# -- damaged lists, in a copy of the dump's file ------------------------------


@pytest.fixture(scope="module")
def damage_site(samples):
    """Two tasks the C loop reads, A then B on init_task's list (the pair whose
    B lies furthest into the file); with the file offsets of A's tasks.next
    and of B's span, and an earlier leader's list node."""
    path = samples.get_built(SID).file("elf")
    dump = kvmcore.open(str(path))
    reader = tasks_mod.TaskReader(dump, lambda task: {})
    readable = readable_in_c(dump, reader)
    span_at = {t: dump.translate(t + reader._span.start).file_offset for t in readable}
    pairs = [
        (a, b)
        for a, b in zip(readable, readable[1:])
        if dump.read_ptr(a + reader.off_tasks) == b + reader.off_tasks
    ]
    assert pairs, f"no two tasks of this {SID} build follow each other in large pages"
    a, b = max(pairs, key=lambda pair: span_at[pair[1]])
    leaders = [t.address for t in dump.kernel.task_list.tasks if t.pid == t.tgid and not t.is_idle]
    earlier = next(t for t in leaders if t != a)  # init (pid 1), walked before A
    assert leaders.index(earlier) < leaders.index(a)
    return {
        "path": path,
        "earlier": earlier + reader.off_tasks,
        "a_next_at": dump.translate(a + reader.off_tasks).file_offset,
        "b_span_at": span_at[b],
    }


def damaged_copy(site: dict, tmp_path: Path, at: int | None = None, value: bytes = b"") -> Path:
    """A copy of the dump's file, with `value` written at offset `at`."""
    copy = tmp_path / "vmcore.elf"
    shutil.copyfile(site["path"], copy)
    copy.chmod(0o600)
    if at is not None:
        with open(copy, "r+b") as f:
            f.seek(at)
            f.write(value)
    return copy


def assert_same_damage(copy: Path, monkeypatch, expect: str) -> None:
    in_c, steps = outcome(copy, True, monkeypatch)
    in_python, _ = outcome(copy, False, monkeypatch)
    assert steps > 0, "the C loop took no step before the damage"
    assert in_c == in_python
    assert expect in repr(in_c)


def test_a_list_looping_back_stops_both_walks_alike(damage_site, tmp_path, monkeypatch):
    earlier = damage_site["earlier"].to_bytes(8, "little")
    copy = damaged_copy(damage_site, tmp_path, damage_site["a_next_at"], earlier)
    assert_same_damage(copy, monkeypatch, f"loops back to {damage_site['earlier']:#x}")


def test_a_wild_pointer_stops_both_walks_alike(damage_site, tmp_path, monkeypatch):
    wild = 0xDEAD000000000100  # LIST_POISON1, where list_del leaves .next
    copy = damaged_copy(damage_site, tmp_path, damage_site["a_next_at"], wild.to_bytes(8, "little"))
    assert_same_damage(copy, monkeypatch, "task list walk stopped")


def test_the_c_loop_reads_big_endian_members(tmp_path):
    """Members of a big-endian kernel (s390x; no sample's tasks lie in large
    pages there, so this is a generated file, not a dump): two structures on
    a ring through a head, a negative signed member, a pointer, a name."""
    lw = listwalk()
    link, head = 16, 0x8000
    layout = ((0, 4, 1), (link, 8, 0), (32, 16, 2))  # pid (signed), the link's .next, comm
    data = bytearray(0x4000)
    for at, pid, name, nxt in [(0x1000, -2, b"first", 0x3000 + link), (0x3000, 7, b"second", head)]:
        data[at : at + 4] = pid.to_bytes(4, "big", signed=True)
        data[at + link : at + link + 8] = nxt.to_bytes(8, "big")
        data[at + 32 : at + 32 + len(name)] = name
    path = tmp_path / "ring"
    path.write_bytes(bytes(data))
    out: list[int] = []
    found: list[tuple] = []
    with open(path, "rb") as f:
        stop = lw.walk_spans(
            f.fileno(), {}, lambda block_va: 0, 0x1000 + link, head, link, 0, 48, layout, 1,
            2**64 - 1, True, 10, set(), out, found,
        )  # fmt: skip
    assert stop == (head, 2)
    assert out == [0x1000, 0x3000]
    assert found == [
        (-2, 0x3000 + link, b"first".ljust(16, b"\0")),
        (7, head, b"second".ljust(16, b"\0")),
    ]
