"""powerpc64 CPU facts: only those a FreeBSD minidump needs so far (no
NT_PRSTATUS layout, DWARF numbering or gdb target yet)."""

from kvmcore.registry import Arch

ARCH = Arch(
    name="powerpc64",
    word_size=8,
    pc_reg="pc",
    sp_reg="r1",
    fp_reg="r31",
    byteorder="big",
    aliases=("ppc64",),
    elf_machine=21,  # EM_PPC64
    freebsd_machine="powerpc64",
)
