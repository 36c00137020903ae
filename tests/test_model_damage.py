"""Damaged kernel data: a real dump whose memory is patched, in the reader only
(the file is never touched), to hold a looping task list, a pointer into
unmapped memory, or impossible log-buffer indexes. Every walk stays bounded,
says where it stopped, and marks what it returns as partial."""

from __future__ import annotations

import pytest
from patching import patched_dump, word

import kvmcore
import kvmcore.commands
import kvmcore.report
from kvmcore.errors import UnsupportedError


def patched_words(samples, patches: dict[int, int]) -> kvmcore.Dump:
    """The x86_64 KASLR dump with pointer-sized values replaced at these addresses."""
    return patched_dump(samples, {va: word(v) for va, v in patches.items()})


@pytest.fixture(scope="module")
def layout(samples):
    """Task addresses and offsets from the undamaged dump."""
    s = samples.get_built("x86_64-kaslr")
    dump = kvmcore.open(str(s.file("elf")))
    tasks = {t.comm: t for t in dump.kernel.tasks() if t.pid == t.tgid}
    return {
        "tasks": {c: t.address for c, t in tasks.items()},
        "off_tasks": dump.types.offsetof("struct task_struct", "tasks"),
        "manifest": s.manifest,
        "count": len(dump.kernel.tasks()),
    }


def test_task_list_that_loops(samples, layout):
    off = layout["off_tasks"]
    victim, target = layout["tasks"]["sleeper_b"], layout["tasks"]["init"]
    dump = patched_words(samples, {victim + off: target + off})  # sleeper_b -> init: a cycle
    result = dump.kernel.task_list
    assert result.partial
    assert "loops" in result.problem and f"{target + off:#x}" in result.problem
    comms = {t.comm for t in result.tasks}
    assert {"init", "sleeper_a", "sleeper_b"} <= comms
    assert len(result.tasks) < layout["count"]


def test_pointer_into_unmapped_memory(samples, layout):
    off = layout["off_tasks"]
    victim = layout["tasks"]["sleeper_b"]
    dump = patched_words(samples, {victim + off: 0xFFFFDEAD00000000})
    result = dump.kernel.task_list
    assert result.partial and "0xffffdead00000000" in result.problem
    assert "sleeper_b" in {t.comm for t in result.tasks}
    ps = kvmcore.commands.PS.run(dump)
    assert ps.splitlines()[-1].startswith("(partial: task list walk stopped after")


def test_log_with_impossible_indexes(samples):
    s = samples.get_built("x86_64-kaslr")
    dump = kvmcore.open(str(s.file("elf")))
    info = dump.vmcoreinfo
    prb = dump.read_ptr(info.symbol("prb"))
    ring = prb + info.offset("printk_ringbuffer", "desc_ring")
    head = ring + info.offset("prb_desc_ring", "head_id")
    tail = ring + info.offset("prb_desc_ring", "tail_id")
    tail_id = dump.read_ptr(tail)
    # head_id behind tail_id: the walk from tail can never reach it
    damaged = patched_words(samples, {head: tail_id - 2})
    log = damaged.kernel.kernel_log
    assert log.partial and "never reached head_id" in log.problem
    assert s.manifest["marker"] in [r.text for r in log.records]  # what was there still is
    count_bits = ring + info.offset("prb_desc_ring", "count_bits")
    broken = patched_words(samples, {count_bits: 77})
    with pytest.raises(UnsupportedError, match="impossible count_bits 77"):
        _ = broken.kernel.kernel_log
    report = kvmcore.report.build_report(broken)
    assert report["log"] == {
        "available": False,
        "reason": "printk ring buffer: impossible count_bits 77",
    }
    assert report["headline"]["available"]  # the rest of the report still comes out
