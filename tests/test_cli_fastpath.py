"""The CLI's fast path (cli/fastpath.py) against the typer app (cli/app.py).

Both parse a command line into one call of cli/actions.py (run_command or
run_analyze). Here each is given the same command lines with that call
replaced by a recorder: for every line the fast path takes, it must record
exactly what typer records; a line it is unsure of it must leave to typer
(returning False, having called nothing). Then the two paths run for real on
the committed sample, in subprocesses: same stdout, stderr and exit status."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kvmcore import commands
from kvmcore.cli import actions, app, fastpath

COMMITTED = (
    Path(__file__).resolve().parent.parent
    / "sample_dumps"
    / "committed"
    / "x86_64-small"
    / "vmcore.mdf-d31-c"
)

pytestmark = pytest.mark.fast

# lines the fast path must take, each as typer reads it
TAKEN = [
    ["ps", "D"],
    ["ps", "D", "V"],
    ["ps", "D", "--json"],
    ["ps", "--json", "D", "V", "--arch", "x86_64"],
    ["ps", "D", "--arch=x86_64", "--system-map", "M"],
    ["ps", "D", "--force-vmlinux", "V"],
    ["--partial", "dmesg", "D"],
    ["info", "D"],
    ["mods", "D", "--json"],
    ["sys", "D"],
    ["bt", "D"],
    ["bt", "D", "--pid", "1"],
    ["bt", "D", "--pid=0x10"],
    ["bt", "D", "-a"],
    ["bt", "D", "--all", "V"],
    ["bt", "D", "-c", "1"],
    ["bt", "D", "--cpu", "010", "--module-dir", "X"],
    ["sym", "D", "panic"],
    ["sym", "D", "0xffffffff81000000", "V"],
    ["p", "D", "init_task.comm"],
    ["p", "D", "init_task.comm", "--vmlinux", "V"],
    ["struct", "D", "task_struct", "-o"],
    ["rd", "D", "init_task", "64"],
    ["list", "D", "init_task.tasks", "-m", "task_struct.tasks", "-s", "pid,comm"],
    ["task", "D", "--pid", "151"],
    ["kmem", "D", "-i"],
    ["kmem", "D", "-s"],
    ["files", "D", "--pid", "1"],
    ["runq", "D"],
    ["log", "D"],
    ["analyze", "D"],
    ["analyze"],
    ["analyze", "D", "V", "--format", "text"],
    ["analyze", "D", "--json", "--log-lines", "5"],
    ["analyze", "--format=markdown", "D"],
]

# lines the fast path must leave to typer
LEFT = [
    [],
    ["--help"],
    ["ps", "--help"],
    ["ps"],
    ["ps", "D", "V", "extra"],
    ["ps", "D", "--bogus"],
    ["ps", "D", "--json=1"],
    ["ps", "D", "--"],
    ["ps", ""],
    ["ps", "D", "--arch"],
    ["ps", "D", "--arch", "-x"],
    ["bt", "D", "-ac", "1"],
    ["bt", "D", "-c1"],
    ["bt", "D", "--pid", "-1"],
    ["sym", "D"],
    ["p", "D", "init_task", "V"],
    ["read", "D", "0x0"],
    ["serve", "D"],
    ["shell", "D"],
    ["triage", "D"],
    ["analyze", "D", "V", "W"],
    ["nosuchcommand", "D"],
]


def _record(monkeypatch) -> list:
    calls: list = []

    def run_command(cmd, *args, **kwargs):
        calls.append(("command", cmd.name, args, kwargs))

    def run_analyze(*args):
        calls.append(("analyze", args))

    for module in (actions, app):
        monkeypatch.setattr(module, "run_command", run_command)
        monkeypatch.setattr(module, "run_analyze", run_analyze)
    return calls


def _typer_call(monkeypatch, argv: list[str]) -> list:
    calls = _record(monkeypatch)
    monkeypatch.setattr(sys, "argv", ["kvmcore", *argv])
    with contextlib.suppress(Exception):  # typer's usage errors: no call recorded
        app.app(args=argv, standalone_mode=False)
    return calls


@pytest.mark.parametrize("argv", TAKEN, ids=" ".join)
def test_fast_path_calls_what_typer_calls(monkeypatch, argv):
    calls = _record(monkeypatch)
    assert fastpath.run(argv) is True
    fast_partial = actions.PARTIAL["value"]
    expected = _typer_call(monkeypatch, argv)
    assert len(expected) == 1, f"typer did not run {argv}"
    assert calls == expected
    assert fast_partial == actions.PARTIAL["value"]


@pytest.mark.parametrize("argv", LEFT, ids=lambda a: " ".join(a) or "(none)")
def test_fast_path_leaves_unsure_lines_to_typer(monkeypatch, argv):
    calls = _record(monkeypatch)
    assert fastpath.run(argv) is False
    assert calls == []


def test_every_table_command_is_on_the_fast_path():
    """The fast path knows each command the typer app builds from the table."""
    names = {c.name for c in commands.VIEW} | {c.name for c in commands.EXPLORE}
    assert names | {"analyze", "read"} == set(commands.COMMANDS)


def test_fast_path_is_off_with_kvmcore_cli_fast_0(monkeypatch):
    calls = _record(monkeypatch)
    monkeypatch.setenv("KVMCORE_CLI_FAST", "0")
    assert fastpath.run(["ps", "D"]) is False
    assert calls == []


def _cli(argv: list[str], fast: bool) -> subprocess.CompletedProcess:
    env = dict(os.environ, KVMCORE_CLI_FAST="1" if fast else "0")
    return subprocess.run(
        [sys.executable, "-m", "kvmcore.cli.main", *argv],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["info", str(COMMITTED)],
        ["ps", str(COMMITTED), "--json"],
        ["bt", str(COMMITTED), "--pid", "notanumber"],
        ["sym", str(COMMITTED), "no_such_symbol_here"],
        ["analyze", str(COMMITTED), "--format", "text", "--log-lines", "3"],
        ["analyze", str(COMMITTED), "--format", "bogus"],
        ["info", str(COMMITTED) + ".missing"],
    ],
    ids=lambda a: " ".join(Path(w).name for w in a),
)
def test_fast_and_typer_paths_print_the_same(argv):
    fast, slow = _cli(argv, True), _cli(argv, False)
    assert (fast.returncode, fast.stdout, fast.stderr) == (
        slow.returncode,
        slow.stdout,
        slow.stderr,
    )
