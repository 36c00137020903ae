"""QEMU's ELF quirks, on the real dumps: program headers not after the ELF
header, PN_XNUM segment counts (paging=true), an i386 guest in an ELF64
container. readelf is the independent reader."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from kvmcore.formats import open_physical
from kvmcore.formats.elf import ElfDump


def readelf_header(path) -> str:
    tool = shutil.which("readelf")
    if tool is None:
        pytest.fail("readelf not found: apt-get install binutils", pytrace=False)
    return subprocess.run(
        [tool, "-h", str(path)], capture_output=True, text=True, check=True
    ).stdout


def test_pn_xnum_segment_count(samples):
    s = samples.get_built("x86_64-nokaslr")
    path = s.file("elf-paging")
    hdr = readelf_header(path)
    real = int(re.search(r"Number of program headers:\s+65535 \((\d+)\)", hdr).group(1))
    mem = open_physical(str(path))
    assert isinstance(mem, ElfDump)
    assert mem.metadata["phnum"] == real and real > 0xFFFF
    # every physical page it holds equals the plain ELF's (test_kdump_formats compares all)
    plain = open_physical(str(s.file("elf")))
    for rng in mem.ranges()[:200]:
        assert mem.read_phys(rng.start, min(rng.size, 4096)) == plain.read_phys(
            rng.start, min(rng.size, 4096)
        )


def test_program_headers_where_the_header_says(samples):
    path = samples.get_built("x86_64-kaslr").file("elf")
    hdr = readelf_header(path)
    phoff = int(re.search(r"Start of program headers:\s+(\d+)", hdr).group(1))
    assert phoff != 64  # QEMU 7.2 puts two section headers first
    mem = open_physical(str(path))
    assert mem.header.e_phoff == phoff and mem.metadata["producer"] == "qemu"


def test_i386_guest_in_elf64_container(samples):
    path = samples.get_built("i386-pae").file("elf")
    hdr = readelf_header(path)
    assert "ELF64" in hdr and "Intel 80386" in hdr
    mem = open_physical(str(path))
    assert mem.metadata["elf_class"] == 64
    assert (mem.facts.machine, mem.facts.word_size) == ("i386", 4)


@pytest.mark.fast
def test_mapped_pages_let_go_still_read_the_file(monkeypatch):
    """DumpFile lets the mapped pages go (MADV_DONTNEED) when more than
    MAPPED_BYTES of files are mapped: with no budget at all and a look every 2
    new 64 KiB blocks, every block of the committed sample, read in a
    scattered order, still equals os.pread's bytes."""
    import os as _os

    from kvmcore import fileio

    path = (
        Path(__file__).resolve().parent.parent
        / "sample_dumps/committed/x86_64-small/vmcore.mdf-d31-c"
    )
    monkeypatch.setattr(fileio, "MAPPED_BYTES", 0)
    monkeypatch.setattr(fileio, "CHECK_BLOCKS", 2)
    f = fileio.DumpFile(path)
    assert f.mapped
    fd = _os.open(path, _os.O_RDONLY)
    try:
        blocks = list(range(0, f.size, 0x10000))
        for i, off in enumerate(blocks[::7] + blocks[3::5]):
            n = min(0x1000 + i, f.size - off)
            assert f.pread(off, n) == _os.pread(fd, n, off)
        assert len(f._touched) <= 3  # let go repeatedly, not grown to every block
    finally:
        _os.close(fd)
        f.close()
