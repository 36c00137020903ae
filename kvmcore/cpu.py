"""CPU facts an architecture declares, apart from its MMU: the layout of the
registers a dumper saved (ELF NT_PRSTATUS), the DWARF register numbering, and
the register set a gdb target description lists.

These are plain data. An architecture module in arches/ fills them in
(`kvmcore.registry.Arch`); the formats, the kernel model, the unwinders and
the gdb server read them, never the other way round.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .errors import UnsupportedError
from .notes import ByteOrder, Note


@dataclass
class CpuState:
    """Registers the dumper saved for one CPU (an NT_PRSTATUS note)."""

    cpu: int
    pid: int
    regs: dict[str, int]
    raw: bytes = b""
    #: `cpu` is the CPU's number, not just the record's position (Xen writes
    #: one context per vCPU, in vCPU order, and no pid to match them by)
    numbered: bool = False


@dataclass(frozen=True)
class PrstatusLayout:
    """Where pid and the general registers sit in this arch's `struct elf_prstatus`."""

    #: size of the whole note descriptor (also a probe hint when nothing else tells)
    size: int
    #: offset of pr_pid (an int)
    pid_offset: int
    #: offset of pr_reg (struct user_regs_struct / user_pt_regs)
    regs_offset: int
    #: pr_reg's registers in order, in kvmcore's register names
    reg_names: tuple[str, ...]
    #: width of each pr_reg slot in bytes
    reg_size: int

    def parse(
        self, note: Note, cpu: int, byteorder: ByteOrder, path: str | None = None
    ) -> CpuState:
        """The CpuState one NT_PRSTATUS note describes."""
        desc = note.desc
        if len(desc) < self.regs_offset + self.reg_size * len(self.reg_names):
            raise UnsupportedError(
                f"NT_PRSTATUS note of {len(desc)} bytes is too short for this architecture's "
                f"{self.size}-byte elf_prstatus",
                path,
            )
        pid = int.from_bytes(desc[self.pid_offset : self.pid_offset + 4], byteorder)
        regs: dict[str, int] = {}
        for i, name in enumerate(self.reg_names):
            off = self.regs_offset + i * self.reg_size
            regs[name] = int.from_bytes(desc[off : off + self.reg_size], byteorder)
        return CpuState(cpu, pid, regs, desc)


@dataclass(frozen=True)
class DwarfRegisters:
    """The psABI's DWARF register numbering, in kvmcore register names (for
    unwinding with a vmlinux's .debug_frame)."""

    #: DWARF register number -> kvmcore register name
    names: Mapping[int, str]
    #: the stack pointer's column (its caller value is the CFA unless a rule says otherwise)
    sp_column: int
    #: the register that receives the return address
    pc_name: str


@dataclass(frozen=True)
class GdbRegister:
    """One register of a gdb target description, in `g` packet order."""

    name: str
    bitsize: int
    type: str = "int"
    group: str | None = None
    #: gdb feature the register belongs to; None: the target's first feature
    feature: str | None = None
    #: name of the register in kvmcore's register dicts when it differs from gdb's
    source: str | None = None


@dataclass(frozen=True)
class GdbTarget:
    """What gdb's `qXfer:features:read:target.xml` says about the architecture."""

    #: gdb's name for the architecture (<architecture>)
    arch: str
    #: feature names, the first being the core feature
    features: tuple[str, ...]
    #: the registers in `g` packet order
    registers: tuple[GdbRegister, ...]
