"""The command table (kvmcore.commands.COMMANDS): every entry is a CLI command
with the table's arguments and a `monitor` command, `monitor help` lists
them all, and the CLI prints exactly what the table's functions return.
Facts about the dump come from the committed sample's manifest."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import typer.main

import kvmcore
from kvmcore.cli.main import app
from kvmcore.commands import BT, COMMANDS, PS, READ
from kvmcore.errors import KvmcoreError
from kvmcore.gdbserver.target import DumpTarget

ROOT = Path(__file__).resolve().parent.parent
SMALL = ROOT / "sample_dumps" / "committed" / "x86_64-small"
DUMP = SMALL / "vmcore.mdf-d31-c"
MANIFEST = json.loads((SMALL / "manifest.json").read_text())
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]
# what each command needs on a command line; the rest of its arguments are optional
LINE_ARGS = {
    "sym": ["linux_banner"],
    "read": ["0x1000", "16", "--phys"],
    "analyze": [],
    "p": ["init_task.comm"],
    "struct": ["list_head"],
    "union": ["__sifields"],
    "whatis": ["init_task"],
    "rd": ["jiffies"],
    "list": ["init_task.tasks"],
    "tree": ["vmap_area_root"],
    "vtop": ["init_task"],
    "ptov": ["0x1000"],
    "foreach": ["1", "files"],
    "search": ["init_task", "-l", "2"],
}


def kvmcore_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        KVMCORE + [str(a) for a in args], capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def target():
    with kvmcore.open(str(DUMP)) as dump:
        yield DumpTarget(dump)


def test_every_entry_is_a_cli_command_with_its_arguments():
    group = typer.main.get_command(app)
    for name, cmd in COMMANDS.items():
        assert name in group.commands, f"no CLI command {name}"
        click_cmd = group.commands[name]
        assert click_cmd.help == cmd.help
        params = {p.name: p for p in click_cmd.params}
        for p in cmd.params:
            assert p.name in params, f"{name}: the CLI lacks {p.name}"
            cp = params[p.name]
            if p.positional:
                assert cp.param_type_name == "argument" and cp.required == p.required
            else:
                assert cp.param_type_name == "option" and tuple(cp.opts) == p.flags
                assert cp.is_flag == (p.type is bool)
            if not p.required:  # numbers are text to the CLI (0x10 as `monitor` reads it)
                want = str(p.default) if p.type is int and p.default is not None else p.default
                assert cp.default == want
        # how the dump is opened: every dump-viewing command takes these
        assert {"dump", "arch", "json_out", "system_map"} <= set(params), name


def test_every_entry_is_a_monitor_command(target):
    for name in COMMANDS:
        line = " ".join([name] + LINE_ARGS.get(name, []))
        out = target.monitor(line)
        assert not out.startswith(("unknown monitor command", f"monitor {name}:")), out[:500]
        assert out.strip()


def test_monitor_help_lists_the_table(target):
    lines = target.monitor("help").splitlines()
    assert lines[0].startswith("kvmcore monitor commands")
    listed = [line.split()[0] for line in lines[1:]]
    assert listed == ["help", "modules"] + list(COMMANDS)  # modules: the server's own
    assert target.monitor("") == target.monitor("help")


def test_monitor_takes_the_cli_arguments(target):
    panic = MANIFEST["panic"]
    for line in (f"bt {panic['pid']}", f"bt --pid {panic['pid']}", f"bt --pid={panic['pid']}"):
        first = target.monitor(line).splitlines()[0]
        assert first.startswith(f"PID: {panic['pid']} ") and f'"{panic["comm"]}"' in first
    assert target.monitor("bt").splitlines()[0].startswith(f"PID: {panic['pid']} ")
    heads = [line for line in target.monitor("bt -a").splitlines() if line.startswith("PID: ")]
    pids = {int(line.split()[1]) for line in heads}
    assert {p["pid"] for p in MANIFEST["processes"]} <= pids
    assert target.monitor("bt nine").startswith("monitor bt: pid: not a number")
    assert target.monitor("read").startswith("monitor read: missing address")
    assert target.monitor("nosuch").startswith("unknown monitor command 'nosuch'")


def test_monitor_read_of_the_banner(target):
    """sym then read: the words, put back in little-endian order, are the banner."""
    address = target.monitor("sym linux_banner").strip()
    text = target.monitor(f"read {address} 32")
    raw = b"".join(
        int(word, 16).to_bytes(8, "little")
        for line in text.splitlines()
        for word in line.split()[1:]
    )
    assert raw.startswith(f"Linux version {MANIFEST['kernel_release']}".encode())


def test_cli_json_is_the_table_data():
    p = kvmcore_cli("ps", DUMP, "--json")
    assert p.returncode == 0, p.stderr
    cli = json.loads(p.stdout)
    with kvmcore.open(str(DUMP)) as dump:
        assert cli == json.loads(json.dumps(PS.data(dump)))
        text = PS.run(dump)
    tasks = {(t["pid"], t["comm"]) for t in cli["tasks"]}
    assert {(proc["pid"], proc["comm"]) for proc in MANIFEST["processes"]} <= tasks
    p = kvmcore_cli("ps", DUMP)
    assert p.returncode == 0 and p.stdout == text + "\n"


def test_parse():
    assert BT.parse(["115"]) == {"pid": 115}
    assert BT.parse(["-a"]) == {"all_tasks": True}
    assert BT.parse(["--all", "--pid", "7"]) == {"all_tasks": True, "pid": 7}
    assert READ.parse(["0xffff0000", "0x20", "--phys"]) == {
        "address": "0xffff0000",
        "length": 32,
        "physical": True,
    }
    assert PS.parse([]) == {}
    for cmd, words in (
        (PS, ["x"]),
        (BT, ["--pid"]),
        (BT, ["-a=1"]),
        (BT, ["--bogus"]),
        (READ, []),
        (READ, ["1", "2", "3"]),
    ):
        with pytest.raises(KvmcoreError, match="usage: "):
            cmd.parse(words)


def test_sym_resolves_module_addresses():
    """`sym ADDR` names module code as `bt` does (issue 12): a function of a
    module the guest's init loaded (the sample table's insmod list) is
    described with that module's name at an address inside it."""
    from sample_dumps.table import SAMPLES

    spec = next(s for s in SAMPLES if s.id == MANIFEST["id"])
    module = spec.arch.modules[0]  # insmod'ed by the guest init
    with kvmcore.open(str(DUMP)) as dump:
        table = list(dump.kernel.symbol_table())
    counts = Counter(sym.name for sym in table)  # init_module etc. are in every module
    name = next(
        sym.name
        for sym in table
        if sym.module == module and sym.type in "tT" and counts[sym.name] == 1
    )
    addr = int(kvmcore_cli("sym", DUMP, name).stdout.strip(), 16)
    out = kvmcore_cli("sym", DUMP, hex(addr + 1))
    assert out.returncode == 0, out.stderr
    text = out.stdout.strip()
    assert "+0x1/" in text and text.endswith(f"[{module}]"), text
    described = text.split("+", 1)[0]  # the name, or an alias at the same address
    assert int(kvmcore_cli("sym", DUMP, described).stdout.strip(), 16) == addr
