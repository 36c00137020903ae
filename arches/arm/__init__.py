"""arm (32-bit, armv6/armv7): for now only what FreeBSD minidumps need.

- cpu.py: the Arch (word size 4, little-endian, register names)
- mmu.py: the short-descriptor L2 (second-level) entry format
- freebsd_mini.py: FreeBSD minidumps
"""

from kvmcore.registry import register_arch

from . import freebsd_mini  # noqa: F401  (registers its translator)
from .cpu import ARCH

register_arch(ARCH)
