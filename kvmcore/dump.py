"""The Dump object: `kvmcore.open()` returns one.

It is the top of the stack, wiring each layer from the ones below: the file
and its format (physical memory), the architecture and the translator chosen
for this dump's flavour (kvmcore.registry), the kernel address space over
them, then on first use the symbols, the types, the OS personality (the
kernel model) and the unwinder. The layers below never see the Dump: the
translator is built from a TranslationContext, with a symbol resolver
callable for the roots only a symbol names.
"""

from __future__ import annotations

import builtins
import os
import struct
from collections.abc import Iterator, Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

from . import objects
from .addrspace import KernelAddressSpace
from .cpu import CpuState
from .errors import (
    HostError,
    KvmcoreError,
    NotFoundError,
    SymbolError,
    TruncatedDumpError,
    UnsupportedError,
)
from .formats import open_physical
from .formats.base import PhysicalMemory, PhysRange
from .kernel import KernelModel
from .linux import LinuxKernel
from .notes import VmcoreInfo
from .objects import Object
from .registry import Arch, TranslatorFlavour, select_arch, select_translator
from .symbols import SymbolTable, check_vmlinux, load_symbols
from .symbols.kaslr import KernelOffset, measure_kernel_offset
from .translate import MappedRange, Translation, TranslationContext, Translator
from .types import TypeInfo, load_types

if TYPE_CHECKING:
    from .unwind.model import Backtrace


def _regular_file(path: str, what: str) -> None:
    """A NotFoundError for a missing file, a SymbolError for a directory, FIFO
    or device (reading /dev/zero or a FIFO as a vmlinux would never end)."""
    if not os.path.exists(path):
        raise NotFoundError(f"no such {what} file", path)
    if not os.path.isfile(path):
        raise SymbolError(f"not a {what}: not a regular file", path)
    if not os.access(path, os.R_OK):
        raise HostError(f"cannot read the {what}: permission denied", path)


class Dump:
    """An open crash dump, read-only."""

    def __init__(
        self,
        path: str | list[str],
        vmlinux: str | None = None,
        arch: str | None = None,
        allow_truncated: bool = False,
        system_map: str | None = None,
        symbol_map: Mapping[str, int] | None = None,
        force_vmlinux: bool = False,
        module_dir: str | None = None,
    ) -> None:
        # a list of paths: the parts of a split kdump dump (makedumpfile --split)
        self.paths = (
            [os.fspath(p) for p in path] if isinstance(path, (list, tuple)) else [os.fspath(path)]
        )
        self.path = self.paths[0]
        self.vmlinux = os.fspath(vmlinux) if vmlinux else None
        if self.vmlinux:
            _regular_file(self.vmlinux, "vmlinux")
        self.system_map = os.fspath(system_map) if system_map else None  # kvmcore.symbols
        if self.system_map:
            _regular_file(self.system_map, "System.map")
        #: what the caller should be told but that did not stop the open (--force-vmlinux)
        self.warnings: list[str] = []
        self.mem: PhysicalMemory = open_physical(
            self.paths if len(self.paths) > 1 else self.path, raw=arch is not None
        )
        if self.mem.metadata.get("truncated") and not allow_truncated:
            raise TruncatedDumpError(
                f"the dump is truncated: its headers describe "
                f"{self.mem.metadata.get('expected_size')} bytes but the file has "
                f"{self.mem.source.size} (--partial reads what is there)",
                self.path,
            )
        #: the architecture's CPU facts (kvmcore.registry.Arch)
        self.arch: Arch = select_arch(self.mem, arch)
        self.byteorder = self.arch.byteorder
        self.word_size = self.arch.word_size
        self._e = "<" if self.byteorder == "little" else ">"
        #: the kernel's VMCOREINFO (Linux), or None
        self.vmcoreinfo: VmcoreInfo | None = self.mem.vmcoreinfo
        #: {name: address} consulted before the dump's own symbol sources
        self.symbol_map: Mapping[str, int] | None = symbol_map
        #: per-dump state of the layers above the model (the unwinder), by name
        self.layer_cache: dict[str, Any] = {}
        #: a directory of module debug files (.ko with DWARF), for module frames' file:line
        self.module_dir: str | None = None
        self.flavour: TranslatorFlavour = select_translator(self.arch, self.mem)
        self._page_table_root: int | None = None
        self.aspace = self._address_space()
        if self.vmlinux:  # a wrong vmlinux misreads everything: refuse it here
            warning = check_vmlinux(self, self.vmlinux, force_vmlinux)
            if warning:
                self.warnings.append(warning)
        if module_dir:
            from . import unwind  # the unwinders: imported by what needs them

            unwind.use_module_dir(self, module_dir)

    def _address_space(self) -> KernelAddressSpace:
        ctx = TranslationContext(
            self.mem, self.vmcoreinfo, self.resolve_symbol, self._page_table_root, self.byteorder
        )
        return KernelAddressSpace(self.mem, self.flavour.build(ctx), self.word_size)

    def set_page_table_root(self, pa: int) -> None:
        """Give the kernel's top-level page table's physical address, for dumps
        that do not name it (a FreeBSD full dump without its kernel's symbols,
        or of arm64); the translator is rebuilt from it."""
        self._page_table_root = pa
        self.aspace = self._address_space()

    def resolve_symbol(self, name: str) -> int | None:
        """Address of `name`: the explicit symbol map first, then the dump's
        symbol table; None when neither knows it (or no symbols can be had)."""
        if self.symbol_map is not None and name in self.symbol_map:
            return int(self.symbol_map[name])
        try:
            return self.symbols.get(name)
        except (SymbolError, UnsupportedError):
            return None

    # -- facts -------------------------------------------------------------
    @property
    def translator(self) -> Translator:
        return self.aspace.translator

    def is_kernel_address(self, va: int) -> bool:
        """Whether `va` lies in the kernel's half of the address space (as the
        translator found it, else the architecture's default split)."""
        start = self.translator.kernel_start
        return va >= start if start is not None else self.arch.is_kernel_address(va)

    def linear_map_address(self, pa: int) -> int | None:
        """The direct-map alias of physical `pa` when the translator knows the
        layout without symbols; else None."""
        return self.translator.linear_map_address(pa)

    @cached_property
    def kaslr(self) -> KernelOffset:
        """The kernel's offset with its source: VMCOREINFO's KERNELOFFSET when
        kallsyms' _stext agrees, else the measured one (kvmcore.symbols.kaslr)."""
        return measure_kernel_offset(self)

    @cached_property
    def kernel_offset(self) -> int:
        """How far the kernel image was moved from its link address (KASLR, or
        i386's relocation): `kaslr` on Linux, else what the symbol table
        measured, else 0."""
        if self.vmcoreinfo is not None:
            return self.kaslr.value
        try:
            return self.symbols.kaslr_offset or 0
        except KvmcoreError:
            return 0

    @property
    def os(self) -> str | None:
        """ "linux", "freebsd", or None: the format's word, else "linux" when
        the dump has a VMCOREINFO (a note, or the kernel's own in memory)."""
        if self.mem.facts.os is not None:
            return self.mem.facts.os
        return "linux" if self.vmcoreinfo is not None else None

    @property
    def format_name(self) -> str:
        return self.mem.format_name

    @cached_property
    def cpu_states(self) -> list[CpuState]:
        """Registers per CPU from the dump's NT_PRSTATUS notes (or the
        records the dump flavour keeps instead: Xen's vCPU contexts)."""
        return self.flavour.cpu_states(self.arch, self.mem)

    # -- memory ------------------------------------------------------------
    def read(
        self,
        va: int,
        length: int,
        zero_excluded: bool = False,
        excluded: list[tuple[int, int]] | None = None,
    ) -> bytes:
        """`length` bytes at kernel virtual `va`; `zero_excluded` reads pages
        the dump filtered out as zeros, listing each such span in `excluded`
        (kvmcore.addrspace.KernelAddressSpace.read)."""
        return self.aspace.read(va, length, zero_excluded, excluded)

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
        # straight to the address space: list walks read millions of these
        return int.from_bytes(self.aspace.read(va, self.word_size), self.byteorder)

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
    def symbols(self) -> SymbolTable:
        return load_symbols(self)

    @cached_property
    def types(self) -> TypeInfo:
        return load_types(self)

    @cached_property
    def kernel(self) -> Any:
        """The OS personality (a kvmcore.kernel.KernelModel):
        kvmcore.linux.LinuxKernel or kvmcore.freebsd.FreeBSDKernel."""
        model: KernelModel
        if self.os == "freebsd":
            from .freebsd import FreeBSDKernel  # a Linux dump never needs it

            model = FreeBSDKernel(self)
        elif self.os == "linux" or self.vmcoreinfo is not None:
            model = LinuxKernel(self)
        else:
            raise UnsupportedError("cannot tell which kernel this dump is from", self.path)
        return model

    def object(self, name: str) -> Object:
        """The global variable `name` as a typed Object (kvmcore.objects)."""
        return objects.object_of(self, name)

    def cast(self, type_name: str, value: int) -> Object:
        """`(type_name)value` as an Object: a pointer or integer value, or the
        struct at address `value` (kvmcore.objects)."""
        return objects.cast(self, type_name, value)

    def backtrace(self, task: Any, max_frames: int = 64) -> Backtrace:
        """The kernel backtrace of a task of `kernel` (kvmcore.unwind)."""
        from . import unwind

        return unwind.backtrace(self, task, max_frames)

    def close(self) -> None:
        self.mem.close()

    def __enter__(self) -> Dump:
        return self

    def __exit__(self, *exc: builtins.object) -> None:
        self.close()


def open(
    path: str | list[str],
    vmlinux: str | None = None,
    arch: str | None = None,  # noqa: A001
    allow_truncated: bool = False,
    system_map: str | None = None,
    symbol_map: Mapping[str, int] | None = None,
    force_vmlinux: bool = False,
    module_dir: str | None = None,
) -> Dump:
    """Open a crash dump read-only; `arch` forces a backend (needed for raw images).

    A truncated file is refused unless `allow_truncated`: then what the file
    holds reads as usual and the rest raises TruncatedDumpError on access.
    `system_map` names a System.map, the symbols' source when no vmlinux is given.
    `symbol_map` ({name: address}) is consulted before the dump's own symbol
    sources (a FreeBSD kernel's symbols from elsewhere). A `vmlinux` that is
    not a kernel image or not the dump's kernel build raises SymbolError;
    `force_vmlinux` uses another build anyway, noted in `Dump.warnings`.
    `module_dir` names a directory of module debug files (a -dbg package's
    usr/lib/debug/lib/modules/<release>): module frames get file:line from
    them (kvmcore.unwind.modlines)."""
    return Dump(
        path, vmlinux, arch, allow_truncated, system_map, symbol_map, force_vmlinux, module_dir
    )
