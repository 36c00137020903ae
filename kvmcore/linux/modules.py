"""Loaded kernel modules: name, base, size, sections and taints."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KvmcoreError, WalkError

if TYPE_CHECKING:
    from . import LinuxKernel

MAX_MODULES = 1 << 14
MAX_SECTIONS = 4096
# module->taints bits worth naming per module (see panic.TAINT_FLAGS)
MODULE_TAINTS = {0: "P", 12: "O", 13: "E", 10: "C", 1: "F", 15: "K"}


@dataclass
class Module:
    name: str
    address: int
    base: int
    size: int
    taints: int = 0
    sections: dict[str, int] = field(default_factory=dict)

    @property
    def taint_flags(self) -> str:
        return "".join(flag for bit, flag in MODULE_TAINTS.items() if self.taints >> bit & 1)

    def as_dict(self) -> dict:
        return {"name": self.name, "base": f"{self.base:#x}", "size": self.size,
                "taints": self.taint_flags, "address": f"{self.address:#x}",
                "sections": {k: f"{v:#x}" for k, v in self.sections.items()}}


def read_modules(kernel: "LinuxKernel") -> list[Module]:
    dump = kernel.dump
    types = dump.types
    head = kernel.require("modules")
    mod = "struct module"
    off_list = types.offsetof(mod, "list")
    off_name = types.offsetof(mod, "name")
    if types.has_member(mod, "core_layout"):  # up to 6.3
        off_base = types.offsetof(mod, "core_layout.base")
        off_size = types.offsetof(mod, "core_layout.size")
    else:  # 6.4+: mem[MOD_TEXT]
        off_base = types.offsetof(mod, "mem") + types.offsetof("struct module_memory", "base")
        off_size = types.offsetof(mod, "mem") + types.offsetof("struct module_memory", "size")
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
        module = Module(name, addr, dump.read_ptr(addr + off_base),
                        dump.read_u32(addr + off_size), dump.read_ptr(addr + off_taints))
        try:
            module.sections = _sections(dump, types, addr)
        except KvmcoreError:
            pass  # sections are a convenience; the module itself is known
        modules.append(module)
        node = dump.read_ptr(node)
    return modules


def _sections(dump, types, addr: int) -> dict[str, int]:
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
