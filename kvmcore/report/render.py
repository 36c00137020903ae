"""Render the crash report: rich (terminal), plain text (pipes) and markdown."""
from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from .lines import frame_lines



def _headline_title(report: dict[str, Any]) -> str:
    h = report.get("headline", {})
    if not h.get("available", True):
        return "Crash report (panic unknown)"
    return f"Kernel panic: {h.get('panic_message') or 'unknown cause'}"


def _headline_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    h = report.get("headline", {})
    if not h.get("available", True):
        return [("panic", f"unavailable: {h['reason']}")]
    task = h.get("task")
    return [("task", f"{task['pid']} ({task['comm']})" if task else "unknown"),
            ("cpu", str(h.get("cpu"))),
            ("kernel", f"{h.get('release')} ({h.get('arch')})"),
            ("uptime", f"{h['uptime_seconds']} s" if h.get("uptime_seconds") is not None else "-"),
            ("taint", h.get("taint") or "-")]


def _system_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    d, s = report["dump"], report.get("system", {})
    rows = []
    if s.get("available", True) and "machine" in s:
        online = s.get("online_cpus")
        rows += [("machine", f"{s['machine']}  {s['version']}"),
                 ("cpus", f"{s['cpus']}" + (f" (online at the crash: {online})"
                                            if online is not None else "")),
                 ("memory", f"{s['memory_bytes'] / 2**20:.0f} MiB in the dump")]
    else:
        rows.append(("system", f"unavailable: {s.get('reason')}"))
    excluded = d.get("excluded_pages")
    rows += [("dump", f"{d['format_description']}, {d['size'] / 2**20:.1f} MiB"
              + (f"; {excluded} RAM pages excluded" if excluded else "")),
             ("KASLR offset", d.get("kaslr_offset") or "-"),
             ("symbols", str(d.get("symbols"))), ("types", str(d.get("types")))]
    return rows


def _bt_lines(bt: dict[str, Any]) -> list[str]:
    return [line.strip() for line in frame_lines(bt)]


def _task_label(t: dict[str, Any]) -> str:
    return f"{t['pid']} {t['comm']} (CPU {t['cpu']}, {t['state']})"


def render_text(report: dict[str, Any]) -> str:
    """Plain text, no escape codes: for pipes and files."""
    out = [_headline_title(report), "=" * len(_headline_title(report))]
    out += [f"{k:>13}: {v}" for k, v in _headline_rows(report)]
    out += ["", "Backtrace of the panicking task:"]
    out += ["  " + line for line in _bt_lines(report.get("backtrace", {}))]
    out += ["", "System:"] + [f"{k:>13}: {v}" for k, v in _system_rows(report)]
    log = report.get("log", {})
    out += ["", "Kernel log (last lines):"]
    out += ["  " + line for line in log.get("lines", [])] if log.get("available") else \
        [f"  unavailable: {log.get('reason')}"]
    tasks = report.get("tasks", {})
    out.append("")
    if tasks.get("available"):
        states = ", ".join(f"{k}: {v}" for k, v in tasks["by_state"].items())
        out.append(f"Tasks: {tasks['count']} ({states})"
                   + (f"  [partial: {tasks['problem']}]" if tasks.get("partial") else ""))
        for title, key in (("On a CPU", "on_cpu"), ("Uninterruptible (D)", "uninterruptible")):
            out.append(f"{title}:" if tasks[key] else f"{title}: none")
            for t in tasks[key]:
                out.append(f"  {_task_label(t)}")
                out += ["    " + line for line in _bt_lines(t["backtrace"])]
    else:
        out.append(f"Tasks: unavailable: {tasks.get('reason')}")
    mods = report.get("modules", {})
    out.append("")
    if mods.get("available"):
        out.append(f"Modules: {len(mods['list'])}")
        for m in mods["list"]:
            out.append(f"  {m['name']:20s} {m['base']}  {m['size']:8d}  {m['taints']}")
    else:
        out.append(f"Modules: unavailable: {mods.get('reason')}")
    if report.get("problems"):
        out += ["", "Sections unavailable:"] + [f"  {p}" for p in report["problems"]]
    return "\n".join(out)


def render_rich(report: dict[str, Any], console: Console) -> None:
    """Panels and tables for a terminal."""
    head = Table.grid(padding=(0, 2))
    for k, v in _headline_rows(report):
        head.add_row(Text(k, style="bold"), Text(v))
    bt = Text("\n".join(_bt_lines(report.get("backtrace", {}))))
    console.print(Panel(Group(head, Text(""), bt), title=_headline_title(report),
                        border_style="red", title_align="left"))
    sysgrid = Table.grid(padding=(0, 2))
    for k, v in _system_rows(report):
        sysgrid.add_row(Text(k, style="bold"), Text(v))
    console.print(Panel(sysgrid, title="System", title_align="left"))
    log = report.get("log", {})
    body = Text("\n".join(log.get("lines", []))) if log.get("available") else \
        Text(f"unavailable: {log.get('reason')}", style="yellow")
    console.print(Panel(body, title="Kernel log (last lines)", title_align="left"))
    tasks = report.get("tasks", {})
    if tasks.get("available"):
        states = ", ".join(f"{k}: {v}" for k, v in tasks["by_state"].items())
        table = Table(title=f"Tasks: {tasks['count']} ({states})", title_justify="left")
        for col in ("PID", "COMM", "CPU", "ST", "backtrace"):
            table.add_column(col)
        for t in tasks["on_cpu"] + tasks["uninterruptible"]:
            table.add_row(str(t["pid"]), t["comm"], str(t["cpu"]), t["state"],
                          "\n".join(_bt_lines(t["backtrace"])[:12]))
        console.print(table)
    else:
        console.print(f"[yellow]Tasks unavailable: {tasks.get('reason')}[/]")
    mods = report.get("modules", {})
    if mods.get("available"):
        table = Table(title=f"Modules: {len(mods['list'])}", title_justify="left")
        for col in ("name", "base", "size", "taints"):
            table.add_column(col)
        for m in mods["list"]:
            table.add_row(m["name"], m["base"], str(m["size"]), m["taints"])
        console.print(table)
    else:
        console.print(f"[yellow]Modules unavailable: {mods.get('reason')}[/]")
    for p in report.get("problems", []):
        console.print(f"[yellow]unavailable[/] {p}")


def render_markdown(report: dict[str, Any]) -> str:
    """GitHub-flavoured markdown, for a CI job summary."""
    out = [f"# {_headline_title(report)}", ""]
    out += ["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in _headline_rows(report)]
    out += ["", "## Backtrace", "", "```"] + _bt_lines(report.get("backtrace", {})) + ["```"]
    out += ["", "## System", "", "| | |", "|---|---|"]
    out += [f"| {k} | {v} |" for k, v in _system_rows(report)]
    log = report.get("log", {})
    out += ["", "## Kernel log", "", "```"]
    out += log.get("lines", []) if log.get("available") else [f"unavailable: {log.get('reason')}"]
    out += ["```"]
    tasks = report.get("tasks", {})
    out += ["", "## Tasks", ""]
    if tasks.get("available"):
        out.append(f"{tasks['count']} tasks: "
                   + ", ".join(f"{k} {v}" for k, v in tasks["by_state"].items()))
        for t in tasks["on_cpu"] + tasks["uninterruptible"]:
            out += ["", f"### {_task_label(t)}", "", "```"] + _bt_lines(t["backtrace"]) + ["```"]
    else:
        out.append(f"unavailable: {tasks.get('reason')}")
    mods = report.get("modules", {})
    out += ["", "## Modules", ""]
    if mods.get("available"):
        out += ["| name | base | size | taints |", "|---|---|---|---|"]
        out += [f"| {m['name']} | {m['base']} | {m['size']} | {m['taints']} |"
                for m in mods["list"]]
    else:
        out.append(f"unavailable: {mods.get('reason')}")
    if report.get("problems"):
        out += ["", "## Unavailable", ""] + [f"- {p}" for p in report["problems"]]
    return "\n".join(out) + "\n"
