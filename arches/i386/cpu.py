"""i386 CPU facts: the saved-register layouts and register numberings."""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.formats.base import PhysicalMemory
from kvmcore.registry import Arch

# struct user_regs_struct (i386), the order of elf_prstatus.pr_reg; the x*
# segment fields are named without the x, as gdb names them
USER_REGS = (
    "ebx",
    "ecx",
    "edx",
    "esi",
    "edi",
    "ebp",
    "eax",
    "ds",
    "es",
    "fs",
    "gs",
    "orig_eax",
    "eip",
    "cs",
    "eflags",
    "esp",
    "ss",
)
#: Linux's default 3G/1G split (CONFIG_VMSPLIT_3G): the kernel half when the
#: tables have not told otherwise
DEFAULT_PAGE_OFFSET = 0xC0000000


def not_x86_64(mem: PhysicalMemory) -> bool:
    """QEMU wraps an i386 guest in an EM_386 ELF64 (a kdump's utsname says
    i?86); VMCOREINFO, when present, must not describe an x86_64 kernel
    (init_top_pgt) and swapper_pg_dir must be a 32-bit address."""
    info = mem.vmcoreinfo
    if info is None:
        return True
    if info.symbol("init_top_pgt") is not None or info.symbol("init_level4_pgt") is not None:
        return False
    root = info.symbol("swapper_pg_dir")
    return root is None or root < 1 << 32


GDB_REGISTERS = tuple(
    [GdbRegister(n, 32, "int32") for n in ("eax", "ecx", "edx", "ebx")]
    + [GdbRegister("esp", 32, "data_ptr"), GdbRegister("ebp", 32, "data_ptr")]
    + [GdbRegister(n, 32, "int32") for n in ("esi", "edi")]
    + [GdbRegister("eip", 32, "code_ptr"), GdbRegister("eflags", 32, "i386_eflags")]
    + [GdbRegister(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    # gdb's i386 core feature includes the x87 registers and its SSE feature
    # xmm0-7; a dump has none of them, so they are sent as unavailable
    + [GdbRegister(f"st{i}", 80, "i387_ext") for i in range(8)]
    + [
        GdbRegister(n, 32, "int", "float")
        for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
    ]
    + [GdbRegister(f"xmm{i}", 128, "vec128", feature="org.gnu.gdb.i386.sse") for i in range(8)]
    + [GdbRegister("mxcsr", 32, "i386_mxcsr", "vector", feature="org.gnu.gdb.i386.sse")]
    + [GdbRegister("orig_eax", 32, "int", feature="org.gnu.gdb.i386.linux")]
)

ARCH = Arch(
    name="i386",
    word_size=4,
    pc_reg="eip",
    sp_reg="esp",
    fp_reg="ebp",
    aliases=("i686", "x86", "ia32"),
    elf_machine=3,  # EM_386
    freebsd_machine="i386",
    # elf_prstatus: pr_pid at 24, four 8-byte timevals, pr_reg (17 longs) at 72, pr_fpvalid
    prstatus=PrstatusLayout(
        size=144, pid_offset=24, regs_offset=72, reg_names=USER_REGS, reg_size=4
    ),
    # DWARF register numbers (i386 SysV psABI); eip (8) is the return address column
    dwarf=DwarfRegisters(
        {0: "eax", 1: "ecx", 2: "edx", 3: "ebx", 4: "esp", 5: "ebp", 6: "esi", 7: "edi", 8: "eip"},
        sp_column=4,
        pc_name="eip",
    ),
    gdb=GdbTarget(
        "i386",
        ("org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse", "org.gnu.gdb.i386.linux"),
        GDB_REGISTERS,
    ),
    kernel_start=DEFAULT_PAGE_OFFSET,
    probe_hook=not_x86_64,
)
