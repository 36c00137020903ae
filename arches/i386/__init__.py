"""i386: 32-bit x86 with 2-level (4 KB and 4 MB pages) and PAE 3-level (4 KB
and 2 MB pages) paging, the kernel direct map at PAGE_OFFSET.

- cpu.py: registers (NT_PRSTATUS, DWARF numbering, gdb's i386 target)
- mmu.py: the two 32-bit page-table formats
- linux.py: Linux full dumps (PAGE_OFFSET found from the tables)
- freebsd_mini.py: FreeBSD minidumps (PAE and not)
- xen.py: Xen HVM guests' dump-core files (PAE and not)
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
