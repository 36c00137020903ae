"""`kvmcore`'s commands as a typer app: every command, its help and its usage
errors. cli/main.py runs it for any command line the fast path (cli/fastpath.py)
does not take."""

from __future__ import annotations

import inspect
import sys
from pathlib import Path
from typing import Any

import typer

from kvmcore import commands
from kvmcore.errors import UsageError
from kvmcore.textsafe import printable

from .actions import PARTIAL, int_arg, open_dump, print_json, run_analyze, run_command

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Offline kernel crash-dump analyzer (Linux and FreeBSD vmcores).",
)

# readable=False: kvmcore.open says why a file cannot be read, in one line with
# its exit status (7 permission denied, 6 missing), where typer would not
DumpArg = typer.Argument(..., help="the crash dump (vmcore)", readable=False)
VmlinuxArg = typer.Argument(None, help="the kernel's vmlinux (optional)", readable=False)
ArchOpt = typer.Option(None, "--arch", help="force the architecture backend (x86_64, aarch64, ...)")
JsonOpt = typer.Option(False, "--json", help="print JSON")
ForceOpt = typer.Option(
    False,
    "--force-vmlinux",
    help="use a vmlinux of another build than the dump's kernel (with a warning)",
)
SystemMapOpt = typer.Option(
    None,
    "--system-map",
    help="the kernel's System.map: its symbols when no vmlinux (or a stripped one) is given",
    readable=False,
)


@app.callback()
def _global(
    partial: bool = typer.Option(
        False,
        "--partial",
        help="read a truncated dump as far as it goes (sections that "
        "need the missing part are reported unavailable)",
    ),
) -> None:
    PARTIAL["value"] = partial


def _arg(cmd: commands.Command, name: str) -> Any:
    """The typer argument or option for parameter `name` of `cmd`, from the table."""
    p = cmd.param(name)
    # numbers are taken as text and converted by the table (_int), so the CLI
    # reads 0x10 and 010 as gdb's `monitor` does
    default = str(p.default) if p.type is int and p.default is not None else p.default
    if p.positional:
        return typer.Argument(... if p.required else default, help=p.help)
    return typer.Option(default, *p.flags, help=p.help)


@app.command("analyze", help=commands.ANALYZE.help)
def analyze(
    dump: Path | None = typer.Argument(
        None, help="the crash dump; default: the committed sample", readable=False
    ),
    vmlinux: Path | None = VmlinuxArg,
    force_vmlinux: bool = ForceOpt,
    arch: str | None = ArchOpt,
    json_out: bool = JsonOpt,
    fmt: str = typer.Option(
        "auto",
        "--format",
        help="auto (rich on a terminal, text when piped), rich, text, markdown, json",
    ),
    log_lines: str = _arg(commands.ANALYZE, "log_lines"),
    system_map: Path | None = SystemMapOpt,
) -> None:
    run_analyze(dump, vmlinux, force_vmlinux, arch, json_out, fmt, log_lines, system_map)


@app.command("read", help=commands.READ.help, context_settings={"ignore_unknown_options": True})
def read(
    dump: Path = DumpArg,
    address: str = _arg(commands.READ, "address"),
    length: str = _arg(commands.READ, "length"),
    arch: str | None = ArchOpt,
    physical: bool = _arg(commands.READ, "physical"),
    json_out: bool = JsonOpt,
    system_map: Path | None = SystemMapOpt,
) -> None:
    if json_out:  # capped at commands.READ_JSON_MAX bytes
        run_command(
            commands.READ,
            dump,
            None,
            arch,
            system_map,
            json_out,
            address=address,
            length=int_arg(commands.READ, "length", length),
            physical=physical,
        )
        return
    # the text streams: a read of any length never holds the whole hex dump
    d = open_dump(dump, None, arch, system_map)
    n = int_arg(commands.READ, "length", length) or 0
    for piece in commands.read_stream(d, address, n, physical):
        sys.stdout.write(piece)


@app.command()
def serve(
    dump: Path = DumpArg,
    vmlinux: Path | None = VmlinuxArg,
    force_vmlinux: bool = ForceOpt,
    arch: str | None = ArchOpt,
    system_map: Path | None = SystemMapOpt,
    listen: str = typer.Option("127.0.0.1:1234", "--listen", help="HOST:PORT"),
    stdio: bool = typer.Option(
        False, "--stdio", help="speak on stdin/stdout (target remote | kvmcore serve --stdio DUMP)"
    ),
    module_dir: Path | None = typer.Option(
        None,
        "--module-dir",
        help="a directory of module debug files (.ko with DWARF): prints gdb's "
        "add-symbol-file lines for them (also `monitor modules`)",
        readable=False,
    ),
) -> None:
    """Serve the dump to gdb over the remote serial protocol, read-only."""
    from kvmcore import gdbserver

    d = open_dump(dump, vmlinux, arch, system_map, force_vmlinux)
    if module_dir is not None:
        from kvmcore.unwind import use_module_dir

        use_module_dir(d, str(module_dir))
    gdbserver.serve(d, listen=listen, stdio=stdio)


@app.command()
def symfile(
    dump: Path = DumpArg,
    output: Path = typer.Option(..., "-o", "--output"),
    arch: str | None = ArchOpt,
    system_map: Path | None = SystemMapOpt,
) -> None:
    """Write an ELF symbol file for gdb from the dump's own kallsyms."""
    from kvmcore.gdbserver.symfile import write_dump_symbol_file

    d = open_dump(dump, None, arch, system_map)
    note = write_dump_symbol_file(d, str(output))
    # the whole file moved by the KASLR offset (the server's qOffsets does the
    # same for this file, whose one allocated section is .text; stated here so
    # that the line also serves a `kvmcore core` file)
    load = f"-ex 'symbol-file -o {d.kernel_offset:#x} {output}'" if d.kernel_offset else str(output)
    smap = f" --system-map {system_map}" if system_map else ""
    serve = f"-ex 'target remote | kvmcore serve --stdio {dump}{smap}'"
    print(f"wrote {output}: {note}; use: gdb {load} {serve}")


@app.command("core")
def core(
    dump: Path = DumpArg,
    vmlinux: Path | None = VmlinuxArg,
    output: Path = typer.Option(..., "-o", "--output", help="the ELF core to write"),
    arch: str | None = ArchOpt,
    system_map: Path | None = SystemMapOpt,
) -> None:
    """Write an ELF core gdb opens natively: kernel virtual memory, tasks as threads."""
    from kvmcore.gdbserver.corefile import write_core

    d = open_dump(dump, vmlinux, arch, system_map)
    done = write_core(d, str(output))
    symbols = str(vmlinux) if vmlinux else "SYMFILE (kvmcore symfile DUMP -o SYMFILE)"
    print(
        f"wrote {output}: {done['segments']} segments, {done['threads']} threads, "
        f"{done['bytes_written'] >> 20} MiB of memory ({done['missing_pages']} pages the "
        f"dump lacks read as zeros); use: gdb -ex 'symbol-file -o "
        f"{done['kernel_offset']:#x} {symbols}' -c {output}"
    )


@app.command("shell")
def shell(
    dump: Path = DumpArg,
    vmlinux: Path | None = VmlinuxArg,
    arch: str | None = ArchOpt,
    system_map: Path | None = SystemMapOpt,
) -> None:
    """A crash-like prompt: every command, `set PID`, `py`, pipes; from a pipe, runs its lines."""
    from kvmcore.shell import run_shell  # prompt_toolkit: only for the shell

    run_shell(open_dump(dump, vmlinux, arch, system_map))


# -- the exploration commands, built from the command table ---------------------
VmlinuxOpt = typer.Option(None, "--vmlinux", help="the kernel's vmlinux (optional)")


def _table_command(cmd: commands.Command, vmlinux_positional: bool) -> None:
    """A subcommand `kvmcore NAME DUMP ARGS... [VMLINUX]` whose arguments are
    the table's parameters. VMLINUX is a trailing positional where the
    command's own positionals are all required (ps, bt, sym, ...), else an
    option (`--vmlinux FILE`: `struct TYPE [ADDR]` has optional positionals)."""
    kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
    params = [inspect.Parameter("dump", kind, default=DumpArg, annotation=Path)]
    for p in cmd.params:
        kind_of = str if p.type is int else p.type  # numbers as text: the table converts
        annotation: Any = kind_of if p.type is bool or p.required else (kind_of | None)
        params.append(
            inspect.Parameter(p.name, kind, default=_arg(cmd, p.name), annotation=annotation)
        )
    vmlinux = VmlinuxArg if vmlinux_positional else VmlinuxOpt
    params += [
        inspect.Parameter("vmlinux", kind, default=vmlinux, annotation=Path | None),
        inspect.Parameter("force_vmlinux", kind, default=ForceOpt, annotation=bool),
        inspect.Parameter("arch", kind, default=ArchOpt, annotation=str | None),
        inspect.Parameter("json_out", kind, default=JsonOpt, annotation=bool),
        inspect.Parameter("system_map", kind, default=SystemMapOpt, annotation=Path | None),
    ]

    def run(**kwargs: Any) -> None:
        dump, vmlinux, arch = kwargs.pop("dump"), kwargs.pop("vmlinux"), kwargs.pop("arch")
        system_map, json_out = kwargs.pop("system_map"), kwargs.pop("json_out")
        force = kwargs.pop("force_vmlinux")
        for p in cmd.params:
            if p.type is int and kwargs.get(p.name) is not None:
                kwargs[p.name] = int_arg(cmd, p.name, kwargs[p.name])
        run_command(cmd, dump, vmlinux, arch, system_map, json_out, force, **kwargs)

    run.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    run.__name__ = cmd.name
    app.command(cmd.name, help=cmd.help)(run)


# the viewing commands, DUMP [VMLINUX]; then the exploration commands, --vmlinux FILE
for _cmd in commands.VIEW:
    _table_command(_cmd, vmlinux_positional=True)
for _cmd in commands.EXPLORE:
    _table_command(_cmd, vmlinux_positional=False)


@app.command("triage")
def triage(
    paths: list[Path] = typer.Argument(
        ..., help="dumps and directories of dumps (searched recursively)", readable=False
    ),
    json_out: bool = typer.Option(False, "--json", help="print the triage as JSON"),
    markdown: bool = typer.Option(False, "--markdown", help="print the triage as Markdown"),
    html_out: Path | None = typer.Option(
        None, "--html", help="write one self-contained HTML page to FILE"
    ),
    db: Path | None = typer.Option(
        None, "--db", help="the results database (default: triage.sqlite3 in the cache)"
    ),
    vmlinux_dir: Path | None = typer.Option(
        None, "--vmlinux-dir", help="vmlinux files, matched to dumps by build id or release"
    ),
    scheduler: str | None = typer.Option(
        None, "--scheduler", help="a running Dask cluster: tcp://HOST:PORT"
    ),
    workers: int | None = typer.Option(
        None,
        "--workers",
        help="local Dask worker processes (default: one per core); 0: in this process",
    ),
    include: list[str] = typer.Option([], "--include", help="only files matching GLOB"),
    exclude: list[str] = typer.Option(
        [], "--exclude", help="skip files matching GLOB (added to *.vmlinux *.json *.log ...)"
    ),
    reanalyze: bool = typer.Option(
        False, "--reanalyze", help="analyze every dump again, ignoring the database"
    ),
) -> None:
    """Analyze every dump under PATHS and group them by crash signature."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from kvmcore.triage import engine, render

    if workers is not None and workers < 0:
        raise UsageError(f"--workers must be 0 or more, not {workers}")
    err = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    ) as bar:
        task = bar.add_task("finding dumps", total=None)

        def progress(stage: str, done: int, total: int) -> None:
            bar.update(task, description=stage, completed=done, total=total or None)

        doc = engine.run(
            [str(p) for p in paths],
            db_path=str(db) if db else None,
            vmlinux_dir=str(vmlinux_dir) if vmlinux_dir else None,
            scheduler=scheduler,
            workers=workers,
            include=include,
            exclude=list(engine.DEFAULT_EXCLUDE) + list(exclude),
            reanalyze=reanalyze,
            progress=progress,
        )
    if html_out is not None:
        html_out.write_text(render.render_html(doc))
        print(f"kvmcore: wrote {html_out}", file=sys.stderr)
    if json_out:
        print_json(doc)
    elif markdown:
        sys.stdout.write(render.render_markdown(doc))
    elif sys.stdout.isatty():
        render.render_rich(doc, Console())
    else:
        print(render.render_text(doc))


def run_app() -> None:
    """Parse the command line with typer and run the command. typer's own
    outcomes end here (help, usage errors: one line, exit 2); kvmcore's errors
    go up to cli.main.main, which turns each into one line."""
    try:
        app(standalone_mode=False)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        raise KeyboardInterrupt from None
    except typer.TyperException as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # bare `kvmcore`: the help is the answer
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        # usage errors (a bad number, an unknown option): one line like every
        # other error, not typer's usage block; exit 2, "bad input or usage"
        fmt = getattr(exc, "format_message", None)
        message = " ".join((fmt() if callable(fmt) else str(exc)).split())
        print(f"kvmcore: error: {printable(message)}", file=sys.stderr)
        sys.exit(2)
