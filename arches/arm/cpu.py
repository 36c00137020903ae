"""arm (32-bit, ARMv7) CPU facts: the saved-register layouts and register
numberings (Linux full dumps), and the kernel base FreeBSD minidumps use.

Register names are gdb's: r0-r12, sp (r13), lr (r14), pc (r15), cpsr; the
frame pointer is r11 (fp) in ARM code, r7 in Thumb-2 code."""

from kvmcore.cpu import DwarfRegisters, GdbRegister, GdbTarget, PrstatusLayout
from kvmcore.registry import Arch

#: r0-r15 by gdb name, in architectural order (DWARF numbers 0-15)
CORE_REGS = tuple(f"r{i}" for i in range(13)) + ("sp", "lr", "pc")
# struct user_regs (arch/arm/include/asm/user.h: unsigned long uregs[18]) and the
# start of struct pt_regs: r0-r15, cpsr, orig_r0
USER_REGS = CORE_REGS + ("cpsr", "orig_r0")
PT_REGS = USER_REGS
CPSR_MODE_MASK = 0x1F
USR_MODE = 0x10
#: PSR_T_BIT: the interrupted code ran in Thumb state
CPSR_T = 1 << 5

ARCH = Arch(
    name="arm",
    word_size=4,
    pc_reg="pc",
    sp_reg="sp",
    fp_reg="r11",
    aliases=("armv7", "armv6", "armhf", "armv7l"),
    elf_machine=40,  # EM_ARM
    freebsd_machine="arm",
    # the default 3G/1G split's PAGE_OFFSET (and FreeBSD's KERNBASE on armv6/armv7);
    # a Linux translator knows better (its kernel_start: TASK_SIZE, the module area)
    kernel_start=0xC0000000,
    # 32-bit struct elf_prstatus (include/linux/elfcore.h): pr_info (12), pr_cursig and
    # padding (4), pr_sigpend, pr_sighold, then pr_pid at 24, ppid/pgrp/sid, four
    # 8-byte timevals, pr_reg (18 words) at 72, pr_fpvalid: 148 bytes (QEMU's
    # target/arm/arch_dump.c struct arm_elf_prstatus writes the same)
    prstatus=PrstatusLayout(
        size=148, pid_offset=24, regs_offset=72, reg_names=USER_REGS, reg_size=4
    ),
    # DWARF for the Arm architecture (AADWARF32): r0-r15 are 0-15; GCC's return
    # address column is lr (14), whose caller value becomes pc
    dwarf=DwarfRegisters(dict(enumerate(CORE_REGS[:15])), sp_column=13, pc_name="pc"),
    # gdb's features/arm/arm-core.xml: r0-r12, sp, lr, pc, cpsr (gdb maps them by
    # name; the g packet follows this order)
    gdb=GdbTarget(
        "arm",
        ("org.gnu.gdb.arm.core",),
        tuple(
            [GdbRegister(f"r{i}", 32) for i in range(13)]
            + [
                GdbRegister("sp", 32, "data_ptr"),
                GdbRegister("lr", 32),
                GdbRegister("pc", 32, "code_ptr"),
                GdbRegister("cpsr", 32),
            ]
        ),
    ),
)
