"""i386: 32-bit x86 with 2-level (4 KB and 4 MB pages) and PAE 3-level (4 KB
and 2 MB pages) paging, the kernel direct map at PAGE_OFFSET, PRSTATUS and gdb
register layouts, the Linux context-switch frame.

The walks are the two 32-bit ones of the x86 MMU (as Xen's gdbserver does for
32-bit and PAE guests); the 64-bit one lives in arches/x86_64.py.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kvmcore.errors import AddressError, KvmcoreError, UnsupportedError
from kvmcore.pagetable import INVALID, LEAF, TABLE, Level, RadixTable, RadixTranslator, Translator
from kvmcore.registry import ArchBackend, GdbRegister, PrstatusLayout, register_arch
from kvmcore.unwind.dwarf_cfi import CfiRegisters
from kvmcore.unwind.framepointer import FramePointerUnwinder

if TYPE_CHECKING:
    from kvmcore.dump import Dump
    from kvmcore.formats.base import PhysicalMemory

PRESENT = 1 << 0
PSE = 1 << 7  # a 4 MB (2-level) or 2 MB (PAE) leaf in a page directory
#: Linux's default 3G/1G split (CONFIG_VMSPLIT_3G); the others are tried when
#: the page tables do not map swapper_pg_dir at the default
PAGE_OFFSETS = (0xC0000000, 0x80000000, 0xB0000000, 0x78000000, 0x40000000)
PAE_ADDR_MASK = 0x000FFFFFFFFFF000  # bits 51:12; bit 63 is NX

# struct user_regs_struct (i386), the order of elf_prstatus.pr_reg; the x*
# segment fields are named without the x, as gdb names them
USER_REGS = ("ebx", "ecx", "edx", "esi", "edi", "ebp", "eax", "ds", "es", "fs", "gs",
             "orig_eax", "eip", "cs", "eflags", "esp", "ss")


class I386Tables(RadixTable):
    """Non-PAE: 1024-entry page directory and page tables of 4-byte entries;
    a PSE directory entry maps 4 MB (PSE-36 puts physical bits 39:32 in entry
    bits 20:13). PAE: a 4-entry PDPT, then 512-entry directories and tables of
    8-byte entries; a PS directory entry maps 2 MB."""

    def __init__(self, pae: bool) -> None:
        self.pae = pae
        if pae:
            self.entry_size = 8
            self.levels = [Level(30, 2), Level(21, 9), Level(12, 9)]
        else:
            self.entry_size = 4
            self.levels = [Level(22, 10), Level(12, 10)]

    def decode(self, entry: int, depth: int) -> tuple[int, int]:
        if not entry & PRESENT:
            return INVALID, 0
        if self.pae:
            if depth == 2:
                return LEAF, entry & PAE_ADDR_MASK
            if depth == 1 and entry & PSE:
                return LEAF, entry & PAE_ADDR_MASK & ~((1 << 21) - 1)
            return TABLE, entry & PAE_ADDR_MASK  # PDPT entries have no PS bit
        if depth == 1:
            return LEAF, entry & 0xFFFFF000
        if entry & PSE:
            return LEAF, (entry & 0xFFC00000) | (((entry >> 13) & 0xFF) << 32)
        return TABLE, entry & 0xFFFFF000


@register_arch("i686", "x86", "ia32")
class I386(ArchBackend):
    name = "i386"
    word_size = 4
    pc_reg, sp_reg, fp_reg = "eip", "esp", "ebp"
    # elf_prstatus: pr_pid at 24, four 8-byte timevals, pr_reg (17 longs) at 72, pr_fpvalid
    elf_machine = 3  # EM_386
    freebsd_machine = "i386"
    prstatus_layout = PrstatusLayout(size=144, pid_offset=24, regs_offset=72,
                                     reg_names=USER_REGS, reg_size=4)
    gdb_arch = "i386"
    gdb_registers = tuple(
        [GdbRegister(n, 32, "int32") for n in ("eax", "ecx", "edx", "ebx")]
        + [GdbRegister("esp", 32, "data_ptr"), GdbRegister("ebp", 32, "data_ptr")]
        + [GdbRegister(n, 32, "int32") for n in ("esi", "edi")]
        + [GdbRegister("eip", 32, "code_ptr"), GdbRegister("eflags", 32, "i386_eflags")]
        + [GdbRegister(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
        # gdb's i386 core feature includes the x87 registers and its SSE feature
        # xmm0-7; a dump has none of them, so they are sent as unavailable
        + [GdbRegister(f"st{i}", 80, "i387_ext") for i in range(8)]
        + [GdbRegister(n, 32, "int", "float") for n in
           ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")]
        + [GdbRegister(f"xmm{i}", 128, "vec128", feature="org.gnu.gdb.i386.sse")
           for i in range(8)]
        + [GdbRegister("mxcsr", 32, "i386_mxcsr", "vector", feature="org.gnu.gdb.i386.sse")]
        + [GdbRegister("orig_eax", 32, "int", feature="org.gnu.gdb.i386.linux")])
    gdb_features = ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.linux")

    def __init__(self, mem: "PhysicalMemory") -> None:
        super().__init__(mem)
        self._page_offset: int | None = None

    # -- probing ---------------------------------------------------------
    @classmethod
    def probe(cls, mem: "PhysicalMemory") -> bool:
        """An EM_386 ELF (QEMU wraps it in ELF64) or a kdump whose utsname says
        i?86; VMCOREINFO, when present, must not describe an x86_64 kernel
        (init_top_pgt) and swapper_pg_dir must be a 32-bit address."""
        if mem.facts.machine != cls.name:
            return False
        info = mem.vmcoreinfo
        if info is None:
            return True
        if info.symbol("init_top_pgt") is not None or info.symbol("init_level4_pgt") is not None:
            return False
        root = info.symbol("swapper_pg_dir")
        return root is None or root < 1 << 32

    # -- translation -----------------------------------------------------
    def pae(self) -> bool:
        """PAE paging: the 686-pae kernel's VMCOREINFO has CONFIG_X86_PAE=y."""
        info = self.vmcoreinfo
        if info is None:
            return False
        return info.get("CONFIG_X86_PAE") == "y" or bool(info.number("X86_PAE"))

    def _swapper_pg_dir(self) -> int:
        info = self.vmcoreinfo
        if info is None:
            raise UnsupportedError("no VMCOREINFO: cannot locate the kernel page tables "
                                   "(QEMU dumps need -device vmcoreinfo)", self.path)
        root = info.symbol("swapper_pg_dir")
        if root is None:
            raise UnsupportedError("VMCOREINFO has no SYMBOL(swapper_pg_dir)", self.path)
        return root

    def page_offset(self) -> int:
        """Start of the direct map. i386 VMCOREINFO does not export it, so the
        default split is checked first: the tables rooted at __pa(swapper_pg_dir)
        must map swapper_pg_dir's own address to that physical address."""
        if self._page_offset is not None:
            return self._page_offset
        va = self._swapper_pg_dir()
        tables = I386Tables(self.pae())
        for offset in PAGE_OFFSETS:
            if va < offset:
                continue
            walker = RadixTranslator(tables, va - offset, self.mem.read_phys, "little", self.path)
            try:
                if walker.translate(va).pa == va - offset:
                    self._page_offset = offset
                    return offset
            except (AddressError, KvmcoreError):
                continue
        raise UnsupportedError(
            f"no PAGE_OFFSET among {', '.join(hex(o) for o in PAGE_OFFSETS)} makes the page "
            f"tables map swapper_pg_dir ({va:#x}) to its own physical address "
            f"({'PAE' if self.pae() else '2-level'} paging)", self.path)

    def page_table_root(self) -> int:
        """Physical address of swapper_pg_dir (the PDPT with PAE): kva - PAGE_OFFSET."""
        return self._swapper_pg_dir() - self.page_offset()

    def full_translator(self) -> Translator:
        if self.mem.facts.os == "freebsd":
            raise UnsupportedError("i386: FreeBSD dumps are not supported", self.path)
        return RadixTranslator(I386Tables(self.pae()), self.page_table_root(),
                               self.mem.read_phys, "little", self.path)

    def is_kernel_address(self, va: int) -> bool:
        try:
            return va >= self.page_offset()
        except KvmcoreError:
            return va >= PAGE_OFFSETS[0]

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"arch": self.name, "pae": self.pae()}
        try:
            out["page_offset"] = self.page_offset()
        except KvmcoreError:
            pass
        return out

    # -- kernel hooks ----------------------------------------------------
    def unwinder(self, dump: "Dump") -> "I386Unwinder":
        return I386Unwinder(dump)

    def linux_switch_frame(self, dump: "Dump", task: Any) -> dict[str, int]:
        """A sleeping task's thread.sp points at the struct inactive_task_frame
        __switch_to_asm pushed (i386: flags, si, di, bx, bp, ret_addr); its
        return address is where the task resumes."""
        types = dump.types
        sp = dump.read_ptr(task + types.offsetof("struct task_struct", "thread.sp"))
        frame = "struct inactive_task_frame"
        regs = {"esp": sp + types.sizeof(frame)}
        names = {"ret_addr": "eip", "bp": "ebp", "bx": "ebx", "si": "esi", "di": "edi",
                 "flags": "eflags"}
        for member in types.members(frame):
            if member in names:
                regs[names[member]] = dump.read_ptr(sp + types.offsetof(frame, member))
        return regs


# -- kernel backtraces --------------------------------------------------
# i386 backtraces: the ebp chain of {saved ebp, return address} records
# (32-bit kernels are built with frame pointers). Register names as in an
# i386 user_regs_struct: eip, esp, ebp.

# DWARF register numbers (i386 SysV psABI); eip (8) is the return address column
CFI_REGISTERS = CfiRegisters({0: "eax", 1: "ecx", 2: "edx", 3: "ebx", 4: "esp", 5: "ebp",
                              6: "esi", 7: "edi", 8: "eip"}, sp_column=4, pc_name="eip")


class I386Unwinder(FramePointerUnwinder):
    pc_reg, sp_reg, fp_reg = "eip", "esp", "ebp"
    cfi_registers = CFI_REGISTERS
    thread_size = 8192  # THREAD_SIZE_ORDER 1

    def is_user(self, regs: dict[str, int]) -> bool:
        return (regs.get("xcs", regs.get("cs", 0)) & 3) == 3
