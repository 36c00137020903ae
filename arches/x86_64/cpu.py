"""x86_64 CPU facts: the saved-register layouts and register numberings."""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.registry import Arch

# struct user_regs_struct, the order of elf_prstatus.pr_reg
USER_REGS = (
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
    "orig_rax",
    "rip",
    "cs",
    "eflags",
    "rsp",
    "ss",
    "fs_base",
    "gs_base",
    "ds",
    "es",
    "fs",
    "gs",
)
# struct pt_regs, in the same names (user_regs_struct's first 21)
PT_REGS = USER_REGS[:21]
# the hardware's interrupt/exception frame
IRET_FRAME = ("rip", "cs", "eflags", "rsp", "ss")

# DWARF register numbers (System V AMD64 psABI); rip (16) is the return address column
DWARF_NUMBERS = {
    "rax": 0,
    "rdx": 1,
    "rcx": 2,
    "rbx": 3,
    "rsi": 4,
    "rdi": 5,
    "rbp": 6,
    "rsp": 7,
    **{f"r{i}": i for i in range(8, 16)},
    "rip": 16,
    "eflags": 49,
    "cs": 51,
    "ss": 52,
}
DWARF_RA = DWARF_NUMBERS["rip"]

GDB_REGISTERS = tuple(
    [GdbRegister(n, 64, "int64") for n in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi")]
    + [GdbRegister("rbp", 64, "data_ptr"), GdbRegister("rsp", 64, "data_ptr")]
    + [GdbRegister(f"r{i}", 64, "int64") for i in range(8, 16)]
    + [GdbRegister("rip", 64, "code_ptr"), GdbRegister("eflags", 32, "i386_eflags")]
    + [GdbRegister(n, 32, "int32") for n in ("cs", "ss", "ds", "es", "fs", "gs")]
    # gdb's amd64 target requires the x87 registers in the core feature and
    # the SSE feature; a dump has none of them, so they are sent as unavailable
    + [GdbRegister(f"st{i}", 80, "i387_ext") for i in range(8)]
    + [
        GdbRegister(n, 32, "int", "float")
        for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop")
    ]
    + [GdbRegister(f"xmm{i}", 128, "vec128", feature="org.gnu.gdb.i386.sse") for i in range(16)]
    + [GdbRegister("mxcsr", 32, "i386_mxcsr", "vector", feature="org.gnu.gdb.i386.sse")]
    + [GdbRegister("orig_rax", 64, "int", feature="org.gnu.gdb.i386.linux")]
    + [
        GdbRegister(n, 64, "int", feature="org.gnu.gdb.i386.segments")
        for n in ("fs_base", "gs_base")
    ]
)

ARCH = Arch(
    name="x86_64",
    word_size=8,
    pc_reg="rip",
    sp_reg="rsp",
    fp_reg="rbp",
    aliases=("amd64", "x86-64"),
    elf_machine=62,  # EM_X86_64
    freebsd_machine="amd64",
    kallsyms_absolute_percpu=True,
    vmcoreinfo_keys=("SYMBOL(init_top_pgt)", "NUMBER(pgtable_l5_enabled)"),
    prstatus=PrstatusLayout(
        size=336, pid_offset=32, regs_offset=112, reg_names=USER_REGS, reg_size=8
    ),
    dwarf=DwarfRegisters(
        {num: name for name, num in DWARF_NUMBERS.items() if num <= DWARF_RA},
        sp_column=DWARF_NUMBERS["rsp"],
        pc_name="rip",
    ),
    gdb=GdbTarget(
        "i386:x86-64",
        (
            "org.gnu.gdb.i386.core",
            "org.gnu.gdb.i386.sse",
            "org.gnu.gdb.i386.linux",
            "org.gnu.gdb.i386.segments",
        ),
        GDB_REGISTERS,
    ),
)
