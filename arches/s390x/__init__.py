"""s390x (z/Architecture, big-endian): DAT tables chosen by the ASCE type.

- cpu.py: registers (NT_PRSTATUS s390_regs, DWARF numbering, gdb's s390x target)
- mmu.py: region-first/second/third, segment and page tables
- linux.py: Linux full dumps (the root from VMCOREINFO's swapper_pg_dir)
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
