"""The benchmark command runs (quick mode) and prints one ratio line per task.
No timing is asserted: figures depend on the machine and its load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from sample_dumps.catalog import load_samples

ROOT = Path(__file__).resolve().parent.parent
TASKS = [
    "commands: info",
    "commands: ps",
    "commands: dmesg",
    "commands: bt",
    "commands: analyze",
    "reads: seq elf",
    "reads: rand elf",
    "gdb: dump binary memory 64 MB",
]


def test_bench_quick_prints_a_ratio_per_task() -> None:
    sample = load_samples().get("x86_64-kaslr")
    assert sample is not None and sample.vmlinux() is not None, (
        "needs the x86_64-kaslr sample and its -dbg vmlinux: "
        "python -m sample_dumps build --only x86_64-kaslr --with-dbg"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratios = [line for line in proc.stdout.splitlines() if line.startswith("ratio ")]
    for task in TASKS:
        hits = [line for line in ratios if line.startswith(f"ratio {task}: ")]
        assert hits, f"no ratio line for {task!r} in:\n" + "\n".join(ratios)
        # every anchor measured: a number, not '-', after each '='
        for part in hits[0].split(": ")[-1].split():
            assert part.split("=")[1] != "-", (
                f"{task}: a measurement failed: {hits[0]}\n{proc.stdout}"
            )
    assert "kvmcore/drgn=" in "\n".join(ratios) and "kvmcore/gdb=" in "\n".join(ratios)


def test_bench_explore_quick_prints_a_ratio_per_command() -> None:
    """--explore-only --quick: every exploration command timed against drgn's helpers."""
    from bench.tools import EXPLORE_COMMANDS

    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--explore-only"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    ratios = [line for line in proc.stdout.splitlines() if line.startswith("ratio explore: ")]
    assert [line.split(": ")[1] for line in ratios] == list(EXPLORE_COMMANDS)
    for line in ratios:
        assert "kvmcore/drgn=-" not in line, f"a measurement failed: {line}\n{proc.stdout}"
