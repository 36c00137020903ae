"""`kvmcore core` (issue 16.4): the dump as an ELF core gdb opens natively.
gdb reads the same bytes as `kvmcore read`, shows the manifest's tasks as
threads with the panicking task current, and backtraces it with the symbol
file through sysrq_handle_crash; readelf sees a valid sparse core."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"
DUMP = COMMITTED / "vmcore.mdf-d31-c"
MANIFEST = json.loads((COMMITTED / "manifest.json").read_text())
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


def cli(*args: str) -> str:
    out = subprocess.run([*KVMCORE, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return out.stdout


def gdb(*commands: str, core: Path) -> str:
    if not shutil.which("gdb"):
        pytest.fail("gdb is missing: apt-get install gdb")
    args = ["gdb", "-nx", "-batch"]
    for c in commands:
        args += ["-ex", c]
    out = subprocess.run([*args, "-c", str(core)], capture_output=True, text=True, timeout=600)
    return out.stdout + out.stderr


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    d = tmp_path_factory.mktemp("core")
    core, sym = d / "vmcore.core", d / "vmlinux.sym"
    line = cli("core", DUMP, "-o", core)
    cli("symfile", DUMP, "-o", sym)
    offset = re.search(r"symbol-file -o (0x[0-9a-f]+)", line)[1]
    return core, sym, offset


def test_core_is_a_sparse_elf_core(written):
    core, _, _ = written
    header = subprocess.run(
        ["readelf", "-h", "-l", "-n", str(core)], capture_output=True, text=True, check=True
    ).stdout
    assert "CORE (Core file)" in header and "X86-64" in header
    assert header.count("NT_PRSTATUS") > len(MANIFEST["processes"])
    assert "VMCOREINFO" in header
    assert core.stat().st_blocks * 512 < core.stat().st_size  # holes are not stored


def test_gdb_threads_are_the_tasks(written):
    core, _, _ = written
    out = gdb("info threads", core=core)
    lwps = {int(n) for n in re.findall(r"LWP (\d+)", out)}
    for proc in MANIFEST["processes"]:
        assert proc["pid"] in lwps, proc
    current = re.search(r"^\*\s+1\s+LWP (\d+)", out, re.M)
    assert current and int(current[1]) == MANIFEST["panic"]["pid"]


def test_gdb_reads_what_kvmcore_reads(written, tmp_path):
    core, _, _ = written
    banner = int(cli("sym", DUMP, "linux_banner").strip(), 16)
    stack = int(json.loads(cli("task", DUMP, "-R", "stack", "--json"))["fields"]["stack"])
    for addr, length in ((banner, 4096), (banner & ~0xFFFFF, 1 << 20), (stack, 16384)):
        out = tmp_path / f"{addr:x}.bin"
        gdb(f"dump binary memory {out} {addr:#x} {addr + length:#x}", core=core)
        ours = bytes.fromhex(json.loads(cli("read", DUMP, hex(addr), str(length), "--json"))["hex"])
        assert out.read_bytes() == ours, hex(addr)
    text = gdb(f"x/s {banner:#x}", core=core)
    assert f"Linux version {MANIFEST['kernel_release']}" in text


def test_gdb_backtraces_the_panic_with_the_symfile(written):
    core, sym, offset = written
    out = gdb(f"symbol-file -o {offset} {sym}", "bt", core=core)
    frames = re.findall(r"^#\d+\s+0x[0-9a-f]+ in (\S+)", out, re.M)
    assert "panic" in frames and "sysrq_handle_crash" in frames, out
