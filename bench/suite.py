"""The comparison suite: kvmcore against drgn, crash and gdb on one sample."""

from __future__ import annotations

import filecmp
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from . import readplan, tools
from .measure import Measurement, measure, measure_in_turn

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
    with_vmlinux: bool = True  # kvmcore given the -dbg vmlinux too
    with_cold: bool = True  # kvmcore with an empty index cache (a build seen the first time)
    nobtf_sample: str | None = "i386-pae"  # a kernel without BTF: types from DWARF


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def command_rows(sample, cfg: Config, work: Path) -> list[Row]:
    """Each command: kvmcore with no vmlinux and, with cfg.with_vmlinux, with
    the -dbg vmlinux, its index cache warm (a warm-up run first); with
    cfg.with_cold, the same with an empty cache per run. drgn (always with
    the vmlinux) is measured once per command and anchors every row."""
    dump, vmlinux = sample.file("elf"), sample.vmlinux()
    rows = []
    for task in COMMAND_TASKS:
        givens = [(None, "")] + ([(vmlinux, " +vmlinux")] if cfg.with_vmlinux else [])
        cmds = [tools.kvmcore_cmd(task, dump, given) for given, _ in givens]
        for cmd in cmds:  # warm-up: the index cache holds this build
            measure("kvmcore", cmd, 1)
        # drgn and kvmcore's runs in turn (measure_in_turn): drgn anchors every row
        _say(f"  {task}: drgn, kvmcore (warm)" + (", +vmlinux" if cfg.with_vmlinux else ""))
        drgn, *warm = measure_in_turn(
            [("drgn", tools.drgn_cmd(task, dump, vmlinux))] + [("kvmcore", c) for c in cmds],
            cfg.runs,
        )
        for (_, suffix), cmd, measured in zip(givens, cmds, warm):
            row = Row("commands", f"{task}{suffix}", "seconds", measured)
            row.anchors["drgn"] = drgn
            if not suffix and cfg.with_crash and cfg.crash_runs > 0:
                _say(f"  {task}: crash {' ; '.join(tools.CRASH_COMMANDS[task])}")
                row.anchors["crash"] = measure(
                    "crash", tools.crash_cmd(task, dump, vmlinux, work), cfg.crash_runs
                )
            rows.append(row)
            if cfg.with_cold:
                _say(f"  {task}{suffix}: kvmcore (cold)")
                cold = measure("kvmcore", cmd, cfg.runs, fresh_cache=True)
                cold_row = Row("cold", f"{task}{suffix}", "seconds", cold)
                cold_row.anchors["drgn"] = drgn
                rows.append(cold_row)
    return rows


def nobtf_rows(cfg: Config) -> list[Row]:
    """A kernel without BTF (Debian's 686-pae): kvmcore's `ps` with the -dbg
    vmlinux, its types from DWARF, cold (empty index cache) and warm; drgn
    `ps` and drgn's DWARF load alone (open_program) on the same dump."""
    from sample_dumps.catalog import load_samples

    sample = load_samples().get(cfg.nobtf_sample or "")
    if sample is None or sample.vmlinux() is None or "elf" not in sample.formats:
        _say(f"  {cfg.nobtf_sample}: not built with its -dbg vmlinux, skipped")
        return []
    dump, vmlinux = sample.file("elf"), sample.vmlinux()
    cmd = tools.kvmcore_cmd("ps", dump, vmlinux)
    _say(f"  {sample.id}: drgn ps, drgn load")
    drgn = measure("drgn", tools.drgn_cmd("ps", dump, vmlinux), cfg.runs)
    load = measure("drgn load", tools.drgn_cmd("load", dump, vmlinux), cfg.runs)
    rows = []
    for label, fresh in (("cold", True), ("warm", False)):
        _say(f"  {sample.id}: kvmcore ps +vmlinux ({label})")
        if not fresh:
            measure("kvmcore", cmd, 1)
        row = Row(
            "nobtf",
            f"{sample.id} ps +vmlinux, {label}",
            "seconds",
            measure("kvmcore", cmd, cfg.runs, fresh_cache=fresh),
        )
        row.anchors["drgn"] = drgn
        row.anchors["drgn DWARF load"] = load
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
            ours, theirs = tools.kvmcore_read_cmd(mode, dump), tools.drgn_cmd(mode, dump, vmlinux)
            # an untimed run of each first: the window's file pages are in the page
            # cache for both (whoever ran first would otherwise read them from disk)
            measure("kvmcore", ours, 1)
            measure("drgn", theirs, 1)
            mine, drgn = measure_in_turn([("kvmcore", ours), ("drgn", theirs)], cfg.runs)
            row = Row("reads", f"{mode} {fmt}", "loop_seconds", mine)
            row.anchors["drgn"] = drgn
            rows.append(row)
    return rows


def gdb_rows(sample, cfg: Config, work: Path) -> list[Row]:
    """64 MB `dump binary memory`: kernel-virtual through `kvmcore serve`, physical
    through gdb's own core-file reader (gdb cannot translate kernel virtual
    addresses in a QEMU paging=false dump; its PT_LOADs have p_vaddr == p_paddr)."""
    dump = sample.file("elf")
    # in a child: a dump opened in this process would grow it, and a command it
    # starts afterwards inherits its peak RSS (ru_maxrss survives vfork + exec)
    direct_map = int(
        subprocess.run(
            [
                tools.PY,
                "-c",
                "import sys, kvmcore; d = kvmcore.open(sys.argv[1]); "
                "print(d.read_u64(d.symbols.lookup('page_offset_base')))",
                str(dump),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=600,
        ).stdout
    )
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
    # compared in chunks (filecmp): three 64 MB files read whole would grow this
    # process, and every command measured after it (see bench/measure.py)
    if a.exists() and b.exists() and not filecmp.cmp(a, b, shallow=False):
        row.note += "; WARNING: the two dumps differ"
    if c.exists() and b.exists() and not filecmp.cmp(c, b, shallow=False):
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
    tools.compile_kvmcore()
    with tempfile.TemporaryDirectory(prefix="kvmcore-bench-") as tmp:
        work = Path(tmp)
        if cfg.explore_only:
            _say(f"{sample.id}: exploration commands")
            return explore_rows(sample, cfg)
        _say(f"{sample.id}: commands")
        rows = command_rows(sample, cfg, work)
        _say(f"{sample.id}: reads")
        rows += read_rows(sample, cfg)
        if cfg.nobtf_sample:
            _say(f"{cfg.nobtf_sample}: a kernel without BTF")
            rows += nobtf_rows(cfg)
        if cfg.with_gdb:
            rows += gdb_rows(sample, cfg, work)
        if cfg.with_explore:
            _say(f"{sample.id}: exploration commands")
            rows += explore_rows(sample, cfg)
    return rows
