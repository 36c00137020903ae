"""arm (32-bit, ARMv7): Linux full dumps and FreeBSD minidumps.

- cpu.py: the Arch (NT_PRSTATUS layout, DWARF numbering, gdb's arm core target)
- mmu.py: the short-descriptor and LPAE page-table formats
- linux.py: Linux full dumps (the walk from swapper_pg_dir)
- freebsd_mini.py: FreeBSD minidumps
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
