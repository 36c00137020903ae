"""`python -m bench.startup [COMMAND] [--runs N]`: where a short command's time
goes, in 10 ms steps: the interpreter's own start, each group of imports
(`python -X importtime`, self time summed per package), then opening the dump,
the command's work and its output, timed inside one process that runs the
command as the CLI does (cli/fastpath.py). Medians of N runs on the cached
x86_64-kaslr ELF sample, with the per-build index cache warm; with --cold the
cache is empty for each run. Prints Markdown tables."""

from __future__ import annotations

import argparse
import collections
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from . import tools

_PHASES = r"""
import sys, time
t0 = time.perf_counter()
from kvmcore import commands
from kvmcore.cli import actions
t1 = time.perf_counter()
cmd = commands.COMMANDS[sys.argv[1]]
dump = actions.open_dump(__import__("pathlib").Path(sys.argv[2]), None, None)
t2 = time.perf_counter()
data = cmd.data(dump)
t3 = time.perf_counter()
text = cmd.render(data)
t4 = time.perf_counter()
print(f"PHASES {t1 - t0} {t2 - t1} {t3 - t2} {t4 - t3}", file=sys.stderr)
"""


def _env(cold: bool, cache: str) -> dict[str, str]:
    env = dict(os.environ)
    if cold:
        env["KVMCORE_CACHE"] = cache
    return env


def import_groups(command: str, dump: str, runs: int, cold: bool) -> dict[str, float]:
    """Median self-time (ms) of each import group for `kvmcore COMMAND DUMP`."""
    per_run: list[collections.Counter] = []
    for _ in range(runs):
        with tempfile.TemporaryDirectory() as cache:
            err = subprocess.run(
                [tools.PY, "-X", "importtime", "-m", "kvmcore.cli.main", command, dump],
                capture_output=True,
                text=True,
                env=_env(cold, cache),
            ).stderr
        groups: collections.Counter = collections.Counter()
        for line in err.splitlines():
            m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
            if not m:
                continue
            parts = m[2].split(".")
            if parts[0] == "kvmcore":
                key = "kvmcore." + parts[1] if len(parts) > 1 else "kvmcore"
            elif parts[0] in ("typer", "click", "rich", "pydantic", "elftools", "drgn"):
                key = parts[0]
            else:
                key = "the standard library"
            groups[key] += int(m[1]) / 1000
        per_run.append(groups)
    keys = {k for g in per_run for k in g}
    return {k: statistics.median(g.get(k, 0.0) for g in per_run) for k in keys}


def phases(command: str, dump: str, runs: int, cold: bool) -> dict[str, float]:
    """Median ms of: interpreter start (`python -c pass`), imports, open,
    work, render."""
    starts, rows = [], []
    for _ in range(runs):
        import time

        t = time.perf_counter()
        subprocess.run([tools.PY, "-c", "pass"], check=True)
        starts.append((time.perf_counter() - t) * 1000)
        with tempfile.TemporaryDirectory() as cache:
            err = subprocess.run(
                [tools.PY, "-c", _PHASES, command, dump],
                capture_output=True,
                text=True,
                env=_env(cold, cache),
            ).stderr
        line = next(ln for ln in err.splitlines() if ln.startswith("PHASES "))
        rows.append([float(x) * 1000 for x in line.split()[1:]])
    names = ["imports (kvmcore, the table)", "open the dump", "the command's work", "render"]
    out = {"interpreter start": statistics.median(starts)}
    for i, name in enumerate(names):
        out[name] = statistics.median(r[i] for r in rows)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__)
    ap.add_argument("commands", nargs="*", default=["info", "ps"])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--cold", action="store_true", help="an empty index cache per run")
    ap.add_argument("--dump", help="default: the cached x86_64-kaslr ELF sample")
    args = ap.parse_args(argv)
    dump = args.dump
    if dump is None:
        from sample_dumps.catalog import load_samples

        dump = str(load_samples()["x86_64-kaslr"].file("elf"))
    tools.compile_kvmcore()
    for command in args.commands:
        print(f"\n`kvmcore {command}` ({'cold' if args.cold else 'warm'} index cache), ms:\n")
        print("| phase | ms |\n|---|---|")
        for name, ms in phases(command, dump, args.runs, args.cold).items():
            print(f"| {name} | {ms:.0f} |")
        groups = import_groups(command, dump, args.runs, args.cold)
        print("\n| imports (python -X importtime, self time) | ms |\n|---|---|")
        for name, ms in sorted(groups.items(), key=lambda kv: -kv[1]):
            if ms >= 1:
                print(f"| {name} | {ms:.0f} |")
    print(f"\n(python {sys.version.split()[0]}, {Path(tools.PY).name})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
