"""x86_64: 4- and 5-level paging, 2 MB and 1 GB pages, KASLR, PRSTATUS and
gdb register layouts, the Linux context-switch frame."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmcore.errors import UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable, RadixTranslator, Translator
from kvmcore.registry import ArchBackend, GdbRegister, PrstatusLayout, register_arch

if TYPE_CHECKING:
    from kvmcore.dump import Dump

START_KERNEL_MAP = 0xFFFFFFFF80000000
PRESENT = 1 << 0
PSE = 1 << 7  # a leaf at the PDPT (1 GB) or PD (2 MB) level
ADDR_MASK = 0x000FFFFFFFFFF000

# struct user_regs_struct, the order of elf_prstatus.pr_reg
USER_REGS = ("r15", "r14", "r13", "r12", "rbp", "rbx", "r11", "r10", "r9", "r8", "rax",
             "rcx", "rdx", "rsi", "rdi", "orig_rax", "rip", "cs", "eflags", "rsp", "ss",
             "fs_base", "gs_base", "ds", "es", "fs", "gs")


class X86_64Tables(RadixTable):
    entry_size = 8

    def __init__(self, five_level: bool) -> None:
        shifts = (48, 39, 30, 21, 12) if five_level else (39, 30, 21, 12)
        self.levels = [Level(s, 9) for s in shifts]
        self._leaf_ok = {len(shifts) - 3: 30, len(shifts) - 2: 21}  # depth -> PS leaf shift
        self._last = len(shifts) - 1
        self.va_bits = 57 if five_level else 48

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PRESENT:
            return INVALID, 0
        if depth == self._last:
            return LEAF, entry & ADDR_MASK
        shift = self._leaf_ok.get(depth)
        if shift and entry & PSE:
            return LEAF, entry & ADDR_MASK & ~((1 << shift) - 1)
        return TABLE, entry & ADDR_MASK

    def canonical(self, va: int) -> int:
        if va & (1 << (self.va_bits - 1)):
            va |= ~((1 << self.va_bits) - 1) & 0xFFFFFFFFFFFFFFFF
        return va


@register_arch("amd64", "x86-64")
class X86_64(ArchBackend):
    name = "x86_64"
    word_size = 8
    pc_reg, sp_reg, fp_reg = "rip", "rsp", "rbp"
    prstatus_layout = PrstatusLayout(size=336, pid_offset=32, regs_offset=112,
                                     reg_names=USER_REGS, reg_size=8)
    gdb_arch = "i386:x86-64"
    gdb_registers = tuple(
        [GdbRegister(n, 64, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
        + [GdbRegister("rbp", 64, "data_ptr"), GdbRegister("rsp", 64, "data_ptr")]
        + [GdbRegister(f"r{i}", 64, "int64") for i in range(8, 16)]
        + [GdbRegister("rip", 64, "code_ptr"), GdbRegister("eflags", 32, "i386_eflags")]
        + [GdbRegister(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")])

    def page_table_root(self) -> int:
        """Physical address of the kernel's top-level table (init_top_pgt)."""
        info = self.vmcoreinfo
        if info is None:
            raise UnsupportedError("no VMCOREINFO: cannot locate the kernel page tables "
                                   "(QEMU dumps need -device vmcoreinfo)", self.path)
        root = info.symbol("init_top_pgt") or info.symbol("init_level4_pgt")
        if root is None:
            raise UnsupportedError("VMCOREINFO has no SYMBOL(init_top_pgt)", self.path)
        return root - START_KERNEL_MAP + (info.number("phys_base") or 0)

    def five_level(self) -> bool:
        info = self.vmcoreinfo
        return bool(info and info.number("pgtable_l5_enabled"))

    def full_translator(self) -> Translator:
        return RadixTranslator(X86_64Tables(self.five_level()), self.page_table_root(),
                               self.mem.read_phys, "little", self.path)

    def linux_switch_frame(self, dump: "Dump", task: Any) -> dict[str, int]:
        """A sleeping task's thread.sp points at its struct inactive_task_frame,
        which __switch_to_asm pushed; its return address is the resume point."""
        types = dump.types
        sp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.sp"))
        frame = "struct inactive_task_frame"
        regs = {"rsp": sp + types.sizeof(frame)}
        for member in types.members(frame):
            if member in ("ret_addr",):
                regs["rip"] = dump.read_ptr(sp + types.offsetof(frame, member))
            elif member in ("bp", "bx", "r12", "r13", "r14", "r15"):
                name = "r" + member if member in ("bp", "bx") else member
                regs[name] = dump.read_ptr(sp + types.offsetof(frame, member))
        return regs
