"""The CLI's edge against hostile input (issue 12 §4, second pass): a wrong
vmlinux refused at open, symbol offsets never past a symbol's end, the KASLR
offset checked against kallsyms, `read` bounded and streamed, and every error
one line with a documented exit status. Each recipe is built here; the facts
asserted come from the manifests, readelf and System.map."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore.errors import SymbolError

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"
MANIFEST = json.loads((COMMITTED.parent / "manifest.json").read_text())
README = (ROOT / "README.md").read_text()


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kvmcore.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def one_line_error(p: subprocess.CompletedProcess, code: int) -> str:
    """The single stderr line of a failed command, after checking its exit status
    is `code` and that the README's exit-status paragraph documents it."""
    assert p.returncode == code, (p.returncode, p.stderr)
    assert "Traceback" not in p.stderr, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmcore: error: "), p.stderr
    assert re.search(rf"\b{code} [a-z]", exit_status_paragraph()), f"exit {code} not in README"
    return lines[0]


def exit_status_paragraph() -> str:
    start = README.index("Exit status:")
    return README[start:README.index("\n\n", start)]


def readelf_build_id(path: Path) -> str:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


# -- 1. a wrong vmlinux is refused at open -----------------------------------------------
def test_other_arch_vmlinux_refused(samples):
    arm = samples.vmlinux("arm64-kaslr")
    line = one_line_error(cli("ps", COMMITTED, arm), 4)
    assert str(arm) in line and "aarch64" in line and "x86_64" in line
    with pytest.raises(SymbolError):
        kvmcore.open(str(COMMITTED), str(arm), force_vmlinux=True)  # never forced


def test_other_build_vmlinux_refused_unless_forced(samples):
    other = samples.vmlinux("x86_64-kaslr")  # the same arch, another Debian build
    theirs = readelf_build_id(other)
    assert theirs != MANIFEST["build_id"]
    line = one_line_error(cli("info", COMMITTED, other), 4)
    assert theirs in line and MANIFEST["build_id"] in line and "--force-vmlinux" in line
    with pytest.raises(SymbolError, match=MANIFEST["build_id"]):
        kvmcore.open(str(COMMITTED), str(other))

    p = cli("ps", "--json", "--force-vmlinux", COMMITTED, other)
    assert p.returncode == 0, p.stderr
    warn = p.stderr.strip().splitlines()
    assert len(warn) == 1 and warn[0].startswith("kvmcore: warning: ") and theirs in warn[0]
    ppid = {t["pid"]: t["ppid"] for t in json.loads(p.stdout)["tasks"]}
    for proc in MANIFEST["processes"]:
        assert ppid[proc["pid"]] == proc["ppid"], proc
    dump = kvmcore.open(str(COMMITTED), str(other), force_vmlinux=True)
    assert dump.warnings and theirs in dump.warnings[0]


def _not_vmlinux_files(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    libc = next(p for p in (Path("/lib/x86_64-linux-gnu/libc.so.6"),
                            Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
                            Path("/lib64/libc.so.6")) if p.exists())
    return {
        "ls": (Path("/bin/ls"), "not a vmlinux"),
        "libc": (libc, "not a vmlinux"),
        "empty": (empty, "not a vmlinux: the file is empty"),
        "dump": (COMMITTED, "not a vmlinux"),
        "devnull": (Path("/dev/null"), "not a vmlinux: not a regular file"),
        "fifo": (fifo, "not a vmlinux: not a regular file"),
        "dir": (tmp_path, "not a vmlinux: not a regular file"),
    }


@pytest.mark.parametrize("case", ["ls", "libc", "empty", "dump", "devnull", "fifo", "dir"])
def test_not_a_vmlinux_is_an_error_at_open(tmp_path, case):
    path, message = _not_vmlinux_files(tmp_path)[case]
    line = one_line_error(cli("info", COMMITTED, path), 4)
    assert line.startswith(f"kvmcore: error: {path}: {message}"), line
    assert "no such vmlinux file" not in line


def test_missing_vmlinux_is_not_found(tmp_path):
    line = one_line_error(cli("info", COMMITTED, tmp_path / "nope"), 6)
    assert "no such vmlinux file" in line


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr", "i386-pae", "i386-nopae"])
def test_samples_own_vmlinux_accepted(samples, sid):
    s = samples.get_built(sid)
    vmlinux = samples.vmlinux(sid)
    assert readelf_build_id(vmlinux) == s.manifest["build_id"]
    dump = kvmcore.open(str(s.file("elf")), str(vmlinux))
    assert dump.warnings == [] and dump.vmlinux == str(vmlinux)
