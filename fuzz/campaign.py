"""A campaign: every target (or one) in turn, each in a worker process
(fuzz.worker) watched by a wall-clock watchdog; the seed files' sha256
before and after; the figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .contract import HANG, MEMORY, TRACEBACK, Tally, sha256

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Result:
    tallies: dict[str, Tally] = field(default_factory=dict)
    engine: str = ""
    seconds: float = 0.0
    hashes_unchanged: bool = True
    files_hashed: int = 0
    worker_problems: list[str] = field(default_factory=list)

    def failures(self) -> dict[str, tuple[str, int, str]]:
        """key -> (target, count, example traceback)"""
        out = {}
        for name, t in self.tallies.items():
            for key, n in t.failures.items():
                out[f"{name}: {key}"] = (name, n, t.examples.get(key, ""))
        return out

    def report(self) -> str:
        lines = [
            f"engine {self.engine}; {self.seconds:.0f} s; "
            f"{sum(t.inputs for t in self.tallies.values())} inputs",
            f"{'target':11} {'inputs':>8} {'refused':>8} {'failures':>8} "
            f"{'traceback':>9} {'hang':>5} {'memory':>6}",
        ]
        for name, t in self.tallies.items():
            lines.append(
                f"{name:11} {t.inputs:8} {t.errors:8} {len(t.failures):8} "
                f"{t.by_kind(TRACEBACK):9} {t.by_kind(HANG):5} {t.by_kind(MEMORY):6}"
            )
        lines.append(
            f"seed files hashed before and after: {self.files_hashed}, "
            + ("unchanged" if self.hashes_unchanged else "CHANGED")
        )
        for p in self.worker_problems:
            lines.append(f"worker: {p}")
        for key, (_, n, text) in self.failures().items():
            lines.append(f"\n== {key} (x{n})\n{text.rstrip()}")
        return "\n".join(lines)


def engine_available() -> str:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return "random"
    return "atheris"


def run(
    seconds: float,
    targets: list[str],
    seed: int = 0,
    engine: str | None = None,
    runs: int | dict[str, int] = 0,
    progress=lambda line: None,
) -> Result:
    from .targets import TARGETS

    engine = engine or engine_available()
    result = Result(engine=engine)
    files = sorted({f for name in targets for f in TARGETS[name].files()})
    before = {f: sha256(f) for f in files}
    per = seconds / max(len(targets), 1)
    start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="kvmcore-fuzz-") as tmp:
        for name in targets:
            out = os.path.join(tmp, f"{name}.json")
            cmd = [
                sys.executable,
                "-m",
                "fuzz.worker",
                "--target",
                name,
                "--seconds",
                str(per),
                "--seed",
                str(seed),
                "--engine",
                engine,
                "--out",
                out,
            ]
            n = runs.get(name, 0) if isinstance(runs, dict) else runs
            if n:
                cmd += ["--runs", str(n)]
            progress(f"{name}: {per:.0f} s ...")
            try:
                proc = subprocess.run(cmd, cwd=ROOT, timeout=per + 120, capture_output=True)
                if proc.returncode:
                    result.worker_problems.append(
                        f"{name}: exit {proc.returncode}: {proc.stderr.decode()[-2000:]}"
                    )
            except subprocess.TimeoutExpired:
                result.worker_problems.append(f"{name}: worker killed by the watchdog")
            try:
                with open(out) as f:
                    tally = Tally.from_dict(json.load(f))
            except (OSError, ValueError):
                tally = Tally()
                result.worker_problems.append(f"{name}: no tally written")
            result.tallies[name] = tally
            progress(f"{name}: {tally.inputs} inputs, {len(tally.failures)} failures")
    result.seconds = time.monotonic() - start
    after = {f: sha256(f) for f in files}
    result.files_hashed = len(files)
    result.hashes_unchanged = before == after
    return result
