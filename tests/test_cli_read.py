"""`kvmcore read`: a kernel virtual address from the -dbg System.map (moved by
the KERNELOFFSET readelf decodes from the dump's VMCOREINFO note), translated
by kvmcore, lands on the bytes readelf's program headers place at that
physical address in the file, and those bytes are the kernel's banner."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

KVMCORE = Path(sys.executable).with_name("kvmcore")


def readelf(*args: str) -> str:
    p = subprocess.run(["readelf", *args], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"readelf failed ({p.stderr.strip()}): apt-get install binutils", pytrace=False)
    return p.stdout


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr"])
def test_read_lands_on_the_file_bytes(samples, sid):
    s = samples.get_built(sid)
    dump = s.file("elf")
    notes = readelf("-n", str(dump))
    hexdata = re.search(r"VMCOREINFO.*?\n\s+description data: ([0-9a-f ]+)", notes, re.S).group(1)
    info = bytes.fromhex(hexdata.replace(" ", "")).decode()
    offset = int(re.search(r"^KERNELOFFSET=([0-9a-f]+)$", info, re.M).group(1), 16)
    sysmap = samples.vmlinux(sid).parent / f"System.map-{s.manifest['kernel_release']}"
    banner = next(
        int(line.split()[0], 16)
        for line in sysmap.read_text().splitlines()
        if line.endswith(" linux_banner")
    )
    va = banner + offset
    p = subprocess.run(
        [str(KVMCORE), "read", str(dump), hex(va), "64", "--json"], capture_output=True, text=True
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    data = bytes.fromhex(out["hex"])
    assert data.startswith(f"Linux version {s.manifest['kernel_release']}".encode())
    pa = int(out["physical"], 16)
    for line in readelf("-l", "-W", str(dump)).splitlines():
        f = line.split()
        if f and f[0] == "LOAD":
            off, paddr, filesz = int(f[1], 16), int(f[3], 16), int(f[4], 16)
            if paddr <= pa < paddr + filesz:
                assert out["file_offset"] == off + pa - paddr
                with open(dump, "rb") as fh:
                    fh.seek(off + pa - paddr)
                    assert fh.read(64) == data
                break
    else:
        pytest.fail(f"no PT_LOAD holds physical {pa:#x}")
