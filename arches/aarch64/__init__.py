"""aarch64 (arm64): VMSAv8-64 with 4K/16K/64K granules and 36- to 52-bit VAs.

- cpu.py: registers (NT_PRSTATUS, DWARF numbering, gdb's aarch64 target)
- mmu.py: the translation-table format
- linux.py: Linux full dumps (KASLR of the image and the linear map from VMCOREINFO)
- freebsd_full.py, freebsd_mini.py: FreeBSD full dumps and minidumps
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
