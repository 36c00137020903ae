"""s390x CPU facts: the saved-register layouts and register numberings.

NT_PRSTATUS holds `struct elf_prstatus` whose pr_reg (at 112, as on every
64-bit Linux arch) is `s390_regs` (arch/s390/include/uapi/asm/ptrace.h):
psw {mask, addr}, gprs[16], acrs[16] (4 bytes each), orig_gpr2; the whole
note is 336 bytes. QEMU writes the same offsets (its S390xElfPrstatus has
no orig_gpr2: zero padding there).
"""

from dataclasses import dataclass

from kvmcore.cpu import CpuState, DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.notes import ByteOrder, Note
from kvmcore.registry import Arch

GPRS = tuple(f"r{i}" for i in range(16))
#: the 8-byte slots of s390_regs / the start of struct pt_regs' user part
USER_REGS = ("pswm", "pswa") + GPRS
ACRS = tuple(f"a{i}" for i in range(16))
PSW_MASK_PSTATE = 0x0001000000000000  # problem state: user mode


@dataclass(frozen=True)
class S390PrstatusLayout(PrstatusLayout):
    """pr_reg has 8-byte psw and gprs, then 4-byte access registers and orig_gpr2."""

    def parse(
        self, note: Note, cpu: int, byteorder: ByteOrder, path: str | None = None
    ) -> CpuState:
        state = super().parse(note, cpu, byteorder, path)
        desc = note.desc
        off = self.regs_offset + 8 * len(self.reg_names)
        if len(desc) >= off + 4 * len(ACRS) + 8:
            for i, name in enumerate(ACRS):
                state.regs[name] = int.from_bytes(desc[off + 4 * i : off + 4 * i + 4], byteorder)
            off += 4 * len(ACRS)
            state.regs["orig_gpr2"] = int.from_bytes(desc[off : off + 8], byteorder)
        return state


ARCH = Arch(
    name="s390x",
    word_size=8,
    pc_reg="pswa",
    sp_reg="r15",
    fp_reg="r15",  # the back chain hangs off the stack pointer
    byteorder="big",
    aliases=("s390",),
    elf_machine=22,  # EM_S390
    vmcoreinfo_keys=("SYMBOL(lowcore_ptr)", "LENGTH(lowcore_ptr)"),
    prstatus=S390PrstatusLayout(
        size=336, pid_offset=32, regs_offset=112, reg_names=USER_REGS, reg_size=8
    ),
    # ELF ABI s390x supplement: r0-r15 are DWARF 0-15 (f0.. 16-31, a0-a15 48-63,
    # pswm 64, pswa 65); the return column is r14, whose caller value becomes pswa
    dwarf=DwarfRegisters({i: f"r{i}" for i in range(16)}, sp_column=15, pc_name="pswa"),
    gdb=GdbTarget(
        "s390:64-bit",
        ("org.gnu.gdb.s390.core", "org.gnu.gdb.s390.acr", "org.gnu.gdb.s390.fpr"),
        tuple(
            [GdbRegister("pswm", 64, "uint64"), GdbRegister("pswa", 64, "code_ptr")]
            + [GdbRegister(f"r{i}", 64, "uint64") for i in range(16)]
            + [
                GdbRegister(f"acr{i}", 32, "uint32", feature="org.gnu.gdb.s390.acr", source=f"a{i}")
                for i in range(16)
            ]
            + [GdbRegister("fpc", 32, "uint32", feature="org.gnu.gdb.s390.fpr")]
            + [
                GdbRegister(f"f{i}", 64, "ieee_double", feature="org.gnu.gdb.s390.fpr")
                for i in range(16)
            ]
        ),
    ),
    # the kernel's address space is its own (ASCE), from virtual 0: the
    # identity map starts there
    kernel_start=0,
)
