"""Fixtures' plumbing for tests/test_symbols_types.py: the real samples and
independent oracles (System.map text, nm, readelf, drgn)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

SAMPLE_IDS = ["x86_64-kaslr", "x86_64-nokaslr", "arm64-kaslr", "arm64-nokaslr"]
HOW_TO_GET = "build them with `python -m sample_dumps build --with-dbg` (see sample_dumps/)"


def sample(sample_id: str):
    from sample_dumps import cache_root
    from sample_dumps.catalog import load_samples

    samples = load_samples()
    if sample_id not in samples:
        pytest.fail(f"sample {sample_id} missing under {cache_root() / 'samples'}: {HOW_TO_GET}")
    s = samples[sample_id]
    if s.vmlinux() is None or s.system_map() is None:
        pytest.fail(f"sample {sample_id}: -dbg vmlinux/System.map missing: {HOW_TO_GET}")
    return s


def system_map(path: Path) -> dict[str, set[tuple[int, str]]]:
    """name -> {(link address, type)} straight from the System.map text."""
    out: dict[str, set[tuple[int, str]]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.setdefault(parts[2], set()).add((int(parts[0], 16), parts[1]))
    return out


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        pytest.fail(f"{name} not found: apt-get install {'gdb' if 'gdb' in name else 'binutils'}")
    return path


def nm_size(vmlinux: Path, symbol: str) -> int:
    out = subprocess.run(
        [tool("nm"), "-S", str(vmlinux)], capture_output=True, text=True, check=True
    ).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[3] == symbol:
            return int(parts[1], 16)
    raise AssertionError(f"nm -S shows no size for {symbol}")


def readelf_section_bytes(vmlinux: Path, section: str) -> bytes:
    out = subprocess.run(
        [tool("readelf"), "-SW", str(vmlinux)], capture_output=True, text=True
    ).stdout
    for line in out.splitlines():
        m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", line)
        if m and m.group(1) == section:
            off, size = int(m.group(3), 16), int(m.group(4), 16)
            with open(vmlinux, "rb") as f:
                f.seek(off)
                return f.read(size)
    raise AssertionError(f"readelf shows no {section} in {vmlinux}")


def drgn_program(s):
    try:
        import drgn
    except ImportError:
        pytest.fail("drgn missing: pip install drgn (the test extra)")
    prog = drgn.program_from_core_dump(str(s.file("elf")))
    prog.load_debug_info([str(s.vmlinux())], default=False, main=True)
    kernel = prog.main_module()
    assert kernel.debug_file_path, "drgn did not take the -dbg vmlinux's DWARF"
    return prog
