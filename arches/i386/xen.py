"""32-bit x86 Xen HVM guests (kvmcore/formats/xen_dumpcore.py): the walk
starts at the CR3 of a vCPU with paging on, PAE or 2-level as its CR4 says
(as gdbserver-xen's map_domain_va chose between its 32-bit and PAE walks).
Xen saves every HVM vCPU in the 64-bit vcpu_guest_context: the 32-bit
registers are the low halves of its 64-bit ones. (32-bit PV guests are not
read: formats/xen_dumpcore.py refuses them.)"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from kvmcore.cpu import CpuState
from kvmcore.errors import UnsupportedError
from kvmcore.formats.base import PhysicalMemory
from kvmcore.formats.xen_dumpcore import XenDumpCore
from kvmcore.formats.xen_vcpu import CR4_PAE, VcpuContext, paging_vcpu
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import TranslatorFlavour, register_translator
from kvmcore.translate import MappedRange, TranslationContext, Translator

from .cpu import DEFAULT_PAGE_OFFSET
from .linux import find_page_offset
from .mmu import I386Tables

XEN_HVM = "xen-hvm"
CR3_PAE_MASK = 0xFFFFFFE0  # PAE: the PDPT is 32-byte aligned
CR3_MASK = 0xFFFFF000


def xen_core(mem: PhysicalMemory) -> XenDumpCore:
    if not isinstance(mem, XenDumpCore):
        raise UnsupportedError("not a Xen dump-core file", mem.path)
    return mem


def is_xen_hvm(mem: PhysicalMemory) -> bool:
    return mem.facts.kind == XEN_HVM


class XenHVM32Translator(RadixTranslator[I386Tables]):
    def __init__(self, ctx: TranslationContext, core: XenDumpCore) -> None:
        vcpu = paging_vcpu(core.vcpus)
        if vcpu is None:
            raise UnsupportedError("no vCPU has paging on: no page table to walk", ctx.path)
        pae = bool(vcpu.ctrlreg[4] & CR4_PAE)
        if ctx.page_table_root is not None:
            root, self.root_from = ctx.page_table_root, "the root given"
        else:
            root = vcpu.ctrlreg[3] & (CR3_PAE_MASK if pae else CR3_MASK)
            self.root_from = f"vCPU {vcpu.index}'s CR3"
        super().__init__(I386Tables(pae), root, core.read_phys, "little", ctx.path)
        # Linux's PAGE_OFFSET when VMCOREINFO names swapper_pg_dir; else the arch's default
        self.kernel_start = None
        if ctx.vmcoreinfo is not None and ctx.vmcoreinfo.symbol("swapper_pg_dir") is not None:
            self.kernel_start = find_page_offset(ctx, self.table)

    def walk(self) -> Iterator[MappedRange]:
        """The kernel's mappings only: the CR3 is a process's table."""
        start = DEFAULT_PAGE_OFFSET if self.kernel_start is None else self.kernel_start
        for rng in super().walk():
            if rng.va + rng.size <= start:
                continue
            cut = max(0, start - rng.va)
            yield MappedRange(rng.va + cut, rng.pa + cut, rng.size - cut, rng.page_size)

    def describe(self) -> dict[str, Any]:
        return {
            "paging": "i386 HVM, " + ("PAE" if self.table.pae else "2-level"),
            "root": f"{self.root:#x}",
            "root_from": self.root_from,
            "page_offset": None if self.kernel_start is None else f"{self.kernel_start:#x}",
        }


def build(ctx: TranslationContext) -> Translator:
    return XenHVM32Translator(ctx, xen_core(ctx.mem))


_LOW = ("eax", "ebx", "ecx", "edx", "esi", "edi", "ebp", "esp", "eip")


def vcpu_registers(vcpu: VcpuContext) -> dict[str, int]:
    """A vCPU's registers in i386 NT_PRSTATUS's names (the low halves of
    Xen's 64-bit ones), plus cr0-cr7 and dr0-dr7."""
    u = vcpu.user_regs
    regs = {name: u["r" + name[1:]] & 0xFFFFFFFF for name in _LOW}
    regs["eflags"] = u["rflags"] & 0xFFFFFFFF
    regs.update({seg: u[seg] for seg in ("cs", "ss", "ds", "es", "fs", "gs")})
    regs.update({f"cr{i}": value for i, value in enumerate(vcpu.ctrlreg)})
    regs.update({f"dr{i}": value for i, value in enumerate(vcpu.debugreg)})
    return regs


def cpu_states(mem: PhysicalMemory) -> list[CpuState]:
    return [
        CpuState(v.index, 0, vcpu_registers(v), v.raw, numbered=True) for v in xen_core(mem).vcpus
    ]


register_translator(TranslatorFlavour("i386", XEN_HVM, is_xen_hvm, build, cpu_states))
