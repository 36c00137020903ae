"""riscv64: RV64GC with Sv39/Sv48/Sv57 paging.

- cpu.py: registers (NT_PRSTATUS, DWARF numbering, gdb's riscv target)
- mmu.py: the Sv39/Sv48/Sv57 page-table format
- linux.py: Linux full dumps (the kernel image and linear map from VMCOREINFO)
- freebsd_mini.py: FreeBSD minidumps
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
