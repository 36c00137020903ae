"""x86_64 Xen guests (kvmcore/formats/xen_dumpcore.py): their translators
and their registers.

- PV ("xen-pv"): the guest's page tables hold machine frames (MFN), not its
  own pseudo-physical ones. The walk starts at vCPU 0's ctrlreg[3]
  (xen_pfn_to_cr3: the MFN << 12 on x86_64) and reads every table through
  the inverse of .xen_p2m, as gdbserver-xen's x86_64 PV fix does; the leaf's
  machine frame is mapped back the same way, so the translation is a
  pseudo-physical address, the dump's physical space. Xen's 16 slots of the
  top table (its own mappings, a linear page table among them) read as
  empty; any other entry whose frame is not the guest's (a foreign mapping)
  translates to an error and is left out of a walk, counted.
- HVM ("xen-hvm"): guest-physical is the dump's space; the walk starts at the
  CR3 of a vCPU with paging on, 4- or 5-level as its CR4 says.
- Either root is a process's table: a walk of every mapping (`walk`) covers
  the kernel half only.
- Registers: each vCPU's vcpu_guest_context, renamed to the NT_PRSTATUS
  names (rflags -> eflags; gs_base is the kernel's while in the kernel; a
  PV kernel's cs with RPL 0, as its own frames show it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from kvmcore.cpu import CpuState
from kvmcore.errors import NotInDumpError, NotMappedError, UnsupportedError
from kvmcore.formats.base import PhysicalMemory
from kvmcore.formats.xen_dumpcore import XenDumpCore
from kvmcore.formats.xen_vcpu import CR4_LA57, CR4_PAE, VcpuContext, paging_vcpu
from kvmcore.pagetable import RadixTranslator
from kvmcore.registry import TranslatorFlavour, register_translator
from kvmcore.translate import (
    MappedRange,
    Translation,
    TranslationContext,
    Translator,
    coalesce,
)

from .mmu import ADDR_MASK, X86_64Tables

XEN_PV, XEN_HVM = "xen-pv", "xen-hvm"
PAGE = 4096
#: the top table's slots Xen keeps for itself in every 64-bit PV guest
#: (HYPERVISOR_VIRT_START 0xffff800000000000 to _END 0xffff880000000000):
#: its own mappings, among them a linear page table that points back at the
#: top table; none is the guest's, so the walk leaves them out
XEN_SLOTS = range(256, 272)
#: the top table's user half, which a walk of kernel mappings leaves out
USER_SLOTS = range(0, 256)
KERNEL_HALF = 1 << 63


def xen_core(mem: PhysicalMemory) -> XenDumpCore:
    if not isinstance(mem, XenDumpCore):
        raise UnsupportedError("not a Xen dump-core file", mem.path)
    return mem


def is_xen_pv(mem: PhysicalMemory) -> bool:
    return mem.facts.kind == XEN_PV


def is_xen_hvm(mem: PhysicalMemory) -> bool:
    return mem.facts.kind == XEN_HVM


# -- PV -------------------------------------------------------------------------


def blank_slots(
    read: Callable[[int, int], bytes], table: int, slots: range
) -> Callable[[int, int], bytes]:
    """`read`, with entries `slots` of the top table at `table` reading as empty."""
    lo, hi = table + slots.start * 8, table + slots.stop * 8

    def blanked(pa: int, length: int) -> bytes:
        data = read(pa, length)
        if pa < hi and pa + length > lo:
            start, end = max(pa, lo) - pa, min(pa + length, hi) - pa
            data = data[:start] + bytes(end - start) + data[end:]
        return data

    return blanked


class XenPVTranslator(Translator):
    """The x86_64 4-level walk over machine frames, mapped back to pfns. A
    walk covers the kernel half only: the root is a process's table."""

    def __init__(self, core: XenDumpCore, root_mfn: int, root_from: str) -> None:
        self.core = core
        self.path = core.path
        self.root_mfn = root_mfn
        self.root_from = root_from
        self.machine = core.machine_memory()
        #: in the last walk: tables and leaf pages whose frame is not the guest's
        self.foreign_tables = 0
        self.foreign_pages = 0
        root = root_mfn * PAGE
        tables = X86_64Tables(five_level=False)
        read = blank_slots(self._read_table, root, XEN_SLOTS)
        self.walker = RadixTranslator(tables, root, read, "little", self.path)
        kernel_only = blank_slots(read, root, USER_SLOTS)
        self.kernel_walker = RadixTranslator(tables, root, kernel_only, "little", self.path)

    def _read_table(self, ma: int, length: int) -> bytes:
        try:
            return self.machine.read_phys(ma, length)
        except NotInDumpError:
            self.foreign_tables += 1
            raise

    def translate(self, va: int) -> Translation:
        t = self.walker.translate(va)
        try:
            pfn = self.core.pfn_of_mfn(t.pa // PAGE)
        except NotInDumpError as exc:
            raise NotMappedError(
                f"virtual address {va:#x} maps machine address {t.pa:#x}: {exc.message}",
                va,
                self.path,
            ) from None
        return Translation(va, pfn * PAGE + va % PAGE, PAGE)

    def walk(self) -> Iterator[MappedRange]:
        self.foreign_tables = self.foreign_pages = 0
        return coalesce(self._pages())

    def _pages(self) -> Iterator[MappedRange]:
        for rng in self.kernel_walker.walk():
            for done in range(0, rng.size, PAGE):
                try:
                    pfn = self.core.pfn_of_mfn((rng.pa + done) // PAGE)
                except NotInDumpError:
                    self.foreign_pages += 1
                    continue
                yield MappedRange(rng.va + done, pfn * PAGE, PAGE, PAGE)

    def describe(self) -> dict[str, Any]:
        return {
            "paging": "x86_64 PV, 4-level over machine frames mapped back through .xen_p2m",
            "root_mfn": f"{self.root_mfn:#x}",
            "root_pfn": f"{self.core.pfn_of_mfn(self.root_mfn):#x}",
            "root_from": self.root_from,
            "foreign_tables_in_last_walk": self.foreign_tables,
            "foreign_pages_in_last_walk": self.foreign_pages,
        }


def pv_root(ctx: TranslationContext, core: XenDumpCore) -> tuple[int, str]:
    """(MFN of the top-level table, where it came from): an explicit root (a
    pseudo-physical address) first, else vCPU 0's ctrlreg[3], else the first
    vCPU whose ctrlreg[3] is one of the guest's frames."""
    if ctx.page_table_root is not None:
        return core.mfn_of_pfn(ctx.page_table_root // PAGE), "the root given"
    tried = []
    for vcpu in core.vcpus:
        mfn = vcpu.ctrlreg[3] >> 12  # xen_cr3_to_pfn on x86_64
        try:
            core.pfn_of_mfn(mfn)
        except NotInDumpError as exc:
            tried.append(f"vCPU {vcpu.index}: {exc.message}")
            continue
        return mfn, f"vCPU {vcpu.index}'s ctrlreg[3]"
    raise UnsupportedError(
        "no vCPU's ctrlreg[3] names a page table of the guest's ("
        + ("; ".join(tried) or "no vCPU contexts")
        + ")",
        ctx.path,
    )


def build_pv(ctx: TranslationContext) -> Translator:
    core = xen_core(ctx.mem)
    root, source = pv_root(ctx, core)
    return XenPVTranslator(core, root, source)


# -- HVM ------------------------------------------------------------------------


class XenHVMTranslator(RadixTranslator[X86_64Tables]):
    """The guest's own walk from a vCPU's CR3; a walk covers the kernel half
    only (the CR3 is a process's table)."""

    def __init__(self, core: XenDumpCore, root: int, five_level: bool, root_from: str) -> None:
        super().__init__(X86_64Tables(five_level), root, core.read_phys, "little", core.path)
        self.root_from = root_from
        half = 1 << (self.table.levels[0].bits - 1)
        kernel_only = blank_slots(core.read_phys, root, range(half))
        self.kernel_walker = RadixTranslator(self.table, root, kernel_only, "little", core.path)

    def walk(self) -> Iterator[MappedRange]:
        return self.kernel_walker.walk()

    def describe(self) -> dict[str, Any]:
        return {
            "paging": f"x86_64 HVM, {len(self.table.levels)}-level",
            "root": f"{self.root:#x}",
            "root_from": self.root_from,
        }


def build_hvm(ctx: TranslationContext) -> Translator:
    core = xen_core(ctx.mem)
    vcpu = paging_vcpu(core.vcpus)
    if vcpu is None:
        raise UnsupportedError("no vCPU has paging on: no page table to walk", ctx.path)
    cr4 = vcpu.ctrlreg[4]
    if not cr4 & CR4_PAE:
        raise UnsupportedError(
            f"vCPU {vcpu.index} runs a 64-bit kernel without PAE (CR4 {cr4:#x})", ctx.path
        )
    if ctx.page_table_root is not None:
        return XenHVMTranslator(core, ctx.page_table_root, bool(cr4 & CR4_LA57), "the root given")
    root = vcpu.ctrlreg[3] & ADDR_MASK
    return XenHVMTranslator(core, root, bool(cr4 & CR4_LA57), f"vCPU {vcpu.index}'s CR3")


# -- registers ------------------------------------------------------------------

_SAME = (
    "r15",
    "r14",
    "r13",
    "r12",
    "rbp",
    "rbx",
    "r11",
    "r10",
    "r9",
    "r8",
    "rax",
    "rcx",
    "rdx",
    "rsi",
    "rdi",
    "rip",
    "cs",
    "rsp",
    "ss",
    "ds",
    "es",
    "fs",
    "gs",
)


def vcpu_registers(vcpu: VcpuContext, pv: bool = False) -> dict[str, int]:
    """A vCPU's registers in NT_PRSTATUS's names, plus its control and debug
    registers (cr0-cr7, dr0-dr7) and both gs bases. A 64-bit PV kernel runs
    in ring 3 (FLAT_KERNEL_CS64 is 0xe033, the user's selector too), and Xen
    clears CS.RPL in the frames it builds for the guest kernel
    (create_bounce_frame), so its own pt_regs say RPL 0 there: in the kernel
    half, cs is given as the kernel sees it (the raw one stays in `raw`)."""
    regs = {name: vcpu.user_regs[name] for name in _SAME}
    regs["eflags"] = vcpu.user_regs["rflags"]
    regs["fs_base"] = vcpu.fs_base
    in_kernel = regs["rip"] >= KERNEL_HALF
    if pv and in_kernel:
        regs["cs"] &= ~3
    regs["gs_base"] = vcpu.gs_base_kernel if in_kernel else vcpu.gs_base_user
    regs["gs_base_kernel"] = vcpu.gs_base_kernel
    regs["gs_base_user"] = vcpu.gs_base_user
    regs.update({f"cr{i}": value for i, value in enumerate(vcpu.ctrlreg)})
    regs.update({f"dr{i}": value for i, value in enumerate(vcpu.debugreg)})
    return regs


def cpu_states(mem: PhysicalMemory) -> list[CpuState]:
    """One CpuState per vCPU context, numbered by its place in .xen_prstatus."""
    core = xen_core(mem)
    return [
        CpuState(v.index, 0, vcpu_registers(v, core.pv), v.raw, numbered=True) for v in core.vcpus
    ]


register_translator(TranslatorFlavour("x86_64", XEN_PV, is_xen_pv, build_pv, cpu_states))
register_translator(TranslatorFlavour("x86_64", XEN_HVM, is_xen_hvm, build_hvm, cpu_states))
