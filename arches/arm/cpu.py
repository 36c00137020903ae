"""arm CPU facts: only those a FreeBSD minidump needs so far (no NT_PRSTATUS
layout, DWARF numbering or gdb target yet)."""

from kvmcore.registry import Arch

ARCH = Arch(
    name="arm",
    word_size=4,
    pc_reg="pc",
    sp_reg="sp",
    fp_reg="r11",
    aliases=("armv7", "armv6", "armhf", "armv7l"),
    elf_machine=40,  # EM_ARM
    freebsd_machine="arm",
    kernel_start=0xC0000000,  # FreeBSD's KERNBASE on armv6/armv7
)
