"""The task walk's one read per task (kvmcore.linux.tasks: the span of
task_struct holding the members ps shows and the walk follows, unpacked with
offsets resolved once) against the full read of each task_struct
(TaskReader.read, member by member), on real dumps of both byte orders, and
the walk of the older thread list (the thread_group ring through the leader)
against the newer one (signal->thread_head) on a kernel that has both."""

from __future__ import annotations

import pytest

import kvmcore
from kvmcore.linux import tasks as tasks_mod

# little-endian x86_64 and arm64, big-endian s390x: each has BTF, so no vmlinux
SIDS = ["x86_64-kaslr", "arm64-kaslr", "s390x"]


def _fields(task: tasks_mod.Task) -> tuple:
    return (task.address, task.pid, task.tgid, task.ppid, task.comm, task.state, task.cpu)


@pytest.mark.parametrize("sid", SIDS)
def test_span_reads_agree_with_full_reads(samples, sid):
    dump = kvmcore.open(str(samples.get_built(sid).file("elf")))
    walked = dump.kernel.task_list
    assert not walked.partial, walked.problem
    reader = tasks_mod.TaskReader(dump, lambda _t: {})
    assert reader._span is not None, "the members ps reads should make one span"
    m = samples.get_built(sid).manifest
    assert {p["pid"] for p in m["processes"]} <= {t.pid for t in walked.tasks}
    for task in walked.tasks:
        full = reader.read(task.address, task.is_idle)
        assert _fields(task) == _fields(full)


def test_thread_group_ring_gives_the_same_tasks(samples, monkeypatch):
    """Debian's 6.1 has both task->thread_group (the ring older kernels link
    threads by) and signal->thread_head: hiding the second walks the first,
    and the span without the signal member."""
    path = str(samples.get_built("x86_64-kaslr").file("elf"))
    newer = kvmcore.open(path).kernel.task_list
    older_dump = kvmcore.open(path)
    types = older_dump.types
    assert types.has_member("struct task_struct", "thread_group")
    has_member = types.has_member

    def without_thread_head(type_name: str, member: str) -> bool:
        if (type_name, member) == ("struct signal_struct", "thread_head"):
            return False
        return has_member(type_name, member)

    monkeypatch.setattr(types, "has_member", without_thread_head)
    reader = tasks_mod.TaskReader(older_dump, lambda _t: {})
    assert reader.off_signal is None and reader._span is not None
    older = older_dump.kernel.task_list
    assert not older.partial, older.problem
    assert [_fields(t) for t in older.tasks] == [_fields(t) for t in newer.tasks]
    threads = [t for t in newer.tasks if t.pid != t.tgid and not t.is_idle]
    m = samples.get_built("x86_64-kaslr").manifest
    assert len(threads) >= len(m["threads"]) > 0, "the sample has threads to walk"
