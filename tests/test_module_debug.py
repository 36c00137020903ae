"""Module debug files (.ko with DWARF from the -dbg package) on the x86_64-kaslr
sample, whose panicking CPU stopped in pvpanic's panic notifier: `bt
--module-dir` names the module frame with file:line, and gdb through `kvmcore
serve` with the printed add-symbol-file lines shows it too. Oracles: binutils'
addr2line on the .ko (its own relocation of the DWARF, at the pc's offset into
.text) and gdb's own `bt`, never kvmcore's output."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore import commands
from kvmcore.errors import NotFoundError
from kvmcore.gdbserver.server import gdb_command_line, module_symbol_files
from kvmcore.unwind.modlines import module_lines
from kvmcore.unwind.srclines import frame_is_exact

SID = "x86_64-kaslr"
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]
PVPANIC_C = "drivers/misc/pvpanic/pvpanic.c"


@pytest.fixture(scope="module")
def moddir(samples) -> Path:
    d = samples.get_built(SID).module_debug_dir()
    if d is None or not list(d.rglob("pvpanic.ko")):
        pytest.fail(
            f"no module debug files for {SID}: run `python -m sample_dumps build --with-dbg` "
            "(it adds them to an already extracted -dbg directory)",
            pytrace=False,
        )
    return d


@pytest.fixture(scope="module")
def panic_frame(samples, moddir):
    """kvmcore's frame #0 of the panicking task: (pc, exact, .text address of pvpanic)."""
    s = samples.get_built(SID)
    with kvmcore.open(str(s.file("elf"))) as dump:
        frame = dump.backtrace(dump.kernel.panic_task()).frames[0]
        text = next(m for m in dump.kernel.modules() if m.name == "pvpanic").sections[".text"]
        return frame.pc, frame_is_exact(frame), frame.module, text


def _addr2line(ko: Path, offset: int) -> list[tuple[str, str, int]]:
    """(function, file, line) from addr2line -i, innermost first."""
    if shutil.which("addr2line") is None:
        pytest.fail("addr2line is missing: apt-get install binutils", pytrace=False)
    out = subprocess.run(
        ["addr2line", "-f", "-i", "-j", ".text", "-e", str(ko), f"{offset:#x}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    rows = []
    for func, where in zip(out[0::2], out[1::2]):
        file, _, line = where.rpartition(":")
        rows.append((func, file, int(line.split()[0])))
    return rows


@pytest.fixture(scope="module")
def oracle(moddir, panic_frame):
    pc, exact, module, text = panic_frame
    assert module == "pvpanic"
    offset = pc - text - (0 if exact else 1)
    rows = _addr2line(next(moddir.rglob("pvpanic.ko")), offset)
    assert rows[-1][0] == "pvpanic_panic_notify", rows
    assert all(f.endswith(PVPANIC_C) for _, f, _ in rows), rows
    return rows


def test_bt_module_dir_names_the_module_frame_with_addr2lines_line(samples, moddir, oracle):
    s = samples.get_built(SID)
    p = subprocess.run(
        [*KVMCORE, "bt", str(s.file("elf")), "--module-dir", str(moddir)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    frame0 = next(ln for ln in p.stdout.splitlines() if ln.lstrip().startswith("#0 "))
    m = re.search(r"pvpanic_panic_notify\+\S+ \[pvpanic\] .* at (\S+):(\d+)$", frame0)
    assert m, p.stdout
    assert m.group(1) == PVPANIC_C and int(m.group(2)) == oracle[-1][2], (p.stdout, oracle)
    # the functions inlined there (pvpanic_send_event), printed above it
    inlined = re.findall(r"\(inlined\) (\S+) \[pvpanic\] at (\S+):(\d+)", p.stdout)
    assert [(f, int(n)) for f, _, n in inlined][: len(oracle) - 1] == [
        (f, n) for f, _, n in oracle[:-1]
    ], (p.stdout, oracle)


def test_module_lines_with_the_vmlinux_and_in_the_report(samples, moddir, oracle):
    """kvmcore.open(module_dir=): the same through the Python API, with the
    vmlinux's lines for the other frames, and in `analyze --json`."""
    s = samples.get_built(SID)
    with kvmcore.open(
        str(s.file("mdf-d31-c")), vmlinux=str(samples.vmlinux(SID)), module_dir=str(moddir)
    ) as dump:
        frames = dump.backtrace(dump.kernel.panic_task()).frames
        assert (frames[0].file, frames[0].line) == (PVPANIC_C, oracle[-1][2])
        assert [(i.function, i.line) for i in frames[0].inlined] == [
            (f, n) for f, _, n in oracle[:-1]
        ]
        assert frames[1].file == "kernel/notifier.c"  # the vmlinux's, as before
        lines = module_lines(dump)
        assert lines is not None and not lines.notes, lines.notes
        assert set(lines.files) == {"pvpanic", "pvpanic_mmio", "qemu_fw_cfg"}
        report = json.dumps(commands.ANALYZE.data(dump))
    assert f'"file": "{PVPANIC_C}", "line": {oracle[-1][2]}' in report


def test_a_debug_file_of_another_build_is_refused(samples, moddir, tmp_path):
    """pvpanic.ko copied in as pvpanic-mmio.ko: its build id is not the loaded
    pvpanic_mmio's, so it is not used (and said so)."""
    s = samples.get_built(SID)
    shutil.copy(next(moddir.rglob("pvpanic.ko")), tmp_path / "pvpanic-mmio.ko")
    with kvmcore.open(str(s.file("elf")), module_dir=str(tmp_path)) as dump:
        lines = module_lines(dump)
        assert lines is not None and "pvpanic_mmio" not in lines.files
        assert any("another build" in n for n in lines.notes), lines.notes
        assert module_symbol_files(dump) == []
    with pytest.raises(NotFoundError):
        kvmcore.open(str(s.file("elf")), module_dir=str(tmp_path / "missing"))


def test_gdb_shows_the_module_frame_with_the_printed_add_symbol_file_lines(samples, moddir, oracle):
    s = samples.get_built(SID)
    with kvmcore.open(
        str(s.file("elf")), vmlinux=str(samples.vmlinux(SID)), module_dir=str(moddir)
    ) as dump:
        adds = module_symbol_files(dump)
        line = gdb_command_line(
            dump, stdio=True, serve_command=f"{sys.executable} -m kvmcore.gdbserver"
        )
    assert len(adds) == 3 and all(a.startswith("add-symbol-file ") for a in adds), adds
    assert all(f"-ex {shlex.quote(a)}" in line for a in adds), line
    pv = next(a for a in adds if "/pvpanic.ko " in a)
    assert re.search(r" -s \.text 0x[0-9a-f]+ ", pv) and " -s .data 0x" in pv, pv
    argv = shlex.split(line)
    argv[1:1] = ["-nx", "-batch", "-ex", "set width 0", "-ex", "set height 0"]
    argv += ["-ex", "bt", "-ex", "monitor modules"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    frames = re.findall(
        r"^#(\d+)\s+(?:0x[0-9a-f]+ in )?(\S+) \(.*?\) at (\S+):(\d+)$", p.stdout, re.M
    )
    assert frames, out
    # frame #0 is in pvpanic.c (gdb shows the inlined pvpanic_send_event as a frame)
    assert frames[0][2] == PVPANIC_C, out
    got = [(name, int(n)) for _, name, file, n in frames if file == PVPANIC_C]
    assert got == [(f, n) for f, _, n in oracle], (out, oracle)
    # it goes on into the kernel: the module frame is unwound by gdb, not skipped
    names = [name for _, name, _, _ in frames]
    assert "panic" in names, out
    # monitor modules returns the lines the server printed
    assert all(a in out for a in adds), out


def _deb(tmp_path: Path) -> Path:
    """A tiny -dbg-like deb: a vmlinux, a System.map, three modules' .ko files."""
    root = tmp_path / "pkg"
    boot = root / "usr/lib/debug/boot"
    mods = root / "usr/lib/debug/lib/modules/6.1.0-9-amd64/kernel/drivers"
    for path, text in [
        (boot / "vmlinux-6.1.0-9-amd64", "vmlinux"),
        (boot / "System.map-6.1.0-9-amd64", "map"),
        (mods / "misc/pvpanic/pvpanic-mmio.ko", "mmio"),
        (mods / "misc/pvpanic/pvpanic.ko", "pvpanic"),
        (mods / "net/e1000.ko", "e1000"),
    ]:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "DEBIAN").mkdir()
    (root / "DEBIAN/control").write_text(
        "Package: fake-dbg\nVersion: 1\nArchitecture: all\nMaintainer: t <t@t>\nDescription: t\n"
    )
    deb = tmp_path / "fake-dbg.deb"
    subprocess.run(
        ["dpkg-deb", "-Zgzip", "--build", str(root), str(deb)], check=True, capture_output=True
    )
    return deb


def test_dbg_extraction_adds_module_files_to_an_extracted_directory(tmp_path, monkeypatch):
    from sample_dumps import debian

    if shutil.which("dpkg-deb") is None:
        pytest.fail("dpkg-deb is missing: apt-get install dpkg", pytrace=False)
    deb, dest = _deb(tmp_path), tmp_path / "dbg"
    debian.extract_dbg(deb, dest, modules=())  # as before: the vmlinux only
    vmlinux = dest / "usr/lib/debug/boot/vmlinux-6.1.0-9-amd64"
    assert vmlinux.read_text() == "vmlinux" and not list(dest.rglob("*.ko"))
    assert not debian.dbg_complete(dest)
    before = vmlinux.stat().st_ino
    debian.extract_dbg(deb, dest)  # the modules are added, the vmlinux left in place
    kos = sorted(p.name for p in dest.rglob("*.ko"))
    assert kos == ["pvpanic-mmio.ko", "pvpanic.ko"] and vmlinux.stat().st_ino == before
    assert debian.dbg_complete(dest)

    def no_dpkg(*a, **k):
        raise AssertionError("extract_dbg ran dpkg-deb on a complete directory")

    monkeypatch.setattr(debian.subprocess, "Popen", no_dpkg)
    debian.extract_dbg(deb, dest)  # nothing to do (qemu_fw_cfg is not in the deb)
