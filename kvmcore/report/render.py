"""Render the crash report: rich (terminal), plain text (pipes) and markdown.

Every string of the report may come from the dump (comms, log text, release,
module and symbol names), so each renderer first passes the whole report
through textsafe.printable (control characters shown as \\xNN); the rich
renderer never lets such a string be read as console markup, and the markdown
renderer escapes table cells and fences code blocks past any backticks."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from ..textsafe import printable, printable_tree
from .lines import frame_lines

if TYPE_CHECKING:
    from rich.console import Console


def safe_report(report: dict[str, Any]) -> dict[str, Any]:
    """A copy of the report whose every string is printable (the log's lines
    keep their newlines: a record may have several), without the list of
    every task (`tasks.list`), which no renderer shows (only --json has it):
    escaping 10,000 tasks' strings for nothing was most of `analyze`'s time
    beyond the task walk on a large machine."""
    tasks = report.get("tasks")
    if isinstance(tasks, dict) and "list" in tasks:
        report = {**report, "tasks": {k: v for k, v in tasks.items() if k != "list"}}
    out = printable_tree(report)
    log = report.get("log")
    if isinstance(log, dict) and isinstance(log.get("lines"), list):
        out["log"]["lines"] = [printable(line, newlines=True) for line in log["lines"]]
    return out


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
    return [
        ("task", _headline_task(task)),
        ("cpu", str(h.get("cpu"))),
        ("kernel", f"{h.get('release')} ({h.get('arch')})"),
        ("uptime", f"{h['uptime_seconds']} s" if h.get("uptime_seconds") is not None else "-"),
        ("taint", h.get("taint") or "-"),
    ]


def _headline_task(task: dict[str, Any] | None) -> str:
    if not task:
        return "unknown"
    if task.get("source") == "log":  # its task_struct could not be read
        return f"{task['pid']} ({task['comm']}), from the kernel log: its task_struct is unreadable"
    return f"{task['pid']} ({task['comm']})"


def _system_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    d, s = report["dump"], report.get("system", {})
    rows = []
    if s.get("available", True) and "machine" in s:
        online = s.get("online_cpus")
        rows += [
            ("machine", f"{s['machine']}  {s['version']}"),
            (
                "cpus",
                f"{s['cpus']}"
                + (f" (online at the crash: {online})" if online is not None else ""),
            ),
            ("memory", f"{s['memory_bytes'] / 2**20:.0f} MiB in the dump"),
        ]
    else:
        rows.append(("system", f"unavailable: {s.get('reason')}"))
    excluded = d.get("excluded_pages")
    rows += [
        (
            "dump",
            f"{d['format_description']}, {d['size'] / 2**20:.1f} MiB"
            + (f"; {excluded} RAM pages excluded" if excluded else ""),
        ),
        ("KASLR offset", d.get("kaslr_offset") or "-"),
        ("symbols", str(d.get("symbols"))),
        ("types", str(d.get("types"))),
    ]
    return rows


def _bt_lines(bt: dict[str, Any]) -> list[str]:
    return [line.strip() for line in frame_lines(bt)]


def _task_label(t: dict[str, Any]) -> str:
    return f"{t['pid']} {t['comm']} (CPU {t['cpu']}, {t['state']})"


def render_text(report: dict[str, Any]) -> str:
    """Plain text, no escape codes: for pipes and files."""
    report = safe_report(report)
    out = [_headline_title(report), "=" * len(_headline_title(report))]
    out += [f"{k:>13}: {v}" for k, v in _headline_rows(report)]
    out += ["", "Backtrace of the panicking task:"]
    out += ["  " + line for line in _bt_lines(report.get("backtrace", {}))]
    out += ["", "System:"] + [f"{k:>13}: {v}" for k, v in _system_rows(report)]
    log = report.get("log", {})
    out += ["", "Kernel log (last lines):"]
    out += (
        ["  " + line for line in log.get("lines", [])]
        if log.get("available")
        else [f"  unavailable: {log.get('reason')}"]
    )
    tasks = report.get("tasks", {})
    out.append("")
    if tasks.get("available"):
        states = ", ".join(f"{k}: {v}" for k, v in tasks["by_state"].items())
        out.append(
            f"Tasks: {tasks['count']} ({states})"
            + (f"  [partial: {tasks['problem']}]" if tasks.get("partial") else "")
        )
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
    """Panels and tables for a terminal. Strings from the report go in as
    Text (or markup-escaped), never as markup: a comm "[link=...]" stays text.
    rich is imported here, for a terminal only: text, markdown and JSON need none."""
    from rich.console import Group
    from rich.markup import escape
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    report = safe_report(report)
    head = Table.grid(padding=(0, 2))
    for k, v in _headline_rows(report):
        head.add_row(Text(k, style="bold"), Text(v))
    bt = Text("\n".join(_bt_lines(report.get("backtrace", {}))))
    console.print(
        Panel(
            Group(head, Text(""), bt),
            title=Text(_headline_title(report)),
            border_style="red",
            title_align="left",
        )
    )
    sysgrid = Table.grid(padding=(0, 2))
    for k, v in _system_rows(report):
        sysgrid.add_row(Text(k, style="bold"), Text(v))
    console.print(Panel(sysgrid, title="System", title_align="left"))
    log = report.get("log", {})
    body = (
        Text("\n".join(log.get("lines", [])))
        if log.get("available")
        else Text(f"unavailable: {log.get('reason')}", style="yellow")
    )
    console.print(Panel(body, title="Kernel log (last lines)", title_align="left"))
    tasks = report.get("tasks", {})
    if tasks.get("available"):
        states = ", ".join(f"{k}: {v}" for k, v in tasks["by_state"].items())
        table = Table(title=Text(f"Tasks: {tasks['count']} ({states})"), title_justify="left")
        for col in ("PID", "COMM", "CPU", "ST", "backtrace"):
            table.add_column(col)
        for t in tasks["on_cpu"] + tasks["uninterruptible"]:
            table.add_row(
                Text(str(t["pid"])),
                Text(str(t["comm"])),
                Text(str(t["cpu"])),
                Text(str(t["state"])),
                Text("\n".join(_bt_lines(t["backtrace"])[:12])),
            )
        console.print(table)
    else:
        console.print(f"[yellow]Tasks unavailable: {escape(str(tasks.get('reason')))}[/]")
    mods = report.get("modules", {})
    if mods.get("available"):
        table = Table(title=f"Modules: {len(mods['list'])}", title_justify="left")
        for col in ("name", "base", "size", "taints"):
            table.add_column(col)
        for m in mods["list"]:
            table.add_row(
                Text(str(m["name"])),
                Text(str(m["base"])),
                Text(str(m["size"])),
                Text(str(m["taints"])),
            )
        console.print(table)
    else:
        console.print(f"[yellow]Modules unavailable: {escape(str(mods.get('reason')))}[/]")
    for p in report.get("problems", []):
        console.print(f"[yellow]unavailable[/] {escape(str(p))}")


_MD_SPECIAL = re.compile(r"([\\`*_\[\]<>|~])")


def md(text: Any) -> str:
    """Markdown-inert text for a heading, list item or table cell: every
    markdown character backslash-escaped (no links, images, HTML or cells)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def md_code(lines: list[str]) -> list[str]:
    """A fenced code block that no backtick run in `lines` can close."""
    longest = max((len(run) for line in lines for run in re.findall(r"`+", line)), default=0)
    fence = "`" * max(3, longest + 1)
    return [fence] + lines + [fence]


def render_markdown(report: dict[str, Any]) -> str:
    """GitHub-flavoured markdown, for a CI job summary."""
    report = safe_report(report)
    out = [f"# {md(_headline_title(report))}", ""]
    out += ["| | |", "|---|---|"] + [f"| {md(k)} | {md(v)} |" for k, v in _headline_rows(report)]
    out += ["", "## Backtrace", ""] + md_code(_bt_lines(report.get("backtrace", {})))
    out += ["", "## System", "", "| | |", "|---|---|"]
    out += [f"| {md(k)} | {md(v)} |" for k, v in _system_rows(report)]
    log = report.get("log", {})
    out += ["", "## Kernel log", ""]
    out += md_code(
        log.get("lines", []) if log.get("available") else [f"unavailable: {log.get('reason')}"]
    )
    tasks = report.get("tasks", {})
    out += ["", "## Tasks", ""]
    if tasks.get("available"):
        out.append(
            md(
                f"{tasks['count']} tasks: "
                + ", ".join(f"{k} {v}" for k, v in tasks["by_state"].items())
            )
        )
        for t in tasks["on_cpu"] + tasks["uninterruptible"]:
            out += ["", f"### {md(_task_label(t))}", ""] + md_code(_bt_lines(t["backtrace"]))
    else:
        out.append(md(f"unavailable: {tasks.get('reason')}"))
    mods = report.get("modules", {})
    out += ["", "## Modules", ""]
    if mods.get("available"):
        out += ["| name | base | size | taints |", "|---|---|---|---|"]
        out += [
            f"| {md(m['name'])} | {md(m['base'])} | {m['size']} | {md(m['taints'])} |"
            for m in mods["list"]
        ]
    else:
        out.append(md(f"unavailable: {mods.get('reason')}"))
    if report.get("problems"):
        out += ["", "## Unavailable", ""] + [f"- {md(p)}" for p in report["problems"]]
    return "\n".join(out) + "\n"
