"""How far the kernel image moved from its link address (KASLR, i386's
relocation), and where that figure came from.

VMCOREINFO's KERNELOFFSET is only text in the dump: missing (i386), 0, not
hex, negative or huge it must not be taken on trust, since it relocates every
symbol of a vmlinux and feeds gdb's `symbol-file -o`. It is checked against
the runtime `_stext` (kallsyms decoded from the dump, else VMCOREINFO's
SYMBOL(_stext)) less the link-time `_stext` (the vmlinux's or System.map's,
else the architecture's default link address); where the two disagree the
measured one is used, and the note says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import KvmcoreError
from .kallsyms import stext_address
from .sysmap import read_system_map
from .vmlinux import VmlinuxFile, dump_frozen_symbols

if TYPE_CHECKING:
    from ..dump import Dump

#: `_stext` where Linux links it with the default configuration
#: (CONFIG_PHYSICAL_START; arm64's KIMAGE_VADDR + the image header): Debian's
#: System.map files say the same
DEFAULT_LINK_STEXT = {
    "x86_64": 0xFFFFFFFF81000000,
    "i386": 0xC1000000,
    "aarch64": 0xFFFF800008010000,
}


@dataclass(frozen=True)
class KernelOffset:
    """The offset, its source ("VMCOREINFO", "kallsyms _stext", "none") and
    what was found wrong with VMCOREINFO's figure, if anything."""

    value: int
    source: str
    note: str | None = None


def _runtime_stext(dump: Dump) -> int | None:
    try:
        return stext_address(dump)
    except (KvmcoreError, ValueError):
        info = dump.vmcoreinfo
        return info.symbol("_stext") if info is not None else None


def _link_stext(dump: Dump) -> tuple[int, str]:
    """The link-time _stext and what it came from."""
    if dump.vmlinux:
        try:
            image = VmlinuxFile(dump.vmlinux)
            try:
                frozen = dump_frozen_symbols(dump, image)
            finally:
                image.close()
            found = frozen.find("_stext")
            if found:
                return frozen.address(found[0], 0), "the vmlinux"
        except (KvmcoreError, ValueError):
            pass
    if dump.system_map:
        try:
            for sym in read_system_map(dump.system_map):
                if sym.name == "_stext":
                    return sym.address, "System.map"
        except KvmcoreError:
            pass
    return DEFAULT_LINK_STEXT.get(dump.arch.name, 0), "the default link address"


def _vmcoreinfo_offset(dump: Dump) -> tuple[int | None, str | None]:
    """KERNELOFFSET when it is a plain hex number that fits the word, else
    (None, why not)."""
    info = dump.vmcoreinfo
    if info is None or "KERNELOFFSET" not in info:
        return None, "no KERNELOFFSET in VMCOREINFO"
    if "KERNELOFFSET" in info.conflicts:
        return None, f"VMCOREINFO has KERNELOFFSET {len(info.conflicts['KERNELOFFSET'])} times"
    text = info.get("KERNELOFFSET") or ""
    try:
        value = int(text, 16)
    except ValueError:
        return None, f"VMCOREINFO KERNELOFFSET={text!r} is not hex"
    if value < 0 or value >> (dump.word_size * 8 - 1):
        return None, f"VMCOREINFO KERNELOFFSET={text!r} is out of range"
    return value, None


def measure_kernel_offset(dump: Dump) -> KernelOffset:
    """The kernel's offset, checked as the module docstring says."""
    claimed, fault = _vmcoreinfo_offset(dump)
    runtime = _runtime_stext(dump)
    measured = None
    if runtime is not None and dump.os == "linux":
        link, link_source = _link_stext(dump)
        delta = runtime - link
        if link and 0 <= delta < 1 << (dump.word_size * 8 - 1):
            measured = delta
    if claimed is not None and (measured is None or claimed == measured):
        return KernelOffset(claimed, "VMCOREINFO")
    if measured is not None:
        why = fault or f"VMCOREINFO KERNELOFFSET={claimed:#x} disagrees"
        return KernelOffset(
            measured, "kallsyms _stext", f"{why}; _stext {runtime:#x} vs {link_source}"
        )
    return KernelOffset(0, "none", fault)
