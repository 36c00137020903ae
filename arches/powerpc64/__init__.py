"""powerpc64 (big-endian; a little-endian FreeBSD minidump is read too, with
--arch powerpc64): for now only what FreeBSD minidumps need.

- cpu.py: the Arch (word size 8, big-endian, register names)
- mmu.py: the hashed page table (HPT) of the 64-bit PowerPC server MMU
- freebsd_mini.py: FreeBSD minidumps of HPT kernels (mmu_g5, mmu_phyp)
"""

from kvmcore.registry import register_arch

from .cpu import ARCH

register_arch(ARCH, __name__)  # the registry imports the flavour modules
