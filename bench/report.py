"""Text and Markdown rendering of benchmark results, and the machine description."""

from __future__ import annotations

import datetime
import os
import platform
import re
import subprocess
from pathlib import Path

from .measure import Measurement
from .suite import Row


def _first_line(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "not installed"
    return next((line.strip() for line in out.splitlines() if line.strip()), "?")


def machine() -> dict[str, str]:
    cpuinfo = Path("/proc/cpuinfo").read_text()
    model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
    mem = _first_line(
        ["sh", "-c", 'free -m | awk \'/^Mem:/ {print $2" MB total, "$7" MB available"}\'']
    )
    import drgn

    rev = _first_line(
        ["git", "-C", str(Path(__file__).resolve().parent.parent), "rev-parse", "--short", "HEAD"]
    )
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": f"{model.group(1) if model else platform.processor()} x {os.cpu_count()} (nproc)",
        "memory": mem,
        "kernel": platform.release(),
        "load average at start": " ".join(f"{x:.2f}" for x in os.getloadavg()),
        "python": platform.python_version(),
        "kvmcore": f"git {rev}",
        "drgn": getattr(drgn, "__version__", "?"),
        "crash": _first_line(["crash", "--version"]),
        "gdb": _first_line(["gdb", "--version"]),
    }


def fmt_s(m: Measurement | None, metric: str) -> str:
    if m is None:
        return "-"
    if not m.ok:
        return "n/a"
    return f"{m.median(metric):.3f} s"


def fmt_rss(m: Measurement | None) -> str:
    return f"{m.rss_mb:.0f} MB" if m is not None and m.runs else "-"


def fmt_ratio(r: float | None) -> str:
    return "-" if r is None else f"{r:.2f}"


def throughput(m: Measurement | None) -> str:
    if m is None or not m.ok:
        return ""
    mbps = m.median("bytes") / m.median("loop_seconds") / (1 << 20)
    bad = m.runs[0].inner.get("faulted_pages", 0)
    return f"{mbps:.0f} MB/s" + (f", {bad} pages filtered" if bad else "")


def anchor_names(rows: list[Row]) -> list[str]:
    names: list[str] = []
    for r in rows:
        for a in r.anchors:
            if a not in names:
                names.append(a)
    return names


def ratio_lines(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        parts = [f"kvmcore/{a}={fmt_ratio(r.ratio(a))}" for a in r.anchors]
        out.append(f"ratio {r.group}: {r.task}: " + " ".join(parts))
    return out


def markdown_table(rows: list[Row]) -> list[str]:
    anchors = anchor_names(rows)
    head = ["task", "kvmcore", "peak RSS"]
    for a in anchors:
        head += [a, "peak RSS", f"kvmcore/{a}"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        k = fmt_s(r.kvmcore, r.metric)
        if r.group == "reads":
            k += f" ({throughput(r.kvmcore)})"
        cells = [r.task, k, fmt_rss(r.kvmcore)]
        for a in anchors:
            m = r.anchors.get(a)
            s = fmt_s(m, r.metric)
            if r.group == "reads" and m is not None and m.ok:
                s += f" ({throughput(m)})"
            cells += [s, fmt_rss(m), fmt_ratio(r.ratio(a))]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def failures(rows: list[Row]) -> list[str]:
    out = []
    for r in rows:
        for m in [r.kvmcore, *r.anchors.values()]:
            if m.error:
                out.append(f"- {r.task}, {m.tool}: {m.error}")
    return out
