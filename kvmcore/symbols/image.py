"""Searching the kernel image in dump memory, for what no symbol names (the
last-resort scans of kvmcore.linux.scan, the BTF blob of kvmcore.types)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import AddressError, KvmcoreError

if TYPE_CHECKING:
    from ..dump import Dump

IMAGE_SCAN_LIMIT = 160 << 20  # no kernel image is larger
CHUNK = 4 << 20


def image_start(dump: Dump) -> int | None:
    info = dump.vmcoreinfo
    start = info.symbol("_stext") if info else None
    if start is None:
        try:
            start = dump.symbols.get("_stext") or dump.symbols.get("_text")
        except KvmcoreError:
            return None
    return start


def scan_kernel_image(dump: Dump, pattern: bytes, limit: int = IMAGE_SCAN_LIMIT) -> Iterator[int]:
    """Kernel virtual addresses of `pattern` in the kernel image, which is
    physically contiguous from _stext on the architectures kvmcore reads."""
    start = image_start(dump)
    if start is None:
        return
    try:
        base_pa = dump.translate(start).pa
    except AddressError:
        return
    overlap = len(pattern) - 1
    off = 0
    while off < limit:
        data: bytes | None
        try:
            data = dump.read_phys(base_pa + off, CHUNK + overlap)
        except AddressError:
            data = read_pages(dump, base_pa + off, CHUNK + overlap)
            if data is None:
                return
        pos = data.find(pattern)
        while pos >= 0:
            yield start + off + pos
            pos = data.find(pattern, pos + 1)
        off += CHUNK


def read_pages(dump: Dump, pa: int, length: int) -> bytes | None:
    """Read page by page, zero-filling pages the dump lacks; None when the
    first page is already missing (the end of memory)."""
    out = bytearray()
    for page in range(pa, pa + length, 4096):
        try:
            out += dump.read_phys(page, 4096)
        except AddressError:
            if not out:
                return None
            out += bytes(4096)
    return bytes(out)
