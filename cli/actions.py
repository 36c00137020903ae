"""What the CLI's commands do once their command line is parsed: open the dump,
call the command table, print. Shared by the typer app (cli/app.py) and the
fast path (cli/fastpath.py), and free of typer and rich (rich is imported
only to draw on a terminal), so a command pays for neither."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import kvmcore
from kvmcore import commands
from kvmcore.errors import NotFoundError, UsageError
from kvmcore.textsafe import printable

PARTIAL = {"value": False}  # --partial, a global option


def committed_sample() -> Path:
    """The small real dump committed in sample_dumps/ of the source tree."""
    env = os.environ.get("KVMCORE_DEFAULT_DUMP")
    if env:
        return Path(env)
    root = Path(kvmcore.__file__).resolve().parent.parent
    return root / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"


def open_dump(
    dump: Path,
    vmlinux: Path | None,
    arch: str | None,
    system_map: Path | None = None,
    force_vmlinux: bool = False,
) -> kvmcore.Dump:
    """kvmcore.open with the CLI's options; its warnings go to stderr."""
    d = kvmcore.open(
        str(dump),
        str(vmlinux) if vmlinux else None,
        arch,
        allow_truncated=PARTIAL["value"],
        system_map=str(system_map) if system_map else None,
        force_vmlinux=force_vmlinux,
    )
    for warning in d.warnings:
        print(f"kvmcore: warning: {printable(warning)}", file=sys.stderr)
    return d


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def int_arg(cmd: commands.Command, name: str, value: str | None) -> int | None:
    """A number argument of `cmd` converted as the command table converts it."""
    return None if value is None else int(cmd.param(name).convert(value))


def run_command(
    cmd: commands.Command,
    dump: Path,
    vmlinux: Path | None,
    arch: str | None,
    system_map: Path | None,
    json_out: bool,
    force_vmlinux: bool = False,
    **kwargs: Any,
) -> None:
    """Open the dump, call `cmd.data`, print its JSON or `cmd.text`."""
    data = cmd.data(open_dump(dump, vmlinux, arch, system_map, force_vmlinux), **kwargs)
    if json_out:
        print_json(data)
    else:
        print(cmd.render(data))


class _NoStatus:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def run_analyze(
    dump: Path | None,
    vmlinux: Path | None,
    force_vmlinux: bool,
    arch: str | None,
    json_out: bool,
    fmt: str,
    log_lines: str | None,
    system_map: Path | None,
) -> None:
    """`kvmcore analyze`: the report as rich, text, markdown or JSON. rich is
    imported only for a terminal (the spinner on stderr, the rich report)."""
    if json_out:
        fmt = "json"
    if fmt not in ("auto", "rich", "text", "markdown", "json"):
        raise UsageError(f"unknown --format {fmt!r}")
    if dump is None:
        dump = committed_sample()
        if not dump.exists():
            raise NotFoundError("no dump given and the committed sample is missing", str(dump))
        # first line of the report; on stderr where stdout must stay machine-readable
        print(
            f"kvmcore: no dump given: analyzing the committed sample {dump}",
            file=sys.stderr if fmt in ("json", "markdown") else sys.stdout,
        )
    d = open_dump(dump, vmlinux, arch, system_map, force_vmlinux)
    status_cm: Any = _NoStatus()
    if sys.stderr.isatty() or os.environ.get("FORCE_TERMINAL") or os.environ.get("TTY_COMPATIBLE"):
        from rich.console import Console

        err = Console(stderr=True)
        if err.is_terminal:
            status_cm = err.status("opening the dump")
    with status_cm as status:

        def progress(stage: str) -> None:
            if status is not None:
                status.update(stage)

        lines = int_arg(commands.ANALYZE, "log_lines", log_lines)
        report = commands.ANALYZE.data(d, log_lines=lines, progress=progress)
    if fmt == "json":
        print_json(report)
    elif fmt == "markdown":
        from kvmcore.report.render import render_markdown

        sys.stdout.write(render_markdown(report))
    elif fmt == "text" or (fmt == "auto" and not sys.stdout.isatty()):
        print(commands.ANALYZE.render(report))
    else:  # rich, or auto on a terminal
        from rich.console import Console

        from kvmcore.report.render import render_rich

        render_rich(report, Console())
