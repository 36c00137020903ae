"""makedumpfile on QEMU ELF dumps.

QEMU 7.2 writes section headers at offset 64 and the program headers after them,
which makedumpfile rejects ("Can't get the number of PT_LOAD").  fix_qemu_elf()
copies the dump and rewrites only its header area so the phdrs follow the ELF header
(segment data offsets are unchanged)."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess
from pathlib import Path

from .table import MDF_FORMATS
from .util import log

EHDR64 = struct.Struct("<16sHHIQQQIHHHHHH")


def fix_qemu_elf(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, 0o644)
    with open(dst, "r+b") as f:
        hdr = bytearray(f.read(EHDR64.size))
        (
            ident,
            etype,
            machine,
            version,
            entry,
            phoff,
            shoff,
            flags,
            ehsize,
            phentsize,
            phnum,
            shentsize,
            shnum,
            shstrndx,
        ) = EHDR64.unpack(hdr)
        if ident[:4] != b"\x7fELF" or ident[4] != 2 or ident[5] != 1:
            raise RuntimeError(f"{src}: not a little-endian ELF64 file")
        if phnum == 0xFFFF:
            raise RuntimeError(f"{src}: PN_XNUM dumps (paging=true) are not supported here")
        if phoff == EHDR64.size:
            return
        f.seek(phoff)
        phdrs = f.read(phnum * phentsize)
        end = max(phoff + len(phdrs), shoff + shnum * shentsize if shoff else 0)
        first_data = min(
            struct.unpack_from("<Q", phdrs, i * phentsize + 8)[0] for i in range(phnum)
        )
        if end > first_data:
            raise RuntimeError(f"{src}: unexpected header layout")
        new = EHDR64.pack(
            ident,
            etype,
            machine,
            version,
            entry,
            EHDR64.size,
            0,
            flags,
            EHDR64.size,
            phentsize,
            phnum,
            0,
            0,
            0,
        )
        f.seek(0)
        f.write(new + phdrs + b"\0" * (end - EHDR64.size - len(phdrs)))


def run(fmt: str, fixed_elf: Path, out: Path, tmpdir: Path) -> None:
    """makedumpfile <opts> fixed_elf out  (-F: to stdout, redirected into out)."""
    opts = MDF_FORMATS[fmt]
    out.unlink(missing_ok=True)
    env = dict(os.environ, TMPDIR=str(tmpdir))
    cmd = ["makedumpfile", *opts, str(fixed_elf)]
    log(" ".join(cmd) + (f" > {out.name}" if "-F" in opts else f" {out.name}"))
    if "-F" in opts:
        with open(out, "wb") as f:
            p = subprocess.run(cmd, stdout=f, stderr=subprocess.PIPE, env=env)
    else:
        p = subprocess.run(cmd + [str(out)], capture_output=True, env=env)
    if p.returncode != 0:
        raise RuntimeError(
            f"makedumpfile failed ({p.returncode}):\n{p.stderr.decode(errors='replace')[-2000:]}"
        )
