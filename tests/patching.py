"""Fault injection on a real dump, in the reader only: the file is never
touched. Used to put into real kernel data the values a sample did not happen
to contain (a looping list, an impossible index, another task state), or
take pages out of it as a filtered dump does."""

from __future__ import annotations

import mmap
import re
import shutil
import subprocess
from pathlib import Path

import kvmcore
from kvmcore.errors import PageExcludedError


def plant(dump: kvmcore.Dump, by_pa: dict[int, bytes]) -> kvmcore.Dump:
    """`dump` with its reader seeing these bytes at these physical addresses
    (patch before the model's first read: what it cached stays)."""
    original = dump.mem.read_phys

    def read_phys(pa: int, length: int) -> bytes:
        data = bytearray(original(pa, length))
        for at, value in by_pa.items():
            lo, hi = max(at, pa), min(at + len(value), pa + length)
            if lo < hi:
                data[lo - pa : hi - pa] = value[lo - at : hi - at]
        return bytes(data)

    return _reading_through(dump, read_phys)


def _reading_through(dump: kvmcore.Dump, read_phys) -> kvmcore.Dump:
    """Point both of the layer's physical reads at `read_phys`: the plain one
    and the zero-filling one (kvmcore.addrspace's zero_excluded path), which
    sees the same pages, page by page, with the missing ones as zeros. And
    say no stretch of the file holds memory whole (file_run): the task walk's
    loop in C (kvmcore._listwalk) reads the file itself, which holds none of
    this reader's changes (tests/test_listwalk.py patches a copy instead)."""
    dump.mem.read_phys = read_phys
    dump.mem.file_run = lambda pa, length: None
    if hasattr(dump.mem, "read_phys_filled"):

        def read_phys_filled(pa: int, length: int, filtered: list) -> bytes:
            out = bytearray()
            while length > 0:
                n = min(length, 0x1000 - (pa & 0xFFF))
                try:
                    out += read_phys(pa, n)
                except PageExcludedError:
                    out += bytes(n)
                    filtered.append((pa, n))
                pa += n
                length -= n
            return bytes(out)

        dump.mem.read_phys_filled = read_phys_filled
    return dump


def patched_dump(
    samples, patches: dict[int, bytes], sid: str = "x86_64-kaslr", fmt: str = "elf"
) -> kvmcore.Dump:
    """The sample's dump with the bytes at these kernel virtual addresses replaced."""
    dump = kvmcore.open(str(samples.get_built(sid).file(fmt)))
    return plant(dump, {dump.translate(va).pa: value for va, value in patches.items()})


def word(value: int) -> bytes:
    """A 64-bit little-endian word (the x86_64 and arm64 samples' pointers)."""
    return (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")


def excluded_dump(
    samples, ranges: list[tuple[int, int]], sid: str = "x86_64-kaslr", fmt: str = "elf"
) -> kvmcore.Dump:
    """The sample's dump with the physical pages holding these (kernel virtual
    address, length) ranges missing, as a filtered dump's excluded pages are:
    reading them raises PageExcludedError."""
    dump = kvmcore.open(str(samples.get_built(sid).file(fmt)))
    pages = set()
    for va, length in ranges:
        for at in range(va & ~0xFFF, va + length, 0x1000):
            pages.add(dump.translate(at).pa & ~0xFFF)
    original = dump.mem.read_phys

    def read_phys(pa: int, length: int) -> bytes:
        for page in range(pa & ~0xFFF, pa + length, 0x1000):
            if page in pages:
                raise PageExcludedError(f"physical address {page:#x} excluded (test)", page)
        return original(pa, length)

    return _reading_through(dump, read_phys)


def _readelf_build_id(path: Path) -> str:
    out = subprocess.run(
        ["readelf", "-n", str(path)], capture_output=True, text=True, check=True
    ).stdout
    match = re.search(r"Build ID: ([0-9a-f]+)", out)
    assert match, f"readelf finds no build id in {path}"
    return match.group(1)


def other_build(vmlinux: Path, tmp_path: Path) -> Path:
    """The same-arch vmlinux with another build id: the samples' -dbg vmlinux
    copied with one byte of its .note.gnu.build-id changed (the committed dump
    and the cached samples may well be of one Debian build)."""
    ours = bytes.fromhex(_readelf_build_id(vmlinux))
    copy = tmp_path / vmlinux.name
    shutil.copyfile(vmlinux, copy)
    with open(copy, "r+b") as f, mmap.mmap(f.fileno(), 0) as view:
        at = view.find(b"GNU\0" + ours)  # the note's name, then its descriptor
        assert at > 0, f"no GNU build-id note in {vmlinux}"
        view[at + 4] ^= 0xFF
    return copy
