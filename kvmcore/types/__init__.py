"""Kernel type information: `load_types(dump)` -> TypeInfo.

Sources: BTF (the vmlinux's .BTF section, else the dump's own memory),
DWARF from the vmlinux (only when there is no BTF, or on request with
prefer="dwarf"; indexed once per build id and cached on disk), and the
VMCOREINFO helper variables as the last word.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..errors import KvmcoreError, TypeInfoError
from .btf import BtfTypes
from .btf_source import btf_from_memory, btf_from_vmlinux
from .facade import TypeInfo, TypeSource, type_size
from .helpers import VmcoreInfoTypes
from .model import Member, Type

if TYPE_CHECKING:
    from ..dump import Dump

__all__ = ["TypeInfo", "Type", "Member", "BtfTypes", "load_types", "load_btf", "type_size"]


def load_btf(dump: Dump, notes: list[str] | None = None) -> BtfTypes | None:
    """BTF from the vmlinux when given, else from the dump's memory."""
    notes = notes if notes is not None else []
    vmlinux = getattr(dump, "vmlinux", None)
    info = dump.vmcoreinfo
    build_id = info.build_id if info is not None else None
    if vmlinux:
        try:
            blob = btf_from_vmlinux(vmlinux)
            if blob:
                return BtfTypes(blob, dump.word_size, f"{vmlinux} (.BTF)", build_id)
            notes.append("the vmlinux has no .BTF section")
        except KvmcoreError as exc:
            notes.append(f"vmlinux BTF: {exc}")
    try:
        return BtfTypes(btf_from_memory(dump), dump.word_size, f"{dump.path} (memory)", build_id)
    except KvmcoreError as exc:
        notes.append(f"no BTF: {exc.message}")
        return None


def load_types(dump: Dump, prefer: str | None = None) -> TypeInfo:
    """Type info for `dump`; prefer="dwarf" puts DWARF first (and loads it
    even when BTF exists), prefer="btf" skips DWARF."""
    notes: list[str] = []
    btf = load_btf(dump, notes)
    dwarf = None
    vmlinux = getattr(dump, "vmlinux", None)
    if prefer == "dwarf" or (btf is None and vmlinux and prefer != "btf"):
        if not vmlinux:
            raise TypeInfoError("DWARF types need a vmlinux", dump.path)
        try:
            from .dwarf import DwarfTypes

            dwarf = DwarfTypes.open(vmlinux, dump.word_size)
        except KvmcoreError as exc:
            if prefer == "dwarf":
                raise
            notes.append(f"no DWARF: {exc}")
    if btf is None and dwarf is None and not vmlinux:
        # a kernel built without BTF (Debian's armmp, 686-pae): only a vmlinux helps,
        # a System.map gives symbols but no types
        info = dump.vmcoreinfo
        release = (info.osrelease if info is not None else None) or "<release>"
        notes = [
            "this kernel has no BTF and no vmlinux was given: its types need the vmlinux "
            f"with debug info (vmlinux-{release}, in Debian's linux-image-{release}-dbg "
            "under /usr/lib/debug/boot); a System.map gives symbols, not types"
        ]
    order = [dwarf, btf] if prefer == "dwarf" else [btf, dwarf]
    sources: list[TypeSource] = [s for s in order if s is not None]
    helpers = VmcoreInfoTypes(dump.vmcoreinfo) if dump.vmcoreinfo else None
    if not sources and helpers is None:
        raise TypeInfoError("no type information: " + "; ".join(notes), dump.path)
    return TypeInfo(sources, helpers, dump.word_size, dump.path, notes)
