"""The read-throughput workload, shared by the kvmcore and drgn workers so both
read exactly the same kernel-virtual addresses in the same order.

Window: 64 MiB of the x86_64 direct map starting at physical 16 MiB (inside
every sample's RAM).  Sequential: 64 KiB reads front to back.  Random: 4 KiB
reads at page-aligned offsets drawn from a fixed seed.  A read that faults
(page filtered out by makedumpfile) is retried page by page and the faulting
pages are counted, so filtered dumps get the same treatment in both tools.
A tool whose API reads a chunk with its filtered pages as zeros and says
which they were (kvmcore's `read(..., zero_excluded=True, excluded=spans)`)
passes that as `read_filled` instead: one call per chunk, same count."""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable

WINDOW_PA = 16 << 20
WINDOW_BYTES = 64 << 20
CHUNK = 64 << 10
PAGE = 4096
RANDOM_READS = 4096
SEED = 8


def random_offsets() -> list[int]:
    rng = random.Random(SEED)
    pages = WINDOW_BYTES // PAGE
    return [rng.randrange(pages) * PAGE for _ in range(RANDOM_READS)]


def _read_chunk(
    read: Callable[[int, int], bytes], faults: tuple, va: int, size: int
) -> tuple[int, int]:
    """(bytes read, pages faulted) for one chunk, page by page after a fault."""
    try:
        return len(read(va, size)), 0
    except faults:
        got = bad = 0
        for off in range(0, size, PAGE):
            try:
                got += len(read(va + off, PAGE))
            except faults:
                bad += 1
        return got, bad


def run(
    mode: str,
    read: Callable[[int, int], bytes],
    faults: tuple,
    direct_map: int,
    read_filled: Callable[[int, int], tuple[bytes, int]] | None = None,
) -> dict:
    """Time the `mode` loop ('seq' or 'rand'); the result is printed as a BENCH line.
    With `read_filled(va, size) -> (bytes, filtered pages)`, bytes read counts
    only the pages not filtered, as the retry loop's does."""

    def chunk(va: int, size: int) -> tuple[int, int]:
        if read_filled is None:
            return _read_chunk(read, faults, va, size)
        try:
            data, filtered = read_filled(va, size)
        except faults:
            return _read_chunk(read, faults, va, size)  # not in the dump at all
        return len(data) - filtered * PAGE, filtered

    base = direct_map + WINDOW_PA
    total = bad = 0
    t0 = time.perf_counter()
    if mode == "seq":
        for off in range(0, WINDOW_BYTES, CHUNK):
            got, b = chunk(base + off, CHUNK)
            total += got
            bad += b
    elif mode == "rand":
        for off in random_offsets():
            got, b = chunk(base + off, PAGE)
            total += got
            bad += b
    else:
        raise ValueError(f"unknown read mode {mode!r}")
    seconds = time.perf_counter() - t0
    return {"loop_seconds": seconds, "bytes": total, "faulted_pages": bad}


def emit(result: dict) -> None:
    print("BENCH " + json.dumps(result), flush=True)
