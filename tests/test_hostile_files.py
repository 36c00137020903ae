"""Files kvmcore cannot map, and files that are not (whole) vmlinux images
(issue 12 §4.3, §4.4): each is read anyway (positional reads) or refused on one
line with its exit code, never an internal error."""

from __future__ import annotations

import errno
import os
import resource
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore import fileio
from kvmcore.errors import SymbolError
from kvmcore.symbols.vmlinux import VmlinuxFile

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"
LS = Path("/bin/ls")


def _cli(*args: str, preexec=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        preexec_fn=preexec,
    )


def _manifest() -> dict:
    import json

    return json.loads((COMMITTED.parent / "manifest.json").read_text())


# -- §4.3: a dump that cannot be mapped --------------------------------------------------
def test_unmappable_dump_is_read_with_pread(monkeypatch):
    def no_memory(*args, **kwargs):
        raise OSError(errno.ENOMEM, os.strerror(errno.ENOMEM))

    monkeypatch.setattr(fileio.mmap, "mmap", no_memory)
    f = fileio.DumpFile(COMMITTED)
    assert not f.mapped
    raw = COMMITTED.read_bytes()
    for off, n in [(0, 8), (4096, 100), (len(raw) - 10, 10), (12345, 70000), (len(raw), 0)]:
        assert f.pread(off, n) == raw[off : off + n]
    with pytest.raises(kvmcore.errors.TruncatedDumpError):
        f.pread(len(raw) - 4, 8)
    f.close()
    d = kvmcore.open(str(COMMITTED))  # the whole model, through positional reads
    assert not d.mem.source.mapped
    assert d.vmcoreinfo.get("OSRELEASE") == _manifest()["kernel_release"]


def test_dump_larger_than_the_address_space_limit(tmp_path):
    """A child under RLIMIT_AS of 2 GiB analyzes a 3 GiB dump (the committed one
    with a sparse tail): mmap fails with ENOMEM, pread carries on."""
    big = tmp_path / "big.kdump"
    shutil.copyfile(COMMITTED, big)
    os.truncate(big, 3 << 30)
    limit = 2 << 30

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "import mmap, sys\n"
            "f = open(sys.argv[1], 'rb')\n"
            "try:\n    mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)\n"
            "except OSError as e:\n    print(e.errno)\n",
            str(big),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=cap,
    )
    assert probe.stdout.strip() == str(errno.ENOMEM), "the limit must make mmap fail"
    p = _cli("analyze", "--format", "text", str(big), preexec=cap)
    assert p.returncode == 0, p.stderr
    panic = _manifest()["panic"]
    assert f"Kernel panic: {panic['message']}" in p.stdout
    assert f"task: {panic['pid']} ({panic['comm']})" in p.stdout


# -- §4.4: malformed ELF files given as the vmlinux --------------------------------------
def _patched(tmp_path: Path, name: str, data: bytes, *edits: tuple[int, str, int]) -> Path:
    b = bytearray(data)
    for off, fmt, value in edits:
        struct.pack_into(fmt, b, off, value)
    out = tmp_path / name
    out.write_bytes(bytes(b))
    return out


def _ls_header() -> tuple[bytes, int, int, int]:
    data = LS.read_bytes()
    assert data[:5] == b"\x7fELF\x02" and data[5] == 1, "a 64-bit little-endian /bin/ls"
    (shoff,) = struct.unpack_from("<Q", data, 40)
    shentsize, shnum = struct.unpack_from("<HH", data, 58)
    return data, shoff, shentsize, shnum


def _bad_elves(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    data, shoff, shentsize, shnum = _ls_header()
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    cut = tmp_path / "ls-cut"
    cut.write_bytes(data[: shoff + shentsize * shnum // 2])  # half its section headers
    return {
        "empty": (empty, "not a vmlinux: the file is empty"),
        "ls": (LS, "not a vmlinux: a user-space program"),
        "cut": (cut, "section header table .* runs past the end of the file"),
        "past-end": (
            _patched(tmp_path, "ls-shoff", data, (40, "<Q", len(data) - 100)),
            "section header table .* runs past the end of the file",
        ),
        "shentsize": (_patched(tmp_path, "ls-shent", data, (58, "<H", 8)), "section header size 8"),
        "core": (
            _patched(tmp_path, "ls-core", data, (16, "<H", 4)),
            "not a vmlinux: an ELF core file",
        ),
        "section-past-end": (
            _patched(tmp_path, "ls-sec", data, (shoff + shentsize + 32, "<Q", 1 << 40)),
            "section .* runs past the end of the file",
        ),
        "text": (
            _patched(tmp_path, "text", b"hello, not an ELF\n" * 10),
            "not a vmlinux: not an ELF file",
        ),
    }


@pytest.mark.parametrize(
    "case", ["empty", "ls", "cut", "past-end", "shentsize", "core", "section-past-end", "text"]
)
def test_malformed_vmlinux_is_a_symbol_error(tmp_path, case):
    path, message = _bad_elves(tmp_path)[case]
    with pytest.raises(SymbolError, match=message) as exc:
        VmlinuxFile(str(path))
    assert str(exc.value).startswith(f"{path}: ")


@pytest.mark.parametrize("case", ["empty", "ls", "past-end", "shentsize"])
def test_cli_malformed_vmlinux_one_line_exit_4(tmp_path, case):
    path, _ = _bad_elves(tmp_path)[case]
    p = _cli("sym", str(COMMITTED), "panic", str(path))
    assert p.returncode == 4, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"kvmcore: error: {path}: "), p.stderr


def test_truncated_sample_vmlinux(samples, tmp_path):
    real = samples.vmlinux("x86_64-kaslr")
    cut = tmp_path / "vmlinux-cut"
    with open(real, "rb") as src, open(cut, "wb") as dst:
        dst.write(src.read(1 << 20))
    with pytest.raises(SymbolError, match="runs past the end of the file"):
        VmlinuxFile(str(cut))
    whole = VmlinuxFile(str(real))  # and the real one is still a vmlinux
    assert whole.has_symtab() and whole.section(".init.text") is not None
    whole.close()
