"""aarch64 CPU facts: the saved-register layouts and register numberings."""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.registry import Arch

# struct user_pt_regs: x0..x30, sp, pc, pstate (also the start of struct pt_regs)
USER_REGS = tuple(f"x{i}" for i in range(31)) + ("sp", "pc", "pstate")
PT_REGS = USER_REGS
PSTATE_MODE_MASK = 0xF  # M[3:0]: 0 = EL0t

ARCH = Arch(
    name="aarch64",
    word_size=8,
    pc_reg="pc",
    sp_reg="sp",
    fp_reg="x29",
    aliases=("arm64",),
    elf_machine=183,  # EM_AARCH64
    freebsd_machine="arm64",
    vmcoreinfo_keys=("NUMBER(kimage_voffset)", "NUMBER(TCR_EL1_T1SZ)"),
    prstatus=PrstatusLayout(
        size=392, pid_offset=32, regs_offset=112, reg_names=USER_REGS, reg_size=8
    ),
    # DWARF for the Arm 64-bit architecture: x0-x30 are 0-30, sp is 31; the
    # return address column is x30, whose caller value becomes pc
    dwarf=DwarfRegisters({**{i: f"x{i}" for i in range(31)}, 31: "sp"}, sp_column=31, pc_name="pc"),
    gdb=GdbTarget(
        "aarch64",
        ("org.gnu.gdb.aarch64.core",),
        tuple(
            [GdbRegister(f"x{i}", 64) for i in range(31)]
            + [
                GdbRegister("sp", 64, "data_ptr"),
                GdbRegister("pc", 64, "code_ptr"),
                GdbRegister("cpsr", 32, "cpsr_flags", source="pstate"),
            ]
        ),
    ),
)
