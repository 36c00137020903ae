"""Loaded kernel modules: name, base, size, sections and taints."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KvmcoreError, WalkError

if TYPE_CHECKING:
    from ..dump import Dump
    from ..types import TypeInfo
    from . import LinuxKernel

MAX_MODULES = 1 << 14
MAX_SECTIONS = 4096
# module->taints bits the kernel names per module (taint_flags[] entries with
# .module set), in bit order as module_flags_taint() prints them: "(POE)"
MODULE_TAINTS = {0: "P", 1: "F", 10: "C", 12: "O", 13: "E", 15: "K", 18: "N"}


@dataclass
class Module:
    name: str
    address: int
    base: int
    size: int
    taints: int = 0
    sections: dict[str, int] = field(default_factory=dict)
    #: (name, address, size, type letter) from the module's own kallsyms
    symbols: list[tuple[str, int, int, str]] = field(default_factory=list, repr=False)

    @property
    def taint_flags(self) -> str:
        return "".join(
            flag for bit, flag in sorted(MODULE_TAINTS.items()) if self.taints >> bit & 1
        )

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "base": f"{self.base:#x}",
            "size": self.size,
            "taints": self.taint_flags,
            "address": f"{self.address:#x}",
            "sections": {k: f"{v:#x}" for k, v in self.sections.items()},
        }


def read_modules(kernel: LinuxKernel) -> list[Module]:
    dump = kernel.dump
    types = dump.types
    head = kernel.require("modules")
    mod = "struct module"
    off_list = types.offsetof(mod, "list")
    off_name = types.offsetof(mod, "name")
    if types.has_member(mod, "core_layout"):  # up to 6.3
        off_base = types.offsetof(mod, "core_layout.base")
        size_offsets = [types.offsetof(mod, "core_layout.size")]
    else:  # 6.4+: base mem[MOD_TEXT]; the size /proc/modules shows sums every mem[]
        # (module_total_size; the init ones are 0 once the module is live)
        off_mem = types.offsetof(mod, "mem")
        off_base = off_mem + types.offsetof("struct module_memory", "base")
        stride = types.sizeof("struct module_memory")
        size_at = off_mem + types.offsetof("struct module_memory", "size")
        size_offsets = [size_at + i * stride for i in range(types.array_length(mod, "mem"))]
    off_taints = types.offsetof(mod, "taints")
    modules: list[Module] = []
    node = dump.read_ptr(head)
    seen: set[int] = set()
    for _ in range(MAX_MODULES):
        if node == head:
            break
        if node in seen:
            raise WalkError(f"module list loops at {node:#x}", dump.path)
        seen.add(node)
        addr = node - off_list
        name = dump.read(addr + off_name, 56).split(b"\0", 1)[0].decode("utf-8", "replace")
        module = Module(
            name,
            addr,
            dump.read_ptr(addr + off_base),
            sum(dump.read_u32(addr + off) for off in size_offsets),
            dump.read_ptr(addr + off_taints),
        )
        with contextlib.suppress(KvmcoreError):
            # sections are a convenience; the module itself is known
            module.sections = _sections(dump, types, addr)
        with contextlib.suppress(KvmcoreError):
            # without them, frames in the module show as [module] only
            module.symbols = _kallsyms(dump, types, addr)
        modules.append(module)
        node = dump.read_ptr(node)
    return modules


MAX_MODULE_SYMBOLS = 1 << 18


def _kallsyms(dump: Dump, types: TypeInfo, addr: int) -> list[tuple[str, int, int, str]]:
    """module->kallsyms: the module's Elf_Sym table, strtab and typetab, as the
    kernel keeps them for /proc/kallsyms."""
    mod_ks = dump.read_ptr(addr + types.offsetof("struct module", "kallsyms"))
    if not mod_ks:
        return []
    mk = "struct mod_kallsyms"
    symtab = dump.read_ptr(mod_ks + types.offsetof(mk, "symtab"))
    count = dump.read_u32(mod_ks + types.offsetof(mk, "num_symtab"))
    strtab = dump.read_ptr(mod_ks + types.offsetof(mk, "strtab"))
    typetab = dump.read_ptr(mod_ks + types.offsetof(mk, "typetab"))
    if not symtab or not strtab or count > MAX_MODULE_SYMBOLS:
        return []
    wide = dump.word_size == 8
    entsize = 24 if wide else 16
    raw = dump.read(symtab, count * entsize)
    kinds = dump.read(typetab, count) if typetab else b"t" * count
    bo = dump.byteorder
    out = []
    for i in range(count):
        e = raw[i * entsize : (i + 1) * entsize]
        name_off = int.from_bytes(e[0:4], bo)
        if wide:
            value, size = int.from_bytes(e[8:16], bo), int.from_bytes(e[16:24], bo)
        else:
            value, size = int.from_bytes(e[4:8], bo), int.from_bytes(e[8:12], bo)
        if not value or not name_off:
            continue
        name = dump.read_cstring(strtab + name_off, 256)
        if name and name[0] != "$":
            out.append((name, value, size, chr(kinds[i])))
    return out


def _sections(dump: Dump, types: TypeInfo, addr: int) -> dict[str, int]:
    """module->sect_attrs->attrs[i]: (battr.attr.name, address)."""
    mod = "struct module"
    attrs = dump.read_ptr(addr + types.offsetof(mod, "sect_attrs"))
    if not attrs:
        return {}
    msa = "struct module_sect_attrs"
    count = dump.read_u32(attrs + types.offsetof(msa, "nsections"))
    first = attrs + types.offsetof(msa, "attrs")
    size = types.sizeof("struct module_sect_attr")
    off_name = types.offsetof("struct module_sect_attr", "battr.attr.name")
    off_addr = types.offsetof("struct module_sect_attr", "address")
    out = {}
    for i in range(min(count, MAX_SECTIONS)):
        entry = first + i * size
        name = dump.read_cstring(dump.read_ptr(entry + off_name), 128)
        out[name] = dump.read_ptr(entry + off_addr)
    return out
