"""The Dump object: `kvmcore.open()` returns one.

It ties a format's physical memory to an architecture backend and exposes
kernel virtual reads; the symbol, type and kernel-model layers hang off it
and are built on first use.
"""
from __future__ import annotations

import os
import struct
from functools import cached_property
from typing import TYPE_CHECKING, Any, Iterator

from .addrspace import KernelAddressSpace
from .errors import KvmcoreError, TruncatedDumpError, UnsupportedError
from .formats import open_physical
from .formats.base import PhysicalMemory, PhysRange
from .notes import VmcoreInfo
from .pagetable import MappedRange, Translation
from .registry import ArchBackend, CpuState, select_arch

if TYPE_CHECKING:
    from .symbols import SymbolTable
    from .types import TypeInfo


class Dump:
    """An open crash dump, read-only."""

    def __init__(self, path: "str | list[str]", vmlinux: str | None = None,
                 arch: str | None = None, allow_truncated: bool = False,
                 system_map: str | None = None) -> None:
        # a list of paths: the parts of a split kdump dump (makedumpfile --split)
        self.paths = [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) \
            else [os.fspath(path)]
        self.path = self.paths[0]
        self.vmlinux = os.fspath(vmlinux) if vmlinux else None
        if self.vmlinux and not os.path.isfile(self.vmlinux):
            raise KvmcoreError("no such vmlinux file", self.vmlinux)
        self.system_map = os.fspath(system_map) if system_map else None  # kvmcore.symbols
        if self.system_map and not os.path.isfile(self.system_map):
            raise KvmcoreError("no such System.map file", self.system_map)
        self.mem: PhysicalMemory = open_physical(
            self.paths if len(self.paths) > 1 else self.path, raw=arch is not None)
        if self.mem.metadata.get("truncated") and not allow_truncated:
            raise TruncatedDumpError(
                f"the dump is truncated: its headers describe "
                f"{self.mem.metadata.get('expected_size')} bytes but the file has "
                f"{self.mem.source.size} (--partial reads what is there)", self.path)
        self.arch: ArchBackend = select_arch(self.mem, arch)
        self.arch.dump = self  # lazy translators (FreeBSD full dumps) need dump.symbols
        self.byteorder = self.arch.byteorder
        self.word_size = self.arch.word_size
        self._e = "<" if self.byteorder == "little" else ">"
        self.aspace = KernelAddressSpace(self.mem, self.arch.translator(), self.word_size)

    # -- facts -------------------------------------------------------------
    @property
    def vmcoreinfo(self) -> VmcoreInfo | None:
        return self.arch.vmcoreinfo

    @cached_property
    def kernel_offset(self) -> int:
        """How far the kernel image was moved from its link address (KASLR, or
        i386's relocation): VMCOREINFO's KERNELOFFSET, else what the symbol
        table measured (i386 has no KERNELOFFSET line), else 0."""
        info = self.vmcoreinfo
        if info is not None and info.hex("KERNELOFFSET") is not None:
            return info.kernel_offset
        try:
            return self.symbols.kaslr_offset or 0
        except KvmcoreError:
            return 0

    @property
    def os(self) -> str | None:
        return self.mem.facts.os

    @property
    def format_name(self) -> str:
        return self.mem.format_name

    @cached_property
    def cpu_states(self) -> list[CpuState]:
        """Registers per CPU from the dump's NT_PRSTATUS notes."""
        return self.arch.cpu_states()

    # -- memory ------------------------------------------------------------
    def read(self, va: int, length: int, zero_excluded: bool = False) -> bytes:
        return self.aspace.read(va, length, zero_excluded)

    def read_phys(self, pa: int, length: int) -> bytes:
        return self.mem.read_phys(pa, length)

    def translate(self, va: int) -> Translation:
        return self.aspace.translate(va)

    def walk_pages(self) -> Iterator[MappedRange]:
        return self.aspace.walk_pages()

    def phys_ranges(self) -> list[PhysRange]:
        return self.mem.ranges()

    def read_int(self, va: int, size: int, signed: bool = False) -> int:
        return int.from_bytes(self.read(va, size), self.byteorder, signed=signed)

    def read_u8(self, va: int) -> int:
        return self.read(va, 1)[0]

    def read_u16(self, va: int) -> int:
        return self.read_int(va, 2)

    def read_u32(self, va: int) -> int:
        return self.read_int(va, 4)

    def read_u64(self, va: int) -> int:
        return self.read_int(va, 8)

    def read_ptr(self, va: int) -> int:
        return self.read_int(va, self.word_size)

    def read_ptrs(self, va: int, count: int) -> list[int]:
        fmt = self._e + ("Q" if self.word_size == 8 else "I") * count
        return list(struct.unpack(fmt, self.read(va, count * self.word_size)))

    def read_cstring(self, va: int, limit: int = 4096) -> str:
        out = bytearray()
        while len(out) < limit:
            n = min(256, limit - len(out), 0x1000 - (va & 0xFFF))
            chunk = self.read(va, n)
            end = chunk.find(b"\0")
            if end >= 0:
                out += chunk[:end]
                break
            out += chunk
            va += n
        return out.decode("utf-8", "replace")

    # -- upper layers (built on first use) ---------------------------------
    @cached_property
    def symbols(self) -> "SymbolTable":
        from .symbols import load_symbols

        return load_symbols(self)

    @cached_property
    def types(self) -> "TypeInfo":
        from .types import load_types

        return load_types(self)

    @cached_property
    def kernel(self) -> Any:
        """The OS personality: kvmcore.linux.LinuxKernel or kvmcore.freebsd.FreeBSDKernel."""
        if self.os == "freebsd":
            from .freebsd import FreeBSDKernel

            return FreeBSDKernel(self)
        if self.os == "linux" or self.vmcoreinfo is not None:
            from .linux import LinuxKernel

            return LinuxKernel(self)
        raise UnsupportedError("cannot tell which kernel this dump is from", self.path)

    def close(self) -> None:
        self.mem.close()

    def __enter__(self) -> "Dump":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: "str | list[str]", vmlinux: str | None = None, arch: str | None = None,  # noqa: A001
         allow_truncated: bool = False, system_map: str | None = None) -> Dump:
    """Open a crash dump read-only; `arch` forces a backend (needed for raw images).

    A truncated file is refused unless `allow_truncated`: then what the file
    holds reads as usual and the rest raises TruncatedDumpError on access.
    `system_map` names a System.map, the symbols' source when no vmlinux is given."""
    return Dump(path, vmlinux, arch, allow_truncated, system_map)
