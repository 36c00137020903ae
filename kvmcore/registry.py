"""The architecture registry: kvmcore's KVM_ARCH.

Two small tables, filled by the packages of `kvmcore.arches` (source:
arches/) when they are imported:

- `Arch`: one per architecture, its CPU facts (word size, byte order, the
  registers that hold pc/sp/fp, NT_PRSTATUS layout, DWARF and gdb register
  maps) and `probe(mem)`: does this dump come from this architecture?
- `TranslatorFlavour`: one per (architecture, dump flavour), as libkvm has a
  `struct kvm_arch` per kvm_amd64.c and kvm_minidump_amd64.c: its own
  `probe(mem)` (a Linux full dump, a FreeBSD full dump, a FreeBSD minidump)
  and `build(ctx)`, which makes the kernel-virtual translator from a
  `TranslationContext` alone.

Nothing here knows an operating system's data structures, an unwinder or the
Dump: those register per architecture with kvmcore.linux, kvmcore.freebsd and
kvmcore.unwind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from .cpu import CpuState, DwarfRegisters, GdbTarget, PrstatusLayout
from .errors import ArchProbeError, UnsupportedError
from .formats.base import PhysicalMemory
from .notes import ByteOrder
from .plugins import import_all
from .translate import TranslationContext, Translator

#: the dump flavours a translator can serve
LINUX, FREEBSD_FULL, FREEBSD_MINI = "linux", "freebsd-full", "freebsd-mini"


@dataclass(frozen=True)
class Arch:
    """One architecture's CPU facts. Fields are documented one by one; only
    `name`, `word_size` and the three register names are required."""

    #: kvmcore's name (also what `--arch` takes); the formats' machine hint uses it
    name: str
    #: bytes in a pointer / general register
    word_size: int
    #: register names (in kvmcore's register dicts) of the program counter,
    #: stack pointer and frame pointer
    pc_reg: str
    sp_reg: str
    fp_reg: str
    #: byte order of the kernel's memory and registers
    byteorder: ByteOrder = "little"
    #: other names `--arch` accepts (FreeBSD's uname -m, Debian's arch name)
    aliases: tuple[str, ...] = ()
    #: ELF e_machine of this architecture's kernels (symbol files written for gdb)
    elf_machine: int = 0
    #: FreeBSD's name for it (uname -m), as its dump headers write it
    freebsd_machine: str = ""
    #: the kernel config enables KALLSYMS_ABSOLUTE_PERCPU (per-cpu symbols are
    #: absolute values in kallsyms_offsets)
    kallsyms_absolute_percpu: bool = False
    #: other machine hints of the formats this arch claims, its probe_hook
    #: deciding (ppc64le: QEMU's ELF header says EM_PPC64 in either byte order)
    machine_hints: tuple[str, ...] = ()
    #: VMCOREINFO keys only this architecture's kernels export (a probe hint)
    vmcoreinfo_keys: tuple[str, ...] = ()
    #: where elf_prstatus keeps the pid and registers; None: the dumps of this
    #: architecture carry no usable NT_PRSTATUS
    prstatus: PrstatusLayout | None = None
    #: DWARF register numbering, for unwinding with a vmlinux's CFI
    dwarf: DwarfRegisters | None = None
    #: gdb's target description
    gdb: GdbTarget | None = None
    #: lowest kernel virtual address when no translator knows better
    #: (default: the upper half of the address space)
    kernel_start: int | None = None
    #: an extra test beyond the default probe (e.g. i386 against x86_64 VMCOREINFO)
    probe_hook: Callable[[PhysicalMemory], bool] | None = field(default=None, compare=False)

    @property
    def address_mask(self) -> int:
        return (1 << (self.word_size * 8)) - 1

    def is_kernel_address(self, va: int) -> bool:
        start = self.kernel_start
        return va >= (1 << (self.word_size * 8 - 1) if start is None else start)

    def probe(self, mem: PhysicalMemory) -> bool:
        """True when `mem` comes from this architecture. The format's machine
        hint decides when it has one; without one (QEMU's kdump header on some
        targets says "Unknown"), the VMCOREINFO keys only this arch exports,
        else the size of its NT_PRSTATUS notes."""
        if mem.facts.machine is not None:
            claimed = mem.facts.machine == self.name or mem.facts.machine in self.machine_hints
        elif mem.vmcoreinfo is not None and self.vmcoreinfo_keys:
            claimed = any(key in mem.vmcoreinfo for key in self.vmcoreinfo_keys)
        else:
            notes = mem.prstatus_notes()
            claimed = (
                bool(notes)
                and self.prstatus is not None
                and all(len(n.desc) == self.prstatus.size for n in notes)
            )
        return claimed and (self.probe_hook is None or self.probe_hook(mem))

    def cpu_states(self, mem: PhysicalMemory) -> list[CpuState]:
        """Per-CPU registers from the dump's NT_PRSTATUS notes, in note order
        (QEMU writes one per vCPU and kdump one per online CPU, in CPU order),
        in the byte order of the dump's notes: QEMU writes a little-endian ppc64
        guest's notes big-endian when its CPU was in big-endian firmware."""
        notes = mem.prstatus_notes()
        if not notes:
            return []
        if self.prstatus is None:
            raise UnsupportedError(f"{self.name}: no NT_PRSTATUS layout", mem.path)
        order: ByteOrder = "big" if mem.facts.byteorder == "big" else "little"
        return [self.prstatus.parse(n, i, order, mem.path) for i, n in enumerate(notes)]


@dataclass(frozen=True)
class TranslatorFlavour:
    """The kernel-virtual translator of one architecture for one kind of dump."""

    #: the Arch.name this flavour belongs to
    arch: str
    #: LINUX, FREEBSD_FULL or FREEBSD_MINI
    flavour: str
    #: does this flavour read `mem` (already known to be of `arch`)?
    probe: Callable[[PhysicalMemory], bool]
    #: the translator, from the context alone
    build: Callable[[TranslationContext], Translator]
    #: per-CPU registers from records of this flavour's own (Xen's vCPU
    #: contexts); None: the Arch's, from NT_PRSTATUS notes
    registers: Callable[[PhysicalMemory], list[CpuState]] | None = field(
        default=None, compare=False
    )

    def cpu_states(self, arch: Arch, mem: PhysicalMemory) -> list[CpuState]:
        """The registers the dump saved per CPU."""
        return self.registers(mem) if self.registers is not None else arch.cpu_states(mem)


def is_linux(mem: PhysicalMemory) -> bool:
    """The default probe of a LINUX flavour: any full dump not from FreeBSD
    (a format that needs its own flavour says so in facts.kind)."""
    return mem.facts.os != "freebsd" and mem.facts.kind == "full"


def is_freebsd_full(mem: PhysicalMemory) -> bool:
    return mem.facts.os == "freebsd" and mem.facts.kind == "full"


def is_freebsd_mini(mem: PhysicalMemory) -> bool:
    return mem.facts.kind == "mini"  # only FreeBSD writes minidumps


_ARCHES: dict[str, Arch] = {}
_ALIASES: dict[str, str] = {}
_FLAVOURS: dict[tuple[str, str], TranslatorFlavour] = {}
#: arch name -> the package whose modules register its translator flavours
_PACKAGES: dict[str, str] = {}


def register_arch(arch: Arch, package: str | None = None) -> Arch:
    """Add an architecture to the registry (its package's __init__ calls this,
    with its own name as `package`: the package's other modules, which
    register its flavours, are imported when a dump of `arch` is opened, so
    opening a dump imports one architecture's translators, not all)."""
    _ARCHES[arch.name] = arch
    for alias in (arch.name, *arch.aliases):
        _ALIASES[alias] = arch.name
    if package is not None:
        _PACKAGES[arch.name] = package
    return arch


def register_translator(flavour: TranslatorFlavour) -> TranslatorFlavour:
    """Add an (architecture, dump flavour) translator to the registry."""
    _FLAVOURS[(flavour.arch, flavour.flavour)] = flavour
    return flavour


def _load_all() -> None:
    import_all(f"{__package__}.arches")  # kvmcore.arches, installed from arches/


def arch_names() -> list[str]:
    _load_all()
    return sorted(_ARCHES)


def get_arch(name: str) -> Arch:
    _load_all()
    key = _ALIASES.get(name)
    if key is None:
        raise ArchProbeError(f"unknown architecture {name!r}; known: {', '.join(arch_names())}")
    return _ARCHES[key]


def select_arch(mem: PhysicalMemory, name: str | None = None) -> Arch:
    """The architecture of `mem`: the one named, or the single one whose probe claims it."""
    if name:
        return get_arch(name)
    _load_all()
    claims = [arch for arch in _ARCHES.values() if arch.probe(mem)]
    if len(claims) == 1:
        return claims[0]
    if not claims:
        raise ArchProbeError(
            f"no architecture backend claims this dump (machine hint: {mem.facts.machine!r}); "
            f"choose one with --arch ({', '.join(arch_names())})",
            mem.path,
        )
    raise ArchProbeError(
        "several architecture backends claim this dump: "
        f"{', '.join(sorted(a.name for a in claims))}; choose one with --arch",
        mem.path,
    )


def select_translator(arch: Arch, mem: PhysicalMemory) -> TranslatorFlavour:
    """The flavour of `arch` whose probe claims `mem`."""
    _load_all()
    if arch.name in _PACKAGES:
        import_all(_PACKAGES[arch.name])
    mine = [f for (name, _), f in sorted(_FLAVOURS.items()) if name == arch.name]
    claims = [f for f in mine if f.probe(mem)]
    if len(claims) == 1:
        return claims[0]
    what = f"{mem.facts.os or 'unknown-OS'} {mem.facts.kind or 'full'} dump"
    if not claims:
        have = ", ".join(f.flavour for f in mine) or "none"
        raise UnsupportedError(
            f"{arch.name}: no translator for a {what} (this architecture has: {have})", mem.path
        )
    raise UnsupportedError(
        f"{arch.name}: several translators claim a {what}: {', '.join(f.flavour for f in claims)}",
        mem.path,
    )
