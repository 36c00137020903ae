"""A damaged kdump bitmap, built at test time from the committed dump: one byte
of bitmap 2 set (or cleared) moves every later page onto its neighbour's
descriptor. The open must refuse it, on one line, instead of reading shifted
pages (issue 12 §4.1)."""

from __future__ import annotations

import shutil
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore.errors import DumpFormatError
from kvmcore.report import build_report

COMMITTED = (
    Path(__file__).resolve().parent.parent
    / "sample_dumps"
    / "committed"
    / "x86_64-small"
    / "vmcore.mdf-d31-c"
)
DAMAGED_BYTE = 0x4D2B  # the byte the hostile-input pass flipped (0x00 -> 0xb7)


def _layout(path: Path) -> dict:
    """The header fields, read here with struct from makedumpfile's diskdump_mod.h
    layout (64-bit little-endian host), not through kvmcore."""
    raw = path.read_bytes()[:4096]
    assert raw[:8] == b"KDUMP   "
    block_size, sub_hdr_size, bitmap_blocks, max_mapnr = struct.unpack_from(
        "<iiIi", raw, 408 + 16 + 4
    )
    bitmap_start = (1 + sub_hdr_size) * block_size
    half = bitmap_blocks * block_size // 2
    return {
        "bs": block_size,
        "bitmap2": bitmap_start + half,
        "half": half,
        "desc_base": bitmap_start + 2 * half,
    }


def _damaged(tmp_path: Path, at: int, value: int) -> tuple[Path, int]:
    bad = tmp_path / "damaged.kdump"
    shutil.copyfile(COMMITTED, bad)
    with open(bad, "r+b") as f:
        f.seek(at)
        old = f.read(1)[0]
        f.seek(at)
        f.write(bytes([value]))
    return bad, old


def test_recipe_byte_is_in_bitmap_2():
    lay = _layout(COMMITTED)
    assert lay["bitmap2"] <= DAMAGED_BYTE < lay["bitmap2"] + lay["half"]


def test_one_bitmap_byte_set_is_refused(tmp_path):
    bad, old = _damaged(tmp_path, DAMAGED_BYTE, 0xB7)
    assert old == 0x00
    lay = _layout(bad)
    with open(bad, "rb") as f:
        f.seek(lay["bitmap2"])
        dumped = int.from_bytes(f.read(lay["half"]), "little").bit_count()
        f.seek(lay["desc_base"])
        # page data starts with the shared zero page, the lowest offset of all
        first_offset = min(off for off, _s, _f, _p in struct.iter_unpack("<qIIQ", f.read(24 * 16)))
    # the real table ends where page data starts: 6 descriptors before the damaged count
    assert lay["desc_base"] + (dumped - 6) * 24 == first_offset
    with pytest.raises(
        DumpFormatError,
        match="bitmap 2 disagrees with the page descriptor "
        rf"table: its {dumped} dumped pages .*{first_offset:#x}",
    ):
        kvmcore.open(str(bad))


def test_one_bitmap_byte_cleared_is_refused(tmp_path):
    lay = _layout(COMMITTED)
    data = COMMITTED.read_bytes()[lay["bitmap2"] : lay["bitmap2"] + lay["half"]]
    at = lay["bitmap2"] + data.index(b"\xff")  # eight dumped pages
    bad, old = _damaged(tmp_path, at, 0x00)
    assert old == 0xFF
    with pytest.raises(DumpFormatError, match="more descriptors follow"):
        kvmcore.open(str(bad))


def test_cli_one_line_exit_2(tmp_path):
    bad, _ = _damaged(tmp_path, DAMAGED_BYTE, 0xB7)
    p = subprocess.run(
        [sys.executable, "-m", "kvmcore.cli.main", "analyze", "--format", "text", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvmcore: error: ") and "bitmap" in lines[0]
    assert "task:" not in p.stdout


def test_undamaged_committed_dump_still_opens():
    d = kvmcore.open(str(COMMITTED))
    lay = _layout(COMMITTED)
    with open(COMMITTED, "rb") as f:
        f.seek(lay["bitmap2"])
        dumped = int.from_bytes(f.read(lay["half"]), "little").bit_count()
    assert d.mem.dumped_pages == dumped


# -- §4.2: a sub-header without the ELF notes (so without any NT_PRSTATUS) ------------------
SUB_OFFSET_NOTE, SUB_SIZE_NOTE = 48, 56  # kdump_sub_header, 64-bit host (diskdump_mod.h)


def _manifest() -> dict:
    import json

    return json.loads((COMMITTED.parent / "manifest.json").read_text())


def test_committed_dump_has_prstatus_per_cpu():
    mem = kvmcore.open(str(COMMITTED)).mem
    assert len(mem.prstatus_notes()) == _manifest()["qemu"]["smp"]
    assert mem.notes_problem is None


@pytest.mark.parametrize(
    "field,value", [(SUB_OFFSET_NOTE, 0), (SUB_SIZE_NOTE, 0), (SUB_SIZE_NOTE, 1)]
)
def test_missing_cpu_notes_are_recorded(tmp_path, field, value):
    lay = _layout(COMMITTED)
    bad = tmp_path / "nonotes.kdump"
    shutil.copyfile(COMMITTED, bad)
    with open(bad, "r+b") as f:
        f.seek(lay["bs"] + field)  # the sub-header is block 1
        f.write(struct.pack("<q", value))
    d = kvmcore.open(str(bad))
    assert d.mem.prstatus_notes() == []
    assert d.mem.notes_problem and d.mem.notes_problem.startswith("CPU registers missing")
    # still a dump: its release is still read from VMCOREINFO (a separate sub-header field)
    assert d.mem.vmcoreinfo.get("OSRELEASE") == _manifest()["kernel_release"]


def test_missing_cpu_notes_are_said_in_bt_and_report(tmp_path):
    """With no NT_PRSTATUS (offset_note 0), the panicking task's trace is its
    last context switch: `bt` and the report's backtrace say so (issue 12)."""
    lay = _layout(COMMITTED)
    bad = tmp_path / "nonotes.kdump"
    shutil.copyfile(COMMITTED, bad)
    with open(bad, "r+b") as f:
        f.seek(lay["bs"] + SUB_OFFSET_NOTE)
        f.write(struct.pack("<q", 0))
    out = subprocess.run(
        [sys.executable, "-c", "from kvmcore.cli.main import main; main()", "bt", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr
    cpu = _manifest()["panic"]["cpu"]
    assert f"CPU {cpu}'s registers are missing (CPU registers missing" in out.stdout
    assert "last context switch" in out.stdout
    report = build_report(kvmcore.open(str(bad)))
    assert "last context switch" in report["backtrace"]["warning"]
