"""ppc64le (64-bit little-endian POWER, ELFv2): Linux's radix MMU (POWER9+).

- cpu.py: registers (NT_PRSTATUS pt_regs, DWARF numbering, gdb's powerpc:common64)
- mmu.py: the radix tree (big-endian entries whatever the kernel's byte order)
- linux.py: Linux full dumps (radix only; the hash MMU of POWER8 is refused)
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
