"""VMCOREINFO found in memory (issue 13): a dump with no VMCOREINFO note (QEMU
without -device vmcoreinfo, Xen dump-core, targets without the device) is
read through the kernel's own note in its memory. The dumps without a note
are the real samples with their note's name changed at test time (QEMU's
note and the kernel's in-memory one hold the same text); what they must
read is checked against readelf's decoding of the original note and the
samples' manifests."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import readelf_vmcoreinfo

import kvmcore
from kvmcore.errors import DumpFormatError, KvmcoreError
from kvmcore.report import build_report

KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


def without_note(src: Path, dst: Path) -> Path:
    """A copy of an ELF dump whose VMCOREINFO note is renamed, so no reader
    takes it for one; memory is untouched."""
    shutil.copyfile(src, dst)
    data = bytearray(dst.read_bytes()[: 1 << 20])  # the notes sit in the first MB
    at = data.find(b"VMCOREINFO\0")
    assert at > 0, f"{src} has no VMCOREINFO note"
    with open(dst, "r+b") as f:
        f.seek(at)
        f.write(b"XMCOREINFO")
    return dst


@pytest.fixture(scope="module", params=["x86_64-kaslr", "arm64-kaslr"])
def stripped(request, samples, tmp_path_factory):
    s = samples.get_built(request.param)
    path = without_note(s.file("elf"), tmp_path_factory.mktemp("noinfo") / "vmcore")
    return s, path


def test_no_note_reads_the_kernels_copy(stripped):
    s, path = stripped
    with kvmcore.open(str(path)) as dump:
        assert not [n for n in dump.mem.notes if n.name == "VMCOREINFO"]
        assert dump.mem.metadata["vmcoreinfo_source"].startswith("kernel's note in memory")
        assert dump.vmcoreinfo.as_dict() == readelf_vmcoreinfo(s.file("elf"))


def test_no_note_analyzes_like_the_note(stripped):
    s, path = stripped
    m = s.manifest
    with kvmcore.open(str(path)) as dump:
        report = build_report(dump)
    head = report["headline"]
    assert head["panic_message"] == m["panic"]["message"]
    assert (head["task"]["pid"], head["task"]["comm"]) == (m["panic"]["pid"], m["panic"]["comm"])
    names = [f["function"] or "" for f in report["backtrace"]["frames"]]
    assert any(n.startswith("sysrq_handle_crash+") for n in names), names
    out = subprocess.run(
        [*KVMCORE, "ps", "--json", str(path)], capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr
    pids = {t["pid"]: t["comm"] for t in json.loads(out.stdout)["tasks"]}
    for proc in m["processes"]:
        assert pids.get(proc["pid"]) == proc["comm"], proc


def _note_offset(path: Path) -> int:
    """File offset of the kernel's in-memory note (found by the scan)."""
    with kvmcore.open(str(path)) as dump:
        at = int(dump.mem.metadata["vmcoreinfo_source"].rsplit(" ", 1)[1], 16)
        offset = dump.mem.file_offset(at)
    assert offset is not None
    return offset


def test_damaged_only_copy_is_one_line(samples, tmp_path):
    s = samples.get_built("x86_64-kaslr")
    path = without_note(s.file("elf"), tmp_path / "vmcore")
    offset = _note_offset(path)
    with open(path, "r+b") as f:
        f.seek(offset + 12 + 12)  # header, name: the text's first bytes
        f.write(b"XSRELEASE")
    with pytest.raises(KvmcoreError) as info:
        kvmcore.open(str(path)).translate(0xFFFFFFFF81000000)
    assert "VMCOREINFO" in str(info.value) and "\n" not in str(info.value)
    out = subprocess.run([*KVMCORE, "ps", str(path)], capture_output=True, text=True, timeout=600)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
    assert "Traceback" not in out.stderr


def test_two_copies_that_disagree_are_refused(samples, tmp_path):
    s = samples.get_built("x86_64-kaslr")
    path = without_note(s.file("elf"), tmp_path / "vmcore")
    offset = _note_offset(path)
    with open(path, "r+b") as f:
        f.seek(offset)
        note = bytearray(f.read(12 + 12 + 64))
        note[24:34] = b"OSRELEASE="
        note[34:40] = b"9.9.9\n"
        with kvmcore.open(str(path)) as dump:  # plant it at another page of RAM
            spare = dump.mem.file_offset(0x100000 - 0x1000)
        assert spare is not None
        f.seek(spare)
        f.write(bytes(note))
    with pytest.raises(DumpFormatError, match="disagree"):
        kvmcore.open(str(path))


def test_report_says_where_vmcoreinfo_came_from(stripped):
    s, path = stripped
    with kvmcore.open(str(path)) as dump:
        report = build_report(dump)
    assert report["dump"]["vmcoreinfo"] is True
    assert report["dump"]["vmcoreinfo_source"].startswith("kernel's note in memory at 0x")
    with kvmcore.open(str(s.file("elf"))) as dump:
        assert build_report(dump)["dump"]["vmcoreinfo_source"] is None
