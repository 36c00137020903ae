"""The architecture registry: kvmcore's KVM_ARCH.

Each module in `kvmcore.arches` (source: arches/) defines an ArchBackend
subclass and decorates it with `@register_arch`. A backend says which dumps it
takes (`probe`), gives the kernel-virtual translator for full and mini dumps,
and holds the register layouts (PRSTATUS, gdb, saved switch frames). Adding an
architecture is one new module in arches/, found by import.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .errors import ArchProbeError, UnsupportedError
from .formats.base import PhysicalMemory
from .notes import Note, VmcoreInfo
from .plugins import import_all
from .pagetable import Translator

if TYPE_CHECKING:
    from .dump import Dump


@dataclass
class CpuState:
    """Registers the dumper saved for one CPU (an NT_PRSTATUS note)."""

    cpu: int
    pid: int
    regs: dict[str, int]
    raw: bytes = b""


@dataclass(frozen=True)
class PrstatusLayout:
    """Where pid and the general registers sit in this arch's elf_prstatus."""

    size: int
    pid_offset: int
    regs_offset: int
    reg_names: tuple[str, ...]
    reg_size: int


@dataclass(frozen=True)
class GdbRegister:
    """One register of a gdb target description, in `g` packet order."""

    name: str
    bitsize: int
    type: str = "int"
    group: str | None = None
    #: gdb feature the register belongs to; None: the backend's first gdb_features entry
    feature: str | None = None
    #: name of the register in kvmcore's register dicts when it differs from gdb's
    source: str | None = None


class ArchBackend(ABC):
    """One architecture: probing, address translation, register layouts."""

    name: ClassVar[str]
    word_size: ClassVar[int]
    byteorder: ClassVar[str] = "little"
    #: register names that hold the program counter, stack and frame pointers
    pc_reg: ClassVar[str]
    sp_reg: ClassVar[str]
    fp_reg: ClassVar[str]
    prstatus_layout: ClassVar[PrstatusLayout | None] = None
    #: gdb's name for the architecture (target description <architecture>)
    gdb_arch: ClassVar[str] = ""
    gdb_features: ClassVar[tuple[str, ...]] = ()
    gdb_registers: ClassVar[tuple[GdbRegister, ...]] = ()

    def __init__(self, mem: PhysicalMemory) -> None:
        self.mem = mem
        self.vmcoreinfo: VmcoreInfo | None = mem.vmcoreinfo
        self.path = mem.path

    # -- probing ---------------------------------------------------------
    #: ELF e_machine of this architecture's kernels (symbol files written for gdb)
    elf_machine: ClassVar[int] = 0
    #: the arch's Kconfig enables KALLSYMS_ABSOLUTE_PERCPU (per-cpu symbols encoded
    #: as absolute values in kallsyms_offsets)
    kallsyms_absolute_percpu: ClassVar[bool] = False
    #: FreeBSD's name for it (uname -m)
    freebsd_machine: ClassVar[str] = ""
    #: VMCOREINFO keys only this architecture's kernels export
    vmcoreinfo_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def probe(cls, mem: PhysicalMemory) -> bool:
        """True when this backend reads `mem`. The format's machine hint decides
        when it has one; without one (QEMU's kdump header on some targets says
        "Unknown"), the VMCOREINFO keys only this arch exports, else the size of
        its NT_PRSTATUS notes. Backends override it to tell variants apart."""
        if mem.facts.machine is not None:
            return mem.facts.machine == cls.name
        info = mem.vmcoreinfo
        if info is not None and cls.vmcoreinfo_keys:
            return any(key in info for key in cls.vmcoreinfo_keys)
        notes = mem.prstatus_notes()
        layout = cls.prstatus_layout
        return bool(notes) and layout is not None and \
            all(len(n.desc) == layout.size for n in notes)

    # -- translation -----------------------------------------------------
    @abstractmethod
    def full_translator(self) -> Translator:
        """Translator that walks the kernel's page tables in dumped memory."""

    def mini_translator(self) -> Translator:
        """Translator for dumps that carry their own kva map (FreeBSD minidumps)."""
        raise UnsupportedError(f"{self.name}: minidumps are not supported", self.path)

    def translator(self) -> Translator:
        if self.mem.facts.kind == "mini":
            return self.mini_translator()
        return self.full_translator()

    def set_page_table_root(self, pa: int) -> None:
        """Give the kernel's top-level page table's physical address explicitly,
        for dumps that do not name it (a FreeBSD full dump without its kernel's
        symbols). A translator built lazily from the root is rebuilt."""
        self.freebsd_root = pa
        lazy = getattr(self, "_freebsd_lazy", None)
        if lazy is not None:
            lazy.reset()

    def is_kernel_address(self, va: int) -> bool:
        return va >= 1 << (self.word_size * 8 - 1)

    # -- registers -------------------------------------------------------
    def parse_prstatus(self, note: Note, cpu: int) -> CpuState:
        layout = self.prstatus_layout
        if layout is None:
            raise UnsupportedError(f"{self.name}: no NT_PRSTATUS layout", self.path)
        desc = note.desc
        if len(desc) < layout.regs_offset + layout.reg_size * len(layout.reg_names):
            raise UnsupportedError(
                f"{self.name}: NT_PRSTATUS note of {len(desc)} bytes is too short", self.path)
        bo = self.byteorder
        pid = int.from_bytes(desc[layout.pid_offset:layout.pid_offset + 4], bo)
        regs = {}
        for i, name in enumerate(layout.reg_names):
            off = layout.regs_offset + i * layout.reg_size
            regs[name] = int.from_bytes(desc[off:off + layout.reg_size], bo)
        return CpuState(cpu, pid, regs, desc)

    def cpu_states(self) -> list[CpuState]:
        """Per-CPU registers from the dump's NT_PRSTATUS notes, in note order.

        QEMU writes one per vCPU and kdump one per online CPU; both in CPU order.
        """
        return [self.parse_prstatus(n, i) for i, n in enumerate(self.mem.prstatus_notes())]

    # -- kernel hooks (implemented where the arch supports them) -----------
    def linux_switch_frame(self, dump: "Dump", task: Any) -> dict[str, int]:
        """Registers saved at a sleeping Linux task's last context switch."""
        raise UnsupportedError(f"{self.name}: saved switch frames are not supported", self.path)

    def linear_map_address(self, pa: int) -> int | None:
        """The kernel's direct-map alias of physical `pa`, when the arch can tell
        without symbols (used by the last-resort memory scans); else None."""
        return None

    def recovered_registers(self, dump: "Dump", frames: list[Any]) -> dict[str, int]:
        """Callee-saved registers known for the first of `frames` (a backtrace's
        tail) beyond its pc and sp, for a debugger handed that frame; default none."""
        return {}

    def unwinder(self, dump: "Dump") -> Any:
        """The kernel stack unwinder for this arch (see kvmcore.unwind)."""
        raise UnsupportedError(f"{self.name}: no kernel stack unwinder", self.path)

    def symfile_cfi(self, dump: "Dump") -> Any:
        """(kvmcore.symbols.cfi.CfiLayout, [CfiRange]) of call-frame rows for
        `kvmcore symfile`, at runtime addresses; None when gdb needs none."""
        return None

    def freebsd_pcb_registers(self, read: Any, pcb: int, types: Any) -> dict[str, int]:
        """Registers a FreeBSD `struct pcb` saved for a switched-out thread."""
        raise UnsupportedError(f"{self.name}: no FreeBSD pcb layout", self.path)

    def describe(self) -> dict[str, Any]:
        return {"arch": self.name}


_ARCHES: dict[str, type[ArchBackend]] = {}
_ALIASES: dict[str, str] = {}


def register_arch(*aliases: str):
    """Class decorator that adds a backend to the registry."""

    def deco(cls: type[ArchBackend]) -> type[ArchBackend]:
        _ARCHES[cls.name] = cls
        for alias in (cls.name, *aliases):
            _ALIASES[alias] = cls.name
        return cls

    return deco


def _load_all() -> None:
    import_all(f"{__package__}.arches")  # kvmcore.arches, installed from arches/


def arch_names() -> list[str]:
    _load_all()
    return sorted(_ARCHES)


def get_arch(name: str) -> type[ArchBackend]:
    _load_all()
    key = _ALIASES.get(name)
    if key is None:
        raise ArchProbeError(f"unknown architecture {name!r}; known: {', '.join(arch_names())}")
    return _ARCHES[key]


def select_arch(mem: PhysicalMemory, name: str | None = None) -> ArchBackend:
    """The backend for `mem`: the one named, or the single one whose probe claims it."""
    if name:
        return get_arch(name)(mem)
    _load_all()
    claims = [cls for cls in _ARCHES.values() if cls.probe(mem)]
    if len(claims) == 1:
        return claims[0](mem)
    if not claims:
        raise ArchProbeError(
            f"no architecture backend claims this dump (machine hint: {mem.facts.machine!r}); "
            f"choose one with --arch ({', '.join(arch_names())})", mem.path)
    raise ArchProbeError(
        "several architecture backends claim this dump: "
        f"{', '.join(sorted(c.name for c in claims))}; choose one with --arch", mem.path)

