"""A raw physical memory image (what LiME-style acquisition or a hypervisor's
memory file gives): made here from a real QEMU ELF dump's PT_LOADs laid out
at their physical addresses, read back with --arch like any other dump."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import kvmcore
from kvmcore.errors import DumpFormatError
from kvmcore.formats import open_physical


@pytest.fixture(scope="module")
def raw_image(samples, tmp_path_factory) -> tuple[Path, dict]:
    s = samples.get_built("x86_64-kaslr")
    mem = open_physical(str(s.file("elf")))
    path = tmp_path_factory.mktemp("raw") / "memory.raw"
    with open(path, "wb") as out:
        pa = 0
        for rng in mem.ranges():
            if rng.start >= 0xF0000000:  # the BIOS ROM at the top of 4 GB: not RAM
                break
            out.write(bytes(rng.start - pa))
            out.write(mem.read_phys(rng.start, rng.size))
            pa = rng.end
    return path, s.manifest


def test_raw_image_reads_like_the_dump(raw_image):
    path, manifest = raw_image
    dump = kvmcore.open(str(path), arch="x86_64")
    assert dump.format_name == "raw"
    info = dump.vmcoreinfo  # found in memory: the image has no notes
    assert info.osrelease == manifest["kernel_release"]
    uts = dump.read(info.symbol("init_uts_ns") + info.offset("uts_namespace", "name"), 65 * 5)
    fields = [uts[i * 65 : (i + 1) * 65].split(b"\0")[0].decode() for i in range(5)]
    assert (fields[0], fields[2], fields[4]) == (
        manifest["uts"]["sysname"],
        manifest["uts"]["release"],
        manifest["uts"]["machine"],
    )
    assert manifest["marker"] in [r.text for r in dump.kernel.log()]
    pids = {t.pid for t in dump.kernel.tasks()}
    assert {p["pid"] for p in manifest["processes"]} <= pids


def test_raw_needs_an_arch(raw_image):
    path, _ = raw_image
    with pytest.raises(DumpFormatError, match="--arch"):
        kvmcore.open(str(path))
    p = subprocess.run(
        [str(Path(sys.executable).with_name("kvmcore")), "info", str(path)],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 2 and "--arch" in p.stderr and str(path) in p.stderr
