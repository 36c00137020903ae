"""Run a command several times; wall time and peak RSS of each run.

Peak RSS comes from os.wait4 on the child itself (ru_maxrss of that process
and its waited-for descendants), so runs do not blur into each other the way
a process-wide RUSAGE_CHILDREN maximum would. A child's ru_maxrss starts at
its parent's resident size at the fork (Linux keeps the high-water mark across
exec): the bench process itself must stay small (it opens no dump itself)."""

from __future__ import annotations

import json
import os
import resource
import select
import statistics
import subprocess
import tempfile
import time
from dataclasses import dataclass, field


@dataclass
class Run:
    seconds: float  # wall time of the whole process
    rss_kb: int  # peak resident set size (KiB)
    stdout: str
    inner: dict = field(default_factory=dict)  # JSON the worker printed (read loops)


@dataclass
class Measurement:
    tool: str
    runs: list[Run]
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def median(self, key: str = "seconds") -> float:
        if key == "seconds":
            return statistics.median(r.seconds for r in self.runs)
        return statistics.median(r.inner[key] for r in self.runs)

    @property
    def rss_mb(self) -> float:
        return max(r.rss_kb for r in self.runs) / 1024


class CommandFailed(Exception):
    pass


def _reap(pid: int, deadline: float) -> tuple[int, resource.struct_rusage] | None:
    """Wait for child `pid` and reap it with its rusage: (status, rusage), or
    None at `deadline`. A pidfd wakes this the moment the child exits;
    polling (where there is no pidfd) would round each time up to its period,
    5 ms of a 0.1 s command."""
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        fd = None
    try:
        while True:
            done, status, usage = os.wait4(pid, os.WNOHANG)
            if done:
                return status, usage
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            if fd is None:
                time.sleep(min(0.001, left))
            else:
                select.select([fd], [], [], left)
    finally:
        if fd is not None:
            os.close(fd)


def run_once(
    cmd: list[str],
    *,
    stdin_text: str | None = None,
    timeout: float = 900,
    cwd: str | None = None,
    env: dict | None = None,
) -> Run:
    """Run `cmd` to completion; raise CommandFailed on a non-zero exit or timeout.
    Output goes through temporary files so that the parent can reap the child
    itself with os.wait4 and keep its rusage."""
    with (
        tempfile.TemporaryFile("w+") as fin,
        tempfile.TemporaryFile("w+") as fout,
        tempfile.TemporaryFile("w+") as ferr,
    ):
        if stdin_text is not None:
            fin.write(stdin_text)
            fin.flush()
            fin.seek(0)
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdin=fin, stdout=fout, stderr=ferr, cwd=cwd, env=env)
        reaped = _reap(proc.pid, t0 + timeout)
        if reaped is None:
            proc.kill()
            os.wait4(proc.pid, 0)
            raise CommandFailed(f"{cmd[0]} timed out after {timeout}s")
        status, usage = reaped
        seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        fout.seek(0)
        ferr.seek(0)
        out, err = fout.read(), ferr.read()
    if proc.returncode != 0:
        tail = (err or out).strip().splitlines()[-3:]
        raise CommandFailed(f"{' '.join(cmd[:3])} ... exited {proc.returncode}: {' | '.join(tail)}")
    bench_lines = [line for line in out.splitlines() if line.startswith("BENCH ")]
    inner = json.loads(bench_lines[-1][6:]) if bench_lines else {}
    return Run(seconds, usage.ru_maxrss, out, inner)


def measure_in_turn(
    jobs: list[tuple[str, list[str]]], runs: int, env: dict | None = None
) -> list[Measurement]:
    """`runs` runs of each (tool, command) of `jobs`, taken in turn (one run of
    each job, `runs` times over) rather than one job's runs and then the
    next's: this machine's speed drifts by a third within minutes, and taken in
    turn the drift weighs on every job alike, so their ratios compare like
    with like. A job that fails keeps the runs it had and its error; the
    others go on."""
    done: list[list[Run]] = [[] for _ in jobs]
    failed: dict[int, str] = {}
    for _ in range(runs):
        for i, (_tool, cmd) in enumerate(jobs):
            if i in failed:
                continue
            try:
                done[i].append(run_once(cmd, env=env))
            except (CommandFailed, OSError) as exc:
                failed[i] = str(exc)
    return [Measurement(tool, done[i], failed.get(i)) for i, (tool, _) in enumerate(jobs)]


def measure(tool: str, cmd: list[str], runs: int, fresh_cache: bool = False, **kw) -> Measurement:
    """`runs` runs of `cmd`; a failure is recorded, not raised. `fresh_cache`:
    each run gets an empty KVMCORE_CACHE (kvmcore's build-id index cache cold,
    as the first time a kernel build is seen)."""
    done: list[Run] = []
    try:
        for _ in range(runs):
            if not fresh_cache:
                done.append(run_once(cmd, **kw))
                continue
            with tempfile.TemporaryDirectory(prefix="kvmcore-cold-") as cache:
                env = dict(kw.pop("env", None) or os.environ, KVMCORE_CACHE=cache)
                done.append(run_once(cmd, env=env, **kw))
    except (CommandFailed, OSError) as exc:
        return Measurement(tool, done, str(exc))
    return Measurement(tool, done)
