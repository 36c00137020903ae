"""Scale series: kvmcore's cost as guest memory and task count grow.

Dumps are built on demand (QEMU guests via sample_dumps, ELF only) and cached
under $CACHE/scale/<ID>/, apart from the test samples."""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass, field

from . import tools
from .measure import Measurement, measure_in_turn

MEMORY_SERIES = [(256, 0), (1024, 0), (4096, 0), (16384, 0)]  # (guest MB, extra tasks)
TASK_SERIES = [(2048, 100), (2048, 1000), (2048, 10000)]  # 10k processes need ~1 GB of guest RAM
SCALE_TASKS = ("info", "ps", "dmesg", "bt", "analyze", "seq")


@dataclass
class ScalePoint:
    id: str
    memory_mb: int
    extra_tasks: int
    build_seconds: float | None = None
    dump_bytes: int | None = None
    tasks_listed: int | None = None
    results: dict[str, Measurement] = field(default_factory=dict)
    error: str | None = None


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def ensure_built(memory_mb: int, extra_tasks: int, build: bool = True) -> ScalePoint:
    from sample_dumps import cache_root
    from sample_dumps.build import build_sample
    from sample_dumps.manifest import load
    from sample_dumps.table import scale_spec

    spec = scale_spec(memory_mb, extra_tasks)
    point = ScalePoint(spec.id, memory_mb, extra_tasks)
    cache = cache_root()
    sdir = cache / spec.cache_subdir / spec.id
    if not (sdir / "vmcore.elf").exists():
        if not build:
            point.error = "not built (--scale-built-only)"
            return point
        free = shutil.disk_usage(cache).free
        if free < (memory_mb << 20) * 1.5:
            point.error = (
                f"not built: {free >> 20} MB free under {cache}, "
                f"a {memory_mb} MB guest needs ~{memory_mb * 3 // 2} MB"
            )
            return point
    try:
        _say(f"  {spec.id}: build (cached after the first time)")
        build_sample(spec, cache)
    except Exception as exc:  # a failed build is reported in the table, the series goes on
        point.error = f"build failed: {exc}".splitlines()[0]
        return point
    m = load(sdir)
    point.build_seconds = m["build"]["seconds"]
    point.dump_bytes = m["files"]["elf"]["size"]
    return point


def measure_series(points: list[ScalePoint], runs: int) -> None:
    """Each task on the series' dumps, their runs taken in turn
    (measure_in_turn), so that the growth ratios compare like with like."""
    from sample_dumps import cache_root

    points = [p for p in points if p.error is None]
    for task in SCALE_TASKS:
        _say(f"  {task}: " + ", ".join(p.id for p in points))
        command = tools.kvmcore_read_cmd if task == "seq" else tools.kvmcore_cmd
        jobs = [
            ("kvmcore", command(task, cache_root() / "scale" / p.id / "vmcore.elf")) for p in points
        ]
        for p, m in zip(points, measure_in_turn(jobs, runs)):
            p.results[task] = m
            if task == "ps" and m.ok:
                p.tasks_listed = sum(
                    1 for line in m.runs[0].stdout.splitlines()[1:] if line.strip()
                )


def run_scale(
    runs: int, series: list[tuple[int, int]] | None = None, build: bool = True
) -> list[ScalePoint]:
    """The memory series and the task series (or `series`), each built as
    needed and then measured with its dumps' runs taken in turn."""
    points = []
    for group in [series] if series else [MEMORY_SERIES, TASK_SERIES]:
        built = [ensure_built(memory_mb, extra, build) for memory_mb, extra in group]
        measure_series(built, runs)
        points += built
    return points


def _value(point: ScalePoint, task: str) -> float | None:
    m = point.results.get(task)
    if m is None or not m.ok:
        return None
    return m.median("loop_seconds" if task == "seq" else "seconds")


def scale_table(points: list[ScalePoint], title: str) -> list[str]:
    """Markdown: one row per dump, each figure with its growth over the series' first row."""
    head = (
        ["dump", "guest", "extra tasks", "tasks listed", "dump size", "build"]
        + [f"{t} (x first)" if t != "seq" else "seq read 64 MB (x first)" for t in SCALE_TASKS]
        + ["peak RSS"]
    )
    lines = [f"**{title}**", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    base = next((p for p in points if p.error is None), None)
    for p in points:
        if p.error:
            lines.append(
                f"| {p.id} | {p.memory_mb} MB | {p.extra_tasks} | "
                + " | ".join(["-"] * (len(head) - 4))
                + f" | {p.error} |"
            )
            continue
        cells = [
            p.id,
            f"{p.memory_mb} MB",
            str(p.extra_tasks),
            str(p.tasks_listed or "-"),
            f"{(p.dump_bytes or 0) / (1 << 20):.0f} MB",
            f"{p.build_seconds:.0f} s",
        ]
        for t in SCALE_TASKS:
            v, b = _value(p, t), _value(base, t) if base else None
            cells.append("n/a" if v is None else f"{v:.2f} s" + (f" (x{v / b:.2f})" if b else ""))
        rss = max((m.rss_mb for m in p.results.values() if m.runs), default=0)
        cells.append(f"{rss:.0f} MB")
        lines.append("| " + " | ".join(cells) + " |")
    return lines
