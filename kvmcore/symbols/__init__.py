"""Kernel symbols: `load_symbols(dump)` picks the best source at hand.

Order of preference: (1) the vmlinux's .symtab (build id checked against
VMCOREINFO, relocated by the KASLR slide), (2) a System.map (given, or found
next to the vmlinux), (3) kallsyms decoded from the dump's own memory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import SymbolError
from .frozen import FrozenSymbols
from .kallsyms import kallsyms_symbols
from .sysmap import find_system_map, read_system_map
from .table import FUNCTION_TYPES, Symbol, SymbolColumns, SymbolTable, relocated
from .vmlinux import VmlinuxFile, dump_frozen_symbols

if TYPE_CHECKING:
    from ..dump import Dump

__all__ = [
    "Symbol",
    "SymbolTable",
    "load_symbols",
    "symbols_from_vmlinux",
    "symbols_from_system_map",
    "symbols_from_kallsyms",
    "check_build_id",
    "check_vmlinux",
    "FUNCTION_TYPES",
]


def check_build_id(dump: Dump, image: VmlinuxFile) -> None:
    """Raise SymbolError when VMCOREINFO's BUILD-ID is not among the vmlinux's."""
    info = dump.vmcoreinfo
    want = info.build_id.lower() if info and info.build_id else None
    if not want:
        return
    have = image.build_ids()
    if have and want not in have:
        raise SymbolError(
            f"vmlinux build id {', '.join(have)} does not match the dump's "
            f"VMCOREINFO BUILD-ID {want}",
            image.path,
        )


def _vmcoreinfo_symbols_disagree(dump: Dump, image: VmlinuxFile) -> str | None:
    """Without a BUILD-ID to compare: VMCOREINFO's SYMBOL() lines are runtime
    addresses of this kernel, so their distances from SYMBOL(_stext) must be
    the vmlinux's own (a KASLR slide moves them all alike). A fault, or None."""
    info = dump.vmcoreinfo
    runtime_stext = info.symbol("_stext") if info else None
    if info is None or runtime_stext is None:
        return None
    frozen = dump_frozen_symbols(dump, image)
    link_stext = _frozen_address(frozen, "_stext")
    if link_stext is None:
        return "the vmlinux has no _stext symbol"
    for key in info:
        if not key.startswith("SYMBOL(") or key == "SYMBOL(_stext)":
            continue
        name, value = key[7:-1], info.symbol(key[7:-1])
        link = _frozen_address(frozen, name)
        if (
            link is not None
            and value is not None
            and value >= runtime_stext
            and value - runtime_stext != link - link_stext
        ):
            return f"its {name} is not where VMCOREINFO's SYMBOL({name}) puts it"
    return None


_MACHINES = {3: "i386", 40: "arm", 62: "x86_64", 183: "aarch64", 8: "mips", 20: "ppc", 21: "ppc64"}


def check_vmlinux(dump: Dump, path: str, force: bool = False) -> str | None:
    """Refuse, with a SymbolError naming the file, a `path` that is not a
    kernel image (VmlinuxFile), is for another architecture, or is another
    build than the dump's kernel (VMCOREINFO BUILD-ID, else its SYMBOL()
    lines). A wrong vmlinux is worse than none: its types and symbols misread
    every task. With `force` a build mismatch is returned as a warning
    instead; the architecture is never forced."""
    image = VmlinuxFile(path)
    try:
        want = dump.arch.elf_machine
        if want and dump.os != "freebsd" and image.machine != want:
            theirs = _MACHINES.get(image.machine, f"ELF machine {image.machine}")
            raise SymbolError(f"the vmlinux is for {theirs}, the dump for {dump.arch.name}", path)
        try:
            check_build_id(dump, image)
            fault = None if image.build_ids() else _vmcoreinfo_symbols_disagree(dump, image)
            if fault:
                raise SymbolError(f"the vmlinux is not the dump's kernel: {fault}", path)
        except SymbolError as exc:
            if not force:
                raise SymbolError(f"{exc.message} (--force-vmlinux uses it anyway)", path) from None
            return f"{exc}; using it anyway (--force-vmlinux)"
    finally:
        image.close()
    return None


def _slide(dump: Dump, link_stext: int | None, what: str) -> int:
    """KASLR slide: KERNELOFFSET where the kernel exports it (x86_64, arm64),
    else runtime SYMBOL(_stext) minus the link-time _stext (i386)."""
    info = dump.vmcoreinfo
    if info is None:
        return 0
    if "KERNELOFFSET" in info:
        return dump.kernel_offset  # checked against kallsyms' _stext
    stext = info.symbol("_stext")
    if stext is not None and link_stext is not None:
        return stext - link_stext
    return 0


def _relocate(cols: SymbolColumns, slide: int, dump: Dump) -> SymbolColumns:
    if not slide:
        return cols
    moved = relocated(cols.addresses, cols.types, slide, dump.word_size, dump.arch.kernel_start)
    return SymbolColumns(cols.names, moved, cols.types, cols.sizes)


def _link_stext(cols: SymbolColumns) -> int | None:
    try:
        return cols.addresses[cols.names.index("_stext")]
    except ValueError:
        return None


def _frozen_address(frozen: FrozenSymbols, name: str) -> int | None:
    """The link-time address of `name` (its first global, else first entry)."""
    found = frozen.find(name)
    if not found:
        return None
    return frozen.address(next((i for i in found if frozen.types[i].isupper()), found[0]), 0)


def symbols_from_vmlinux(dump: Dump, path: str) -> SymbolTable:
    image = VmlinuxFile(path)
    try:
        check_build_id(dump, image)
        frozen = dump_frozen_symbols(dump, image)
    finally:
        image.close()
    slide = _slide(dump, _frozen_address(frozen, "_stext"), path)
    return SymbolTable(
        frozen,
        "vmlinux",
        slide,
        dump.word_size,
        path,
        kernel_floor=dump.arch.kernel_start,
    )


def symbols_from_system_map(dump: Dump, path: str) -> SymbolTable:
    cols = SymbolColumns.from_symbols(read_system_map(path))
    slide = _slide(dump, _link_stext(cols), path)
    return SymbolTable(
        _relocate(cols, slide, dump),
        "System.map",
        slide,
        dump.word_size,
        path,
        kernel_floor=dump.arch.kernel_start,
    )


def symbols_from_kallsyms(dump: Dump) -> SymbolTable:
    slide = dump.kernel_offset if dump.vmcoreinfo else 0
    return SymbolTable(
        kallsyms_symbols(dump, slide),
        "kallsyms",
        slide,
        dump.word_size,
        dump.path,
        kernel_floor=dump.arch.kernel_start,
    )


def load_symbols(
    dump: Dump, system_map: str | None = None, prefer: str | None = None
) -> SymbolTable:
    """The best symbol table for `dump`. `system_map` (or dump.system_map,
    from `kvmcore.open(..., system_map=)` and the CLI's --system-map) names
    a System.map, else one is looked for next to the vmlinux; `prefer` forces
    one of "vmlinux", "System.map", "kallsyms"."""
    vmlinux = dump.vmlinux
    system_map = system_map or dump.system_map
    if system_map is None and vmlinux:
        info = dump.vmcoreinfo
        system_map = find_system_map(vmlinux, info.osrelease if info else None)
    if prefer == "vmlinux" or (prefer is None and vmlinux):
        if not vmlinux:
            raise SymbolError("no vmlinux given", dump.path)
        image = VmlinuxFile(vmlinux)
        stripped = not image.has_symtab()
        image.close()
        if not stripped or prefer == "vmlinux":
            return symbols_from_vmlinux(dump, vmlinux)
    if prefer == "System.map" or (prefer is None and system_map):
        if not system_map:
            raise SymbolError("no System.map given or found next to the vmlinux", dump.path)
        return symbols_from_system_map(dump, system_map)
    if prefer not in (None, "kallsyms"):
        raise SymbolError(f"unknown symbol source {prefer!r}", dump.path)
    return symbols_from_kallsyms(dump)
