"""riscv64 CPU facts: the saved-register layouts and register numberings.

Register names are the psABI's (ra, sp, gp, tp, t0-t6, s0-s11, a0-a7) and
pc; x8 is "s0" (the frame pointer, gdb calls it "fp")."""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.registry import Arch

#: x0..x31 by psABI name
XREGS = (
    ("zero", "ra", "sp", "gp", "tp", "t0", "t1", "t2", "s0", "s1")
    + tuple(f"a{i}" for i in range(8))
    + tuple(f"s{i}" for i in range(2, 12))
    + ("t3", "t4", "t5", "t6")
)
# struct user_regs_struct (arch/riscv/include/uapi/asm/ptrace.h): pc, then x1..x31;
# struct pt_regs starts with the same 32 slots (epc in pc's), then status, badaddr,
# cause, orig_a0
USER_REGS = ("pc",) + XREGS[1:]
PT_REGS = USER_REGS + ("status", "badaddr", "cause", "orig_a0")
SSTATUS_SPP = 1 << 8  # the trap came from S-mode (the kernel)

ARCH = Arch(
    name="riscv64",
    word_size=8,
    pc_reg="pc",
    sp_reg="sp",
    fp_reg="s0",
    aliases=("riscv",),
    elf_machine=243,  # EM_RISCV
    freebsd_machine="riscv",
    # arch/riscv/kernel/vmcore_info.c: exported by riscv kernels only
    vmcoreinfo_keys=("NUMBER(va_kernel_pa_offset)", "NUMBER(phys_ram_base)"),
    # the generic 64-bit struct elf_prstatus: pr_pid at 32, pr_reg at 112 (after
    # pr_info, pr_cursig, pr_sigpend, pr_sighold, four pids and four timevals),
    # ELF_NGREG = 32 slots, then pr_fpvalid and padding: 376 bytes (QEMU's
    # target/riscv/arch_dump.c writes the same)
    prstatus=PrstatusLayout(
        size=376, pid_offset=32, regs_offset=112, reg_names=USER_REGS, reg_size=8
    ),
    # RISC-V psABI DWARF numbering: x0-x31 are 0-31; GCC's return-address column
    # is ra (1), whose caller value becomes pc
    dwarf=DwarfRegisters({i: name for i, name in enumerate(XREGS) if i}, sp_column=2, pc_name="pc"),
    # gdb's features/riscv/64bit-cpu.xml: x0..x31 by ABI name ("fp" for x8), then pc
    gdb=GdbTarget(
        "riscv:rv64",
        ("org.gnu.gdb.riscv.cpu",),
        tuple(
            [GdbRegister("zero", 64)]
            + [GdbRegister("ra", 64, "code_ptr"), GdbRegister("sp", 64, "data_ptr")]
            + [GdbRegister("gp", 64, "data_ptr"), GdbRegister("tp", 64, "data_ptr")]
            + [GdbRegister(n, 64) for n in ("t0", "t1", "t2")]
            + [GdbRegister("fp", 64, "data_ptr", source="s0")]
            + [GdbRegister(n, 64) for n in XREGS[9:]]
            + [GdbRegister("pc", 64, "code_ptr")]
        ),
    ),
)
