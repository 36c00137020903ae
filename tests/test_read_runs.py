"""Reads of many pages in one step, on every architecture's real dump.

kvmcore reads a kernel-virtual range as physically contiguous runs (the
translator's `run`: RadixTranslator answers from its cache, a 4 KiB-page
stretch from the last-level table it already read). These tests hold it to
the slow path it replaces: one translation and one physical read per page.
The x86_64 direct map is also checked against drgn's reads, page for page, in
tests/test_kdump_formats.py (test_zero_filled_reads_list_the_filtered_pages)."""

from __future__ import annotations

import itertools
import random

import pytest
from conftest import sample_ids
from patching import excluded_dump

import kvmcore
from kvmcore.errors import KvmcoreError, PageExcludedError

PAGE = 4096


def _page_by_page(dump: kvmcore.Dump, va: int, length: int) -> bytes:
    """The range read one 4 KiB page at a time: translate, then read physical."""
    out = bytearray()
    while length > 0:
        n = min(length, PAGE - (va & (PAGE - 1)))
        out += dump.read_phys(dump.translate(va).pa, n)
        va += n
        length -= n
    return bytes(out)


def _mapped_ranges(dump: kvmcore.Dump, limit: int = 400) -> list:
    """The first kernel mappings the page-table walk finds (coalesced runs of
    virtually and physically contiguous pages), at most `limit`, of memory the
    dump holds (not ioremapped device memory)."""
    held = dump.phys_ranges()
    return [
        r
        for r in itertools.islice(dump.walk_pages(), limit)
        if any(h.start <= r.pa and r.pa + r.size <= h.end for h in held)
    ]


@pytest.mark.parametrize("sid", sample_ids(has_format="elf"))
def test_runs_read_as_page_by_page(samples, sid):
    """Within a mapped run and across the boundary of two runs (physically
    apart, or a hole between them), a read of up to 64 KiB equals the page by
    page read; `run` says how far a range is physically contiguous, no
    further and (within what it has seen) no shorter."""
    dump = kvmcore.open(str(samples.get_built(sid).file("elf")))
    ranges = _mapped_ranges(dump)
    assert ranges, f"{sid}: the page-table walk found no kernel mapping"
    rng = random.Random(sid)
    small = [r for r in ranges if r.page_size == PAGE and r.size >= 4 * PAGE]
    small = small or ranges  # ppc64le maps with 64 KiB pages: none of 4 KiB
    picks = rng.sample(ranges, min(25, len(ranges))) + rng.sample(small, min(25, len(small)))
    translator = dump.aspace.translator
    checked = faults = 0
    for r in picks:
        for _ in range(max(4, 200 // len(picks))):
            size = rng.choice((8, PAGE, 0x10000, 0x6A38))
            at = r.va + rng.randrange(0, max(1, r.size - 8)) & ~7
            # clamp to the run, or else cross into the next one on purpose
            if rng.random() < 0.5:
                size = max(1, min(size, r.va + r.size - at))
            try:
                expected = _page_by_page(dump, at, size)
            except KvmcoreError:
                expected = None  # a page past the run is unmapped or not in the dump
            if expected is None:
                with pytest.raises(KvmcoreError):
                    dump.read(at, size)
                faults += 1
                continue
            assert dump.read(at, size) == expected, f"{sid}: {at:#x}+{size:#x}"
            pa, n = translator.run(at, size)
            assert pa == dump.translate(at).pa and 0 < n <= size
            contiguous = 0  # what a page-by-page walk finds contiguous from `at`
            while contiguous < size:
                try:
                    nxt = dump.translate(at + contiguous).pa
                except KvmcoreError:
                    break
                if nxt != pa + contiguous:
                    break
                contiguous += PAGE - ((at + contiguous) & (PAGE - 1))
            assert n == min(contiguous, size), f"{sid}: run({at:#x}, {size:#x}) = {n:#x}"
            checked += 1
    assert checked > 50, f"{sid}: only {checked} reads checked ({faults} faulted)"


def test_read_in_a_remembered_large_page_names_the_excluded_page(samples):
    """A read inside a 2 MiB block that a large page maps goes straight to the
    physical layer once the block is known (KernelAddressSpace's block table);
    a page of it the dump lacks still fails naming that page, not the start
    of the read."""
    sid = "x86_64-kaslr"
    intact = kvmcore.open(str(samples.get_built(sid).file("elf")))
    task = next(
        t for t in intact.kernel.task_list.tasks if intact.translate(t.address).page_size >= 2 << 20
    )
    block = task.address & ~((2 << 20) - 1)
    # a page in the middle of the block, not the task's
    gone = block + (0x100000 if task.address - block >= 0x100000 + PAGE else 0x180000)
    dump = excluded_dump(samples, [(gone, 8)], sid)
    assert dump.read(task.address, 16) == intact.read(task.address, 16)  # the block is known now
    with pytest.raises(PageExcludedError) as err:
        dump.read(gone - 8, 32)
    assert err.value.address == gone, f"{err.value.address:#x} != {gone:#x}"
    assert dump.read(gone + PAGE, 64) == intact.read(gone + PAGE, 64)
