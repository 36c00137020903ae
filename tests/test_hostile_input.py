"""Header fields that ask for absurd amounts of data, built from the real
flattened and ELF samples: a flattened file's holes read as zeros, so a
header pointing into a hole must be refused before a buffer is sized from
it (a 12 KB file used to make kvmcore allocate gigabytes)."""

from __future__ import annotations

import os
import stat
import struct
import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore.errors import DumpFormatError

FLAT_BLOCK = 4096  # makedumpfile's flattened header block
END = struct.pack(">qq", -1, 0)


def record(offset: int, data: bytes) -> bytes:
    return struct.pack(">qq", offset, len(data)) + data


def flattened(header_block: bytes, *records: bytes) -> bytes:
    return header_block + b"".join(records) + END


def test_kdump_bitmap_in_a_flattened_hole(samples, tmp_path):
    real = samples.get_built("x86_64-kaslr").file("mdf-d31-F")
    with open(real, "rb") as f:
        head = f.read(FLAT_BLOCK + 16)
        offset, size = struct.unpack(">qq", head[FLAT_BLOCK:])
        assert offset == 0  # the first record is the disk_dump_header
        dh = bytearray(f.read(size))
    assert dh[:8] == b"KDUMP   "
    bitmap_blocks = (1 << 30) // 4096  # 1 GiB of bitmaps, in a file of a few KB
    struct.pack_into("<I", dh, 408 + 16 + 12, bitmap_blocks)
    bad = tmp_path / "hole.kdump-F"
    bad.write_bytes(flattened(head[:FLAT_BLOCK], record(0, bytes(dh)), record(4 << 30, b"\0" * 16)))
    with pytest.raises(DumpFormatError, match="larger than all the data the file holds"):
        kvmcore.open(str(bad))


def test_elf_note_in_a_flattened_hole(samples, tmp_path):
    flat_head = samples.get_built("x86_64-kaslr").file("mdf-d31-F").open("rb").read(FLAT_BLOCK)
    with open(samples.get_built("x86_64-kaslr").file("mdf-d31-E"), "rb") as f:
        ehdr = bytearray(f.read(64))
        (phoff,) = struct.unpack_from("<Q", ehdr, 32)
        (phnum,) = struct.unpack_from("<H", ehdr, 56)
        f.seek(phoff)
        phdrs = bytearray(f.read(56 * phnum))
    notes = [i for i in range(phnum) if struct.unpack_from("<I", phdrs, 56 * i)[0] == 4]
    assert notes, "the makedumpfile -E sample has a PT_NOTE"
    struct.pack_into("<Q", phdrs, 56 * notes[0] + 32, 1 << 30)  # p_filesz: 1 GiB
    bad = tmp_path / "hole.elf-F"
    bad.write_bytes(
        flattened(
            flat_head,
            record(0, bytes(ehdr)),
            record(phoff, bytes(phdrs)),
            record(8 << 30, b"\0" * 16),
        )
    )
    with pytest.raises(DumpFormatError, match="PT_NOTE"):
        kvmcore.open(str(bad))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kvmcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.fast
@pytest.mark.parametrize("kind", ["fifo", "devnull"])
def test_special_files_are_one_line_errors(tmp_path, kind):
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        assert stat.S_ISFIFO(path.stat().st_mode)
    else:
        path = Path(os.devnull)
    p = _cli("info", str(path))
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().splitlines() == [f"kvmcore: error: {path}: is not a regular file"]


def test_cli_memory_stays_small_on_a_hole(samples, tmp_path):
    """The whole CLI, in its own process: the refusal comes before any big buffer."""
    real = samples.get_built("x86_64-kaslr").file("mdf-d31-F")
    with open(real, "rb") as f:
        head = f.read(FLAT_BLOCK + 16)
        dh = bytearray(f.read(struct.unpack(">qq", head[FLAT_BLOCK:])[1]))
    struct.pack_into("<I", dh, 408 + 16 + 12, (1 << 30) // 4096)
    bad = tmp_path / "hole.kdump-F"
    bad.write_bytes(flattened(head[:FLAT_BLOCK], record(0, bytes(dh)), record(4 << 30, b"\0" * 16)))
    # the CLI in a child that reports its own peak RSS when it exits: VmHWM of its
    # own address space (ru_maxrss would include the pages of the forked parent,
    # pytest, which can hold gigabytes by the end of a full run)
    probe = (
        "import atexit, sys; atexit.register(lambda: print('maxrss_kib=%s' % next("
        "l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')), "
        "file=sys.stderr)); "
        "sys.argv = ['kvmcore', 'info', sys.argv[1]]; "
        "from kvmcore.cli.main import main; main()"
    )
    p = subprocess.run(
        [sys.executable, "-c", probe, str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2 and "larger than all the data" in p.stderr, p.stderr
    peak_kib = int(p.stderr.rsplit("maxrss_kib=", 1)[1])
    assert peak_kib < 512 << 10, f"peak RSS {peak_kib} KiB"
