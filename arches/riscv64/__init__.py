"""riscv64: for now only what FreeBSD minidumps need.

- cpu.py: the Arch (word size 8, little-endian, register names)
- mmu.py: the Sv39/Sv48 page-table entry format
- freebsd_mini.py: FreeBSD minidumps
"""

from kvmcore.registry import register_arch

from . import freebsd_mini  # noqa: F401  (registers its translator)
from .cpu import ARCH

register_arch(ARCH)
