"""Where the kernel's BTF blob comes from: the vmlinux's .BTF section, or the
dump's memory between __start_BTF and __stop_BTF."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from ..errors import AddressError, KvmcoreError, SymbolError, TypeInfoError
from ..symbols import load_symbols
from ..symbols.image import scan_kernel_image
from ..symbols.vmlinux import VmlinuxFile

if TYPE_CHECKING:
    from ..dump import Dump

MAX_BTF_BYTES = 64 << 20


def btf_from_vmlinux(path: str) -> bytes | None:
    """The .BTF section's bytes, or None when the vmlinux has none."""
    image = VmlinuxFile(path)
    try:
        sec = image.section(".BTF")
        return bytes(image.section_bytes(sec)) if sec else None
    finally:
        image.close()


def _btf_bounds(dump: Dump) -> tuple[int, int]:
    """Runtime addresses of __start_BTF/__stop_BTF. kallsyms has them only
    with CONFIG_KALLSYMS_ALL (Debian amd64 yes, arm64/i386 no): then a
    vmlinux or System.map given with the dump supplies them."""
    tables = []
    with contextlib.suppress(SymbolError):
        tables.append(dump.symbols)
    for prefer in ("vmlinux", "System.map"):
        if tables and tables[-1].get("__start_BTF") is not None:
            break
        if any(t.source in ("vmlinux", "System.map") for t in tables):
            break  # a complete table without __start_BTF: a second one says no more
        if any(t.source == prefer for t in tables):
            continue  # the dump's own table is that one already
        try:
            tables.append(load_symbols(dump, prefer=prefer))
        except (SymbolError, KvmcoreError):
            continue
    for table in tables:
        start, stop = table.get("__start_BTF"), table.get("__stop_BTF")
        if start is not None and stop is not None:
            return start, stop
    complete = [t.source for t in tables if t.source in ("vmlinux", "System.map")]
    if complete:
        # a vmlinux's or System.map's symbols are all of them: a kernel with BTF
        # has __start_BTF there, so this one has none (Debian's 686-pae, armmp),
        # and a scan of its image for a BTF header (a second or more) is moot
        raise TypeInfoError(
            f"this kernel has no BTF (its {complete[0]} has no __start_BTF)", dump.path
        )
    # No symbols: find the blob by its validated header in the kernel image.
    found = find_btf(dump)
    if found is not None:
        return found[0], found[0] + found[1]
    raise TypeInfoError(
        "BTF from dump memory needs the __start_BTF/__stop_BTF symbols "
        "(kallsyms lacks them without CONFIG_KALLSYMS_ALL) and no BTF header "
        "was found in the kernel image; give the vmlinux or its System.map",
        dump.path,
    )


BTF_HEADER = (
    b"\x9f\xeb\x01\x00\x18\x00\x00\x00\x00\x00\x00\x00"  # magic, v1, hdr_len 24, type_off 0
)


def find_btf(dump: Dump) -> tuple[int, int] | None:
    """(address, size) of the kernel's .BTF blob, found by its header in the image.
    Little-endian kernels only; the header is validated (string section after types)."""
    if dump.byteorder != "little":
        return None
    for hit in scan_kernel_image(dump, BTF_HEADER):
        try:
            hdr = dump.read(hit, 24)
        except AddressError:
            continue
        type_len, str_off, str_len = (
            int.from_bytes(hdr[i : i + 4], "little") for i in (12, 16, 20)
        )
        if str_off != type_len or not 0 < str_len < 1 << 28 or type_len >= 1 << 28:
            continue
        try:
            if dump.read(hit + 24 + str_off, 1) != b"\0":
                continue
        except AddressError:
            continue
        return hit, 24 + str_off + str_len
    return None


def btf_from_memory(dump: Dump) -> bytes:
    start, stop = _btf_bounds(dump)
    if not 0 < stop - start <= MAX_BTF_BYTES:
        raise TypeInfoError(f"BTF bounds {start:#x}..{stop:#x} are implausible", dump.path)
    try:
        return dump.read(start, stop - start)
    except KvmcoreError as exc:
        raise TypeInfoError(f"cannot read BTF from dump memory: {exc.message}", dump.path) from None
