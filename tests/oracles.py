"""Independent oracles for the tests: drgn (PyPI) reading the same dump with
the Debian -dbg vmlinux. Facts come from here or from the manifests, never
from kvmcore itself."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

import pytest


def drgn_module():
    try:
        import drgn
    except ImportError:
        pytest.fail(
            "drgn is not importable: install the test extra "
            "(.venv/bin/pip install -e '.[test]', or ./dev.sh test)",
            pytrace=False,
        )
    return drgn


@lru_cache(maxsize=8)
def drgn_program(dump: str, vmlinux: str):
    drgn = drgn_module()
    prog = drgn.Program()
    prog.set_core_dump(dump)
    prog.load_debug_info([vmlinux], default=False, main=False)
    return prog


@lru_cache(maxsize=8)
def drgn_tasks(dump: str, vmlinux: str) -> dict[int, tuple[int, int, str]]:
    """pid -> (tgid, parent's tgid, comm) of every task drgn finds (no idle tasks)."""
    from drgn.helpers.linux.pid import for_each_task

    out = {}
    for t in for_each_task(drgn_program(dump, vmlinux)):
        out[t.pid.value_()] = (
            t.tgid.value_(),
            t.real_parent.tgid.value_(),
            t.comm.string_().decode(),
        )
    return out


@lru_cache(maxsize=8)
def drgn_log(dump: str, vmlinux: str) -> list[tuple[int, int, str]]:
    """(seq, timestamp ns, text) of every printk record."""
    from drgn.helpers.linux.printk import get_printk_records

    return [
        (r.seq, r.timestamp, r.text.decode(errors="replace"))
        for r in get_printk_records(drgn_program(dump, vmlinux))
    ]


def gdb_binary(arch: str) -> str:
    """Debian's gdb for x86_64 dumps, gdb-multiarch for the others."""
    name = "gdb" if arch == "x86_64" else "gdb-multiarch"
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: apt-get install gdb gdb-multiarch", pytrace=False)
    return path


@lru_cache(maxsize=16)
def gdb_static_value(arch: str, vmlinux, expr: str) -> int:
    """An integer expression evaluated by gdb on the vmlinux file alone (no target:
    a variable's initial value from .data), e.g. jiffies' INITIAL_JIFFIES."""
    p = subprocess.run(
        [gdb_binary(arch), "-nx", "-batch", "-ex", f"p/d {expr}", str(vmlinux)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    m = re.search(r"^\$1 = (-?\d+)$", p.stdout, re.M)
    assert m, f"gdb could not evaluate {expr} in {vmlinux}: {p.stdout[-2000:]}{p.stderr[-2000:]}"
    return int(m[1])


def readelf_vmcoreinfo(path: Path) -> dict[str, str]:
    """VMCOREINFO decoded by readelf (independent of kvmcore's note parser)."""
    if not shutil.which("readelf"):
        pytest.fail("readelf is missing: apt-get install binutils")
    out = subprocess.run(
        ["readelf", "-n", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^\s*VMCOREINFO\s[^\n]*?description data:((?: [0-9a-f]{2})+)", out, re.M | re.S)
    assert m, f"readelf finds no VMCOREINFO note in {path}"
    text = bytes.fromhex(m[1].replace(" ", "")).decode()
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
