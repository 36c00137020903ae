"""The comparison suite: kvmcore against drgn, crash and gdb on one sample."""

from __future__ import annotations

import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import readplan, tools
from .measure import Measurement, measure

COMMAND_TASKS = ("info", "ps", "dmesg", "bt", "analyze")
READ_FORMATS = ("elf", "kdump-zlib", "mdf-d31-c", "mdf-d31-l", "mdf-d31-E")


@dataclass
class Row:
    group: str  # "commands", "reads", "gdb", "explore"
    task: str
    metric: str  # "seconds" (whole process) or "loop_seconds" (timed inside)
    kvmcore: Measurement
    anchors: dict[str, Measurement] = field(default_factory=dict)
    note: str = ""

    def ratio(self, anchor: str) -> float | None:
        a = self.anchors.get(anchor)
        if not (a and a.ok and self.kvmcore.ok):
            return None
        return self.kvmcore.median(self.metric) / a.median(self.metric)


@dataclass
class Config:
    runs: int = 3
    crash_runs: int = 1
    formats: tuple[str, ...] = READ_FORMATS
    with_crash: bool = True
    with_gdb: bool = True
    with_explore: bool = False  # --explore: the exploration commands against drgn
    explore_only: bool = False  # --explore-only: that group alone


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def command_rows(sample, cfg: Config, work: Path) -> list[Row]:
    dump, vmlinux = sample.file("elf"), sample.vmlinux()
    rows = []
    for task in COMMAND_TASKS:
        _say(f"  {task}: kvmcore")
        row = Row(
            "commands", task, "seconds", measure("kvmcore", tools.kvmcore_cmd(task, dump), cfg.runs)
        )
        _say(f"  {task}: drgn")
        row.anchors["drgn"] = measure("drgn", tools.drgn_cmd(task, dump, vmlinux), cfg.runs)
        if cfg.with_crash and cfg.crash_runs > 0:
            _say(f"  {task}: crash {' ; '.join(tools.CRASH_COMMANDS[task])}")
            row.anchors["crash"] = measure(
                "crash", tools.crash_cmd(task, dump, vmlinux, work), cfg.crash_runs
            )
        rows.append(row)
    return rows


def explore_rows(sample, cfg: Config) -> list[Row]:
    """Each exploration command, `kvmcore CMD DUMP ...` with no vmlinux, against
    bench/drgn_explore.py doing the same work through drgn's helpers."""
    dump, vmlinux = sample.file("elf"), sample.vmlinux()
    rows = []
    for task in tools.EXPLORE_COMMANDS:
        _say(f"  explore {task}: kvmcore, drgn")
        row = Row(
            "explore",
            task,
            "seconds",
            measure("kvmcore", tools.kvmcore_explore_cmd(task, dump), cfg.runs),
        )
        row.anchors["drgn"] = measure("drgn", tools.drgn_explore_cmd(task, dump, vmlinux), cfg.runs)
        rows.append(row)
    return rows


def read_rows(sample, cfg: Config) -> list[Row]:
    vmlinux = sample.vmlinux()
    rows = []
    for fmt in cfg.formats:
        if fmt not in sample.formats:
            continue
        dump = sample.file(fmt)
        for mode in ("seq", "rand"):
            _say(f"  read {mode} {fmt}: kvmcore, drgn")
            row = Row(
                "reads",
                f"{mode} {fmt}",
                "loop_seconds",
                measure("kvmcore", tools.kvmcore_read_cmd(mode, dump), cfg.runs),
            )
            row.anchors["drgn"] = measure("drgn", tools.drgn_cmd(mode, dump, vmlinux), cfg.runs)
            rows.append(row)
    return rows


def gdb_rows(sample, cfg: Config, work: Path) -> list[Row]:
    """64 MB `dump binary memory`: kernel-virtual through `kvmcore serve`, physical
    through gdb's own core-file reader (gdb cannot translate kernel virtual
    addresses in a QEMU paging=false dump; its PT_LOADs have p_vaddr == p_paddr)."""
    import kvmcore

    dump = sample.file("elf")
    with kvmcore.open(str(dump)) as d:
        direct_map = d.read_u64(d.symbols.lookup("page_offset_base"))
    va, pa = direct_map + readplan.WINDOW_PA, readplan.WINDOW_PA
    size = readplan.WINDOW_BYTES
    _say("  gdb: dump binary memory via kvmcore serve, and gdb core-file")
    row = Row(
        "gdb",
        "dump binary memory 64 MB",
        "loop_seconds",
        measure(
            "kvmcore serve", tools.gdb_via_serve_cmd(dump, va, size, work / "serve.bin"), cfg.runs
        ),
        note=f"kvmcore serve reads kernel-virtual {va:#x}+64M; gdb core-file reads the same "
        f"bytes at physical {pa:#x}+64M (PT_LOAD p_vaddr == p_paddr)",
    )
    row.anchors["gdb"] = measure(
        "gdb", tools.gdb_core_cmd(dump, pa, size, work / "core.bin"), cfg.runs
    )
    # the second path: `kvmcore core` writes an ELF core at kernel virtual
    # addresses once, then gdb reads it with its own core-file reader
    kcore = work / "kvmcore.core"
    subprocess.run(
        [tools.KVMCORE, "core", str(dump), "-o", str(kcore)],
        check=True,
        capture_output=True,
        timeout=1800,
    )
    core_row = Row(
        "gdb",
        "dump binary memory 64 MB (kvmcore core)",
        "loop_seconds",
        measure("kvmcore core", tools.gdb_core_cmd(kcore, va, size, work / "kcore.bin"), cfg.runs),
        note="gdb reads kernel-virtual memory from the ELF core `kvmcore core` wrote "
        "(written once, not timed); gdb core-file as above",
    )
    core_row.anchors["gdb"] = row.anchors["gdb"]
    a, b, c = work / "serve.bin", work / "core.bin", work / "kcore.bin"
    if a.exists() and b.exists() and a.read_bytes() != b.read_bytes():
        row.note += "; WARNING: the two dumps differ"
    if c.exists() and b.exists() and c.read_bytes() != b.read_bytes():
        core_row.note += "; WARNING: the two dumps differ"
    for p in (a, b, c, kcore):
        p.unlink(missing_ok=True)
    return [row, core_row]


def run_suite(sample, cfg: Config) -> list[Row]:
    if sample.vmlinux() is None:
        raise SystemExit(
            f"{sample.id}: no -dbg vmlinux in the cache; drgn and crash need it: "
            f"python -m sample_dumps build --only {sample.id} --with-dbg"
        )
    with tempfile.TemporaryDirectory(prefix="kvmcore-bench-") as tmp:
        work = Path(tmp)
        if cfg.explore_only:
            _say(f"{sample.id}: exploration commands")
            return explore_rows(sample, cfg)
        _say(f"{sample.id}: commands")
        rows = command_rows(sample, cfg, work)
        _say(f"{sample.id}: reads")
        rows += read_rows(sample, cfg)
        if cfg.with_gdb:
            rows += gdb_rows(sample, cfg, work)
        if cfg.with_explore:
            _say(f"{sample.id}: exploration commands")
            rows += explore_rows(sample, cfg)
    return rows
