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
from patching import other_build

import kvmcore
from kvmcore.errors import SymbolError

ROOT = Path(__file__).resolve().parent.parent
COMMITTED = ROOT / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"
MANIFEST = json.loads((COMMITTED.parent / "manifest.json").read_text())
README = (ROOT / "README.md").read_text()


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmcore.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


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
    return README[start : README.index("\n\n", start)]


def readelf_build_id(path: Path) -> str:
    out = subprocess.run(
        ["readelf", "-n", str(path)], capture_output=True, text=True, check=True
    ).stdout
    return re.search(r"Build ID: ([0-9a-f]+)", out).group(1)


# -- 1. a wrong vmlinux is refused at open -----------------------------------------------
def test_other_arch_vmlinux_refused(samples):
    arm = samples.vmlinux("arm64-kaslr")
    line = one_line_error(cli("ps", COMMITTED, arm), 4)
    assert str(arm) in line and "aarch64" in line and "x86_64" in line
    with pytest.raises(SymbolError):
        kvmcore.open(str(COMMITTED), str(arm), force_vmlinux=True)  # never forced


def test_other_build_vmlinux_refused_unless_forced(samples, tmp_path):
    other = other_build(samples.vmlinux("x86_64-kaslr"), tmp_path)
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
    libc = next(
        p
        for p in (
            Path("/lib/x86_64-linux-gnu/libc.so.6"),
            Path("/usr/lib/x86_64-linux-gnu/libc.so.6"),
            Path("/lib64/libc.so.6"),
        )
        if p.exists()
    )
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


# -- 2. no offset past a symbol's end ---------------------------------------------------
def nm_sized(path: Path) -> list[tuple[int, int, str]]:
    out = subprocess.run(
        ["nm", "-S", "--defined-only", "-n", str(path)], capture_output=True, text=True, check=True
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tT":
            rows.append((int(parts[0], 16), int(parts[1], 16), parts[3]))
    return rows


def test_address_in_a_gap_after_a_sized_function_is_bare(samples):
    from kvmcore.symbols import load_symbols
    from kvmcore.unwind.symbolic import CodeSymbols

    s = samples.get_built("x86_64-kaslr")
    vmlinux = samples.vmlinux("x86_64-kaslr")
    rows = nm_sized(vmlinux)
    addrs = sorted({a for a, _, _ in rows})
    # a function whose end (nm's size) is followed by padding no symbol starts in
    gap = next(
        a + size
        for a, size, _ in rows
        if size
        and a + size not in addrs
        and addrs[__import__("bisect").bisect_right(addrs, a)] > a + size
    )
    dump = kvmcore.open(str(s.file("elf")), str(vmlinux))
    table = load_symbols(dump)
    at = gap + dump.kernel_offset
    assert table.symbolize(at) == f"{at:#x}"
    assert CodeSymbols(dump).describe(at)[0] is None


def test_module_symbol_offset_past_its_size_is_bare():
    from kvmcore.symbols import load_symbols

    dump = kvmcore.open(str(COMMITTED))
    table = load_symbols(dump)
    table.add_module_symbols("pvpanic", [("pvpanic_mmio_match", 0xFFFFFFFFC0001000, 0x190, "d")])
    assert table.symbolize(0xFFFFFFFFC0001010) == "pvpanic_mmio_match+0x10/0x190 [pvpanic]"
    assert table.symbolize(0xFFFFFFFFC0001570) == "0xffffffffc0001570"


# -- 3. the KASLR offset checked against kallsyms -----------------------------------------
KASLR = int(
    re.search(
        r"^KERNELOFFSET=([0-9a-f]+)$", COMMITTED.read_bytes()[: 1 << 20].decode("latin-1"), re.M
    ).group(1),
    16,
)


def patched(tmp_path: Path, old: bytes, new: bytes) -> Path:
    """The committed dump with a same-length replacement in its VMCOREINFO."""
    assert len(old) == len(new)
    data = COMMITTED.read_bytes()
    assert data.count(old) == 1
    out = tmp_path / "vmcore"
    out.write_bytes(data.replace(old, new))
    return out


def test_kaslr_offset_from_vmcoreinfo_says_so():
    # the committed dump's KERNELOFFSET agrees with its runtime _stext - 0xffffffff81000000
    p = cli("info", COMMITTED)
    assert p.returncode == 0, p.stderr
    assert f"kaslr_offset: {KASLR:#x} (VMCOREINFO)" in p.stdout


@pytest.mark.parametrize("kind", ["zero", "not-hex", "key-missing", "negative", "huge"])
def test_bad_kerneloffset_measured_from_stext(tmp_path, kind):
    digits = b"%x" % KASLR  # replacements keep the line's length, whatever this build's offset
    n = len(digits)
    line = {
        "zero": b"KERNELOFFSET=" + b"0" * n,
        "not-hex": b"KERNELOFFSET=" + b"z" * n,
        "key-missing": b"KERNELOFFSXT=" + digits,
        "negative": b"KERNELOFFSET=-" + digits[1:],
        "huge": b"KERNELOFFSET=" + b"f" * n,
    }[kind]
    dump = patched(tmp_path, b"KERNELOFFSET=%x" % KASLR, line)
    p = cli("info", "--json", dump)
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["kaslr_offset"] == f"{KASLR:#x}"
    assert info["kaslr_offset_source"].startswith("kallsyms _stext")
    p = cli("sys", dump)
    assert re.search(rf"KASLR OFFSET: {KASLR:#x} \(kallsyms _stext", p.stdout), p.stdout


def test_duplicated_vmcoreinfo_keys_flagged(tmp_path):
    dump = patched(
        tmp_path, b"NUMBER(KERNEL_IMAGE_SIZE)=1073741824", b"KERNELOFFSET=3c000000\nOSRELEASE=evil"
    )
    info = json.loads(cli("info", "--json", dump).stdout)
    assert info["vmcoreinfo_conflicts"] == {
        "KERNELOFFSET": [f"{KASLR:x}", "3c000000"],
        "OSRELEASE": [MANIFEST["kernel_release"], "evil"],
    }
    assert info["kaslr_offset"] == f"{KASLR:#x}" and "2 times" in info["kaslr_offset_source"]
    assert "conflicting duplicates" in cli("sys", dump).stdout


def test_arm64_kaslr_offset_matches_the_boot_log(samples):
    s = samples.get_built("arm64-kaslr")
    boot = re.search(
        r"Kernel Offset: (0x[0-9a-f]+)",
        (s.file("elf").parent / "serial.log").read_text(errors="replace"),
    ).group(1)
    # the boot log's offset is from KIMAGE_VADDR; _stext sits 0x10000 above it in
    # both the link and the runtime image, so the offsets are the same
    assert kvmcore.open(str(s.file("elf"))).kernel_offset == int(boot, 16)


# -- 4. read: bounded, streamed -----------------------------------------------------------
def test_read_refuses_an_address_wider_than_the_word():
    line = one_line_error(cli("read", COMMITTED, "0x1ffffffffab200000", "16"), 5)
    assert "0x1ffffffffab200000" in line and "wider" in line


def test_read_past_the_end_of_memory_fails_before_reading():
    top = MANIFEST["qemu"]["memory_mb"] << 20
    p = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "kvmcore.cli.main",
            "read",
            "--phys",
            str(COMMITTED),
            "0x100000",
            "0xFF00000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 5 and p.stdout == "", p.stderr
    err = [
        ln
        for ln in p.stderr.strip().splitlines()
        if not ln.strip().isdigit() and not ln.startswith("Command exited")
    ]
    assert len(err) == 1 and f"{top:#x}" in err[0], p.stderr
    rss_kb = int(p.stderr.strip().splitlines()[-1])
    assert rss_kb < 200_000, rss_kb


def test_read_text_streams_and_json_is_capped():
    # 8 MiB of kernel text from _stext: kept at every dump level
    stext = 0xFFFFFFFF81000000 + KASLR
    p = subprocess.run(
        [
            "/usr/bin/time",
            "-f",
            "%M",
            sys.executable,
            "-m",
            "kvmcore.cli.main",
            "read",
            str(COMMITTED),
            hex(stext),
            "0x800000",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-500:]
    lines = p.stdout.splitlines()
    assert len(lines) == 0x800000 // 16 and lines[0].startswith(f"{stext:016x}:")
    assert int(p.stderr.strip().splitlines()[-1]) < 150_000  # KB: never the whole hex dump
    line = one_line_error(cli("read", "--json", COMMITTED, hex(stext), "0x1000001"), 2)
    assert "JSON" in line


# -- 5. one line, a documented exit status --------------------------------------------------
@pytest.mark.parametrize(
    "args,code",
    [
        (["read", COMMITTED, "zz"], 2),
        (["read", COMMITTED, "0xffffffffab200000", "-1"], 2),
        (["read", COMMITTED, "0xffffffffab200000", "ten"], 2),
        (["bt", COMMITTED, "--pid", "99999"], 6),
        (["bt", COMMITTED, "--pid", "x10"], 2),
        (["ps", COMMITTED, "--bogus"], 2),
        (["ps"], 2),
        (["serve", COMMITTED, "--listen", "nosuchhost.invalid:1"], 7),
        (["serve", COMMITTED, "--listen", "192.0.2.1:1"], 7),
        (["serve", COMMITTED, "--listen", "127.0.0.1:99999"], 2),
        (["info", "/nonexistent/vmcore"], 6),
    ],
)
def test_errors_are_one_line_with_a_documented_code(args, code):
    one_line_error(cli(*args, timeout=60), code)


def test_hex_pid_is_read_as_the_monitor_reads_it():
    pid = MANIFEST["panic"]["pid"]
    p = cli("bt", COMMITTED, "--pid", hex(pid))
    assert p.returncode == 0 and f"PID: {pid} " in p.stdout, p.stderr


def test_bind_in_use_is_exit_7():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        line = one_line_error(cli("serve", COMMITTED, "--listen", f"127.0.0.1:{port}"), 7)
    assert "cannot listen" in line


def test_unreadable_dump_is_exit_7(tmp_path, monkeypatch, capsys):
    # as root nothing is unreadable, and nobody cannot run this venv's python:
    # the host's refusal is injected where the CLI opens the file (in-process)
    import errno

    from cli.main import main
    from kvmcore import fileio

    real_open = os.open

    def refuse(path, *args, **kw):
        if str(path) == str(COMMITTED):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *args, **kw)

    monkeypatch.setattr(fileio.os, "open", refuse)
    monkeypatch.setattr(sys, "argv", ["kvmcore", "info", str(COMMITTED)])
    with pytest.raises(SystemExit) as done:
        main()
    err = capsys.readouterr().err
    fake = subprocess.CompletedProcess([], done.value.code, "", err)
    assert "Permission denied" in one_line_error(fake, 7)


def test_walk_error_code_is_documented():
    # a page-table or list cycle (test_freebsd.py::test_page_table_cycle builds one)
    from kvmcore.errors import WalkError

    assert WalkError.exit_code == 8
    assert "8 corrupt kernel data (a page-table or list cycle" in " ".join(
        exit_status_paragraph().split()
    )
