"""x86_64 (amd64): 4- and 5-level paging, 2 MB and 1 GB pages.

- cpu.py: registers (NT_PRSTATUS, DWARF numbering, gdb's amd64 target)
- mmu.py: the page-table format
- linux.py: Linux full dumps (root from VMCOREINFO)
- freebsd_full.py, freebsd_mini.py: FreeBSD full dumps and minidumps
- xen.py: Xen guests' dump-core files (PV through the p2m, HVM)
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
