"""Where the kernel's BTF blob comes from: the vmlinux's .BTF section, or the
dump's memory between __start_BTF and __stop_BTF."""
from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import KvmcoreError, SymbolError, TypeInfoError

if TYPE_CHECKING:
    from ..dump import Dump

MAX_BTF_BYTES = 64 << 20


def btf_from_vmlinux(path: str) -> bytes | None:
    """The .BTF section's bytes, or None when the vmlinux has none."""
    from ..symbols.vmlinux import VmlinuxFile

    image = VmlinuxFile(path)
    try:
        sec = image.section(".BTF")
        return bytes(image.section_bytes(sec)) if sec else None
    finally:
        image.close()


def _btf_bounds(dump: "Dump") -> tuple[int, int]:
    """Runtime addresses of __start_BTF/__stop_BTF. kallsyms has them only
    with CONFIG_KALLSYMS_ALL (Debian amd64 yes, arm64/i386 no): then a
    vmlinux or System.map given with the dump supplies them."""
    from ..symbols import load_symbols

    tables = []
    try:
        tables.append(dump.symbols)
    except SymbolError:
        pass
    for prefer in ("vmlinux", "System.map"):
        if tables and tables[-1].get("__start_BTF") is not None:
            break
        try:
            tables.append(load_symbols(dump, prefer=prefer))
        except (SymbolError, KvmcoreError):
            continue
    for table in tables:
        start, stop = table.get("__start_BTF"), table.get("__stop_BTF")
        if start is not None and stop is not None:
            return start, stop
    # No symbols: find the blob by its validated header in the kernel image.
    from ..linux.scan import find_btf

    found = find_btf(dump)
    if found is not None:
        return found[0], found[0] + found[1]
    raise TypeInfoError("BTF from dump memory needs the __start_BTF/__stop_BTF symbols "
                        "(kallsyms lacks them without CONFIG_KALLSYMS_ALL) and no BTF header "
                        "was found in the kernel image; give the vmlinux or its System.map",
                        dump.path)


def btf_from_memory(dump: "Dump") -> bytes:
    start, stop = _btf_bounds(dump)
    if not 0 < stop - start <= MAX_BTF_BYTES:
        raise TypeInfoError(f"BTF bounds {start:#x}..{stop:#x} are implausible", dump.path)
    try:
        return dump.read(start, stop - start)
    except KvmcoreError as exc:
        raise TypeInfoError(f"cannot read BTF from dump memory: {exc.message}", dump.path) from None
