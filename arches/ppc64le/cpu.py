"""ppc64le CPU facts: the saved-register layouts and register numberings.

NT_PRSTATUS holds `struct elf_prstatus` with pr_reg (at 112) an
elf_gregset_t of 48 words whose first 44 are `struct user_pt_regs`
(arch/powerpc/include/uapi/asm/ptrace.h): gpr[32], nip, msr, orig_gpr3,
ctr, link, xer, ccr, softe, trap, dar, dsisr, result; the kernel's note is
504 bytes, QEMU's 496 (fewer pad words after the registers).

QEMU picks the byte order of the notes (and of the ELF and kdump headers)
from the CPU's mode; on pseries a panicking guest sits in the firmware's
big-endian `ibm,os-term`, so a little-endian kernel's dump comes with
big-endian headers and notes: the notes are read in the dump's byte order,
and the arch claims a "ppc64" dump when the kernel's own VMCOREINFO note
is little-endian.
"""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.formats.base import PhysicalMemory
from kvmcore.registry import Arch

GPRS = tuple(f"r{i}" for i in range(32))
#: struct user_pt_regs (also the start of the kernel's struct pt_regs)
PT_REGS = GPRS + (
    "nip",
    "msr",
    "orig_gpr3",
    "ctr",
    "lr",
    "xer",
    "ccr",
    "softe",
    "trap",
    "dar",
    "dsisr",
    "result",
)
MSR_PR = 1 << 14  # problem state: user mode
MSR_LE = 1


def little_endian_kernel(mem: PhysicalMemory) -> bool:
    """Whether a ppc64 dump's kernel is little-endian: the format says
    ppc64le, else the byte order of the kernel's VMCOREINFO note (in memory),
    else that of the dump's headers."""
    if mem.facts.machine == "ppc64le":
        return True
    info = mem.vmcoreinfo  # scans memory when the dump has no note
    order = mem.metadata.get("vmcoreinfo_byteorder")
    if order is not None:
        return bool(order == "little")
    if info is not None:
        return mem.facts.byteorder == "little"
    return False


ARCH = Arch(
    name="ppc64le",
    word_size=8,
    pc_reg="nip",
    sp_reg="r1",
    fp_reg="r1",  # the back chain hangs off the stack pointer
    byteorder="little",
    aliases=("ppc64el", "powerpc64le"),
    elf_machine=21,  # EM_PPC64
    machine_hints=("ppc64",),
    # NUMBER(RADIX_MMU) came after 6.1; mmu_psize_defs is ppc64's (Book3S) own
    vmcoreinfo_keys=("NUMBER(RADIX_MMU)", "SYMBOL(mmu_psize_defs)"),
    prstatus=PrstatusLayout(
        size=504, pid_offset=32, regs_offset=112, reg_names=PT_REGS, reg_size=8
    ),
    # 64-bit ELF V2 ABI: r0-r31 are DWARF 0-31, lr 65, ctr 66; the return
    # column is lr, whose caller value becomes nip
    dwarf=DwarfRegisters(
        {**{i: f"r{i}" for i in range(32)}, 65: "lr", 66: "ctr"}, sp_column=1, pc_name="nip"
    ),
    gdb=GdbTarget(
        "powerpc:common64",
        ("org.gnu.gdb.power.core",),
        tuple(
            [GdbRegister(f"r{i}", 64, "uint64") for i in range(32)]
            + [
                GdbRegister("pc", 64, "code_ptr", source="nip"),
                GdbRegister("msr", 64, "uint64"),
                GdbRegister("cr", 32, "uint32", source="ccr"),
                GdbRegister("lr", 64, "code_ptr"),
                GdbRegister("ctr", 64, "uint64"),
                GdbRegister("xer", 32, "uint32"),
            ]
        ),
    ),
    kernel_start=0xC000000000000000,
    probe_hook=little_endian_kernel,
)
