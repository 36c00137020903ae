"""`kvmcore` commands. Errors become one line on stderr and an exit status:
2 bad input, 3 unsupported format or arch, 4 missing symbols or types,
5 unreadable address, 1 other kvmcore errors, 70 internal errors."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Optional

import typer

import kvmcore
from kvmcore.errors import KvmcoreError

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Offline kernel crash-dump analyzer (Linux and FreeBSD vmcores).")

EXIT_INTERNAL = 70
DumpArg = typer.Argument(..., help="the crash dump (vmcore)")
VmlinuxArg = typer.Argument(None, help="the kernel's vmlinux (optional)")
ArchOpt = typer.Option(None, "--arch", help="force the architecture backend (x86_64, aarch64, ...)")
JsonOpt = typer.Option(False, "--json", help="print JSON")


def committed_sample() -> Path:
    """The small real dump committed in sample_dumps/ of the source tree."""
    env = os.environ.get("KVMCORE_DEFAULT_DUMP")
    if env:
        return Path(env)
    root = Path(kvmcore.__file__).resolve().parent.parent
    return root / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"


PARTIAL = {"value": False}  # --partial, a global option


def _open(dump: Path, vmlinux: Optional[Path], arch: Optional[str]) -> kvmcore.Dump:
    return kvmcore.open(str(dump), str(vmlinux) if vmlinux else None, arch,
                        allow_truncated=PARTIAL["value"])


@app.callback()
def _global(partial: bool = typer.Option(
        False, "--partial", help="read a truncated dump as far as it goes (sections that "
        "need the missing part are reported unavailable)")) -> None:
    PARTIAL["value"] = partial


def _print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


@app.command()
def analyze(dump: Optional[Path] = typer.Argument(None, help="the crash dump; default: the "
                                                 "committed sample"),
            vmlinux: Optional[Path] = VmlinuxArg, arch: Optional[str] = ArchOpt,
            json_out: bool = JsonOpt,
            fmt: str = typer.Option("auto", "--format",
                                    help="auto (rich on a terminal, text when piped), rich, "
                                    "text, markdown, json"),
            log_lines: int = typer.Option(40, "--log-lines", help="kernel log lines to show")
            ) -> None:
    """The crash report: panic, backtrace, system, log, tasks, modules."""
    from rich.console import Console

    from kvmcore.report import build_report
    from kvmcore.report.render import render_markdown, render_rich, render_text

    err = Console(stderr=True)
    if json_out:
        fmt = "json"
    if dump is None:
        dump = committed_sample()
        if not dump.exists():
            raise KvmcoreError("no dump given and the committed sample is missing", str(dump))
        # first line of the report; on stderr where stdout must stay machine-readable
        print(f"kvmcore: no dump given: analyzing the committed sample {dump}",
              file=sys.stderr if fmt in ("json", "markdown") else sys.stdout)
    d = _open(dump, vmlinux, arch)
    with err.status("opening the dump") if err.is_terminal else _null() as status:
        def progress(stage: str) -> None:
            if status is not None:
                status.update(stage)
        report = build_report(d, log_lines=log_lines, progress=progress)
    if fmt == "json":
        _print_json(report)
    elif fmt == "markdown":
        sys.stdout.write(render_markdown(report))
    elif fmt == "text" or (fmt == "auto" and not sys.stdout.isatty()):
        print(render_text(report))
    elif fmt in ("rich", "auto"):
        render_rich(report, Console())
    else:
        raise KvmcoreError(f"unknown --format {fmt!r}")


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _command(name: str, dump: Path, vmlinux: Optional[Path], arch: Optional[str],
             json_out: bool, **kwargs: Any) -> None:
    from kvmcore import commands

    d = _open(dump, vmlinux, arch)
    data = getattr(commands, f"{name}_data")(d, **kwargs)
    if json_out:
        _print_json(data)
    else:
        print(getattr(commands, f"{name}_text")(data))


@app.command()
def ps(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
       arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """Every process and thread ('>' marks tasks that were on a CPU)."""
    _command("ps", dump, vmlinux, arch, json_out)


@app.command()
def dmesg(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
          arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """The kernel log."""
    _command("dmesg", dump, vmlinux, arch, json_out)


@app.command()
def mods(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
         arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """Loaded modules, with taints."""
    _command("mods", dump, vmlinux, arch, json_out)


@app.command("sys")
def sys_cmd(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
            arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """System and panic summary (as crash's `sys`)."""
    _command("sys", dump, vmlinux, arch, json_out)


@app.command()
def bt(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
       arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt,
       pid: Optional[int] = typer.Option(None, "--pid", help="backtrace of this task"),
       all_tasks: bool = typer.Option(False, "--all", "-a", help="every task")) -> None:
    """Backtrace of the panicking task (or --pid PID, or --all)."""
    _command("bt", dump, vmlinux, arch, json_out, pid=pid, all_tasks=all_tasks)


@app.command()
def info(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
         arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """Format, architecture and kernel release: the quickest look at a dump."""
    _command("info", dump, vmlinux, arch, json_out)


@app.command()
def sym(dump: Path = DumpArg, what: str = typer.Argument(..., help="a symbol name or an address"),
        vmlinux: Optional[Path] = typer.Argument(None, help="the kernel's vmlinux (optional)"),
        arch: Optional[str] = ArchOpt, json_out: bool = JsonOpt) -> None:
    """Look up a symbol's address, or symbolize an address (func+off/size [module])."""
    _command("sym", dump, vmlinux, arch, json_out, what=what)


@app.command()
def read(dump: Path = DumpArg, address: str = typer.Argument(..., help="kernel virtual address"),
         length: int = typer.Argument(64, help="bytes to read"),
         arch: Optional[str] = ArchOpt, physical: bool = typer.Option(
             False, "--phys", help="the address is physical"),
         json_out: bool = JsonOpt) -> None:
    """Hex dump of kernel virtual (or --phys physical) memory, with its translation."""
    _command("read", dump, None, arch, json_out, address=address, length=length,
             physical=physical)


@app.command()
def serve(dump: Path = DumpArg, vmlinux: Optional[Path] = VmlinuxArg,
          arch: Optional[str] = ArchOpt,
          listen: str = typer.Option("127.0.0.1:1234", "--listen", help="HOST:PORT"),
          stdio: bool = typer.Option(False, "--stdio", help="speak on stdin/stdout "
                                     "(target remote | kvmcore serve --stdio DUMP)")) -> None:
    """Serve the dump to gdb over the remote serial protocol, read-only."""
    from kvmcore import gdbserver

    d = _open(dump, vmlinux, arch)
    gdbserver.serve(d, listen=listen, stdio=stdio)


@app.command()
def symfile(dump: Path = DumpArg, output: Path = typer.Option(..., "-o", "--output"),
            arch: Optional[str] = ArchOpt) -> None:
    """Write an ELF symbol file for gdb from the dump's own kallsyms."""
    from kvmcore.symbols.symfile import write_dump_symbol_file

    note = write_dump_symbol_file(_open(dump, None, arch), str(output))
    print(f"wrote {output}: {note}; use: gdb {output} -ex "
          f"'target remote | kvmcore serve --stdio {dump}'")


def main() -> None:
    """Console-script entry: run the app, turning errors into one line each."""
    try:
        app(standalone_mode=False)
    except KvmcoreError as exc:
        print(f"kvmcore: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("kvmcore: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # usage errors (typer's click exceptions) and genuine bugs
        if callable(getattr(exc, "show", None)) and isinstance(getattr(exc, "exit_code", None),
                                                                 int):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("KVMCORE_DEBUG"):
            raise
        print(f"kvmcore: internal error: {type(exc).__name__}: {exc} "
              "(set KVMCORE_DEBUG=1 for a traceback)", file=sys.stderr)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
