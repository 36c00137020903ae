"""Task lists patched into a chain (issue 12 §4.5): every thread-group leader's
thread list made to run through every other leader. The walk of all the lists
must do work linear in the number of tasks (one step budget and one seen-set
shared by every list), not a fresh bounded walk per group: counted in pointer
reads, never timed."""

from __future__ import annotations

import pytest
from patching import patched_dump, word

import kvmcore
from kvmcore.linux import tasks as tasks_mod

SID = "x86_64-kaslr"


@pytest.fixture(scope="module")
def chain(samples):
    """Leaders found by walking init_task.tasks here, with the dump's raw reads
    and the struct offsets (not through walk_tasks)."""
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    t = dump.types
    off_tasks = t.offsetof("struct task_struct", "tasks")
    init = dump.kernel.init_task
    leaders, node = [], dump.read_ptr(init + off_tasks)
    while node != init + off_tasks and len(leaders) < 10_000:
        leaders.append(node - off_tasks)
        node = dump.read_ptr(node)
    # signal->thread_head + task->thread_node since 6.7 (and Debian's 6.1.19x),
    # task->thread_group (a ring through the leader) before
    new = t.has_member("struct signal_struct", "thread_head")
    link = t.offsetof("struct task_struct", "thread_node" if new else "thread_group")
    return {"leaders": leaders, "link": link, "manifest": samples.get_built(SID).manifest}


def _chained(samples, chain) -> kvmcore.Dump:
    link, leaders = chain["link"], chain["leaders"]
    # leader i's thread link .next -> leader i+1's, the last back to the first:
    # every group's thread list now runs through the whole chain of leaders
    patches = {a + link: word(b + link) for a, b in zip(leaders, leaders[1:] + leaders[:1])}
    return patched_dump(samples, patches, SID)


def _counting(dump: kvmcore.Dump) -> list[int]:
    """Reads of the dump's memory by the task walk, counted where each of
    them ends (a pointer, or a task's members in one read): at the physical
    layer, below the page tables, whose reads are not counted. What the walk
    starts from (symbols, types, each CPU's runqueue) is read first."""
    kernel = dump.kernel
    kernel.init_task, kernel.runqueue_tasks  # noqa: B018 (read before counting)
    calls = [0]
    read_phys = dump.mem.read_phys

    def counted(pa: int, length: int) -> bytes:
        calls[0] += 1
        return read_phys(pa, length)

    dump.mem.read_phys = counted
    return calls


def test_chained_thread_lists_are_walked_in_linear_steps(samples, chain):
    n = len(chain["leaders"])
    assert n >= 20, "enough leaders for a quadratic walk to show"
    dump = _chained(samples, chain)
    calls = _counting(dump)
    result = dump.kernel.task_list
    # the leader list (n + 1 reads: each leader's members come with its link),
    # each group's head (n), the chain's nodes (read already with the leaders,
    # or one read each), plus slack; a walk per group would be n * n
    assert calls[0] <= 4 * n + 64, f"{calls[0]} reads for {n} leaders"
    assert result.partial and "thread list" in result.problem
    comms = {t.comm for t in result.tasks}
    assert {p["comm"] for p in chain["manifest"]["processes"]} <= comms


def test_one_step_budget_for_the_whole_walk(samples, chain, monkeypatch):
    monkeypatch.setattr(tasks_mod, "MAX_WALK_STEPS", 30)
    dump = _chained(samples, chain)
    calls = _counting(dump)
    result = dump.kernel.task_list
    assert result.partial and "after 30 list steps" in result.problem
    # a read per list step (a task's members come with it), then init_task,
    # the idle tasks and a few parents' tgids
    assert calls[0] <= 30 + 8, f"{calls[0]} reads"


def test_undamaged_walk_is_complete(samples, chain):
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    result = dump.kernel.task_list
    assert not result.partial, result.problem
    leaders = {t.address for t in result.tasks if t.pid == t.tgid and not t.is_idle}
    assert set(chain["leaders"]) <= leaders


def _victim_and_head(samples, chain) -> tuple[int, int, int, int]:
    """(first leader, a leader of a group of one, its group's head, the
    thread link's offset), read here with raw reads."""
    dump = kvmcore.open(str(samples.get_built(SID).file("elf")))
    t = dump.types
    assert t.has_member("struct signal_struct", "thread_head"), (
        f"{SID} should have signal->thread_head (Debian's 6.1 has it)"
    )
    leaders, link = chain["leaders"], chain["link"]
    first, victim = leaders[0], leaders[len(leaders) // 2]
    head = dump.read_ptr(victim + t.offsetof("struct task_struct", "signal")) + t.offsetof(
        "struct signal_struct", "thread_head"
    )
    assert dump.read_ptr(victim + link) == head, "the victim leads a group of one"
    assert dump.read_ptr(victim + link + 8) == head, "... by both of its links"
    return first, victim, head, link


def test_group_head_that_disagrees_with_its_leader(samples, chain):
    """A leader whose thread link's .next points at its group's head but whose
    .prev does not, while the head points elsewhere (at an earlier leader's
    link), is walked from the head, as every group whose leader's links do
    not agree is: the walk meets a node already seen and says so."""
    first, victim, head, link = _victim_and_head(samples, chain)
    patches = {head: word(first + link), victim + link + 8: word(first + link)}
    result = patched_dump(samples, patches, SID).kernel.task_list
    assert result.partial
    assert f"thread list of task {victim:#x}" in result.problem and "loops back" in result.problem
    assert victim in {task.address for task in result.tasks}


def test_group_of_one_is_read_from_its_leaders_links(samples, chain):
    """A leader whose thread link's .next and .prev both point at its group's
    head is a group of one, as /proc/PID/task's walk from the leader (next_tid)
    finds it, without a read of the head: a head damaged alone is not seen
    (the walk of 10,000 tasks reads no head)."""
    first, victim, head, link = _victim_and_head(samples, chain)
    result = patched_dump(samples, {head: word(first + link)}, SID).kernel.task_list
    assert not result.partial, result.problem
    listed = [task.address for task in result.tasks]
    assert listed.count(victim) == 1 and listed.count(first) == 1
