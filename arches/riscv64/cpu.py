"""riscv64 CPU facts: only those a FreeBSD minidump needs so far (no NT_PRSTATUS
layout, DWARF numbering or gdb target yet)."""

from kvmcore.registry import Arch

ARCH = Arch(
    name="riscv64",
    word_size=8,
    pc_reg="pc",
    sp_reg="sp",
    fp_reg="s0",
    aliases=("riscv",),
    elf_machine=243,  # EM_RISCV
    freebsd_machine="riscv",
)
