"""FreeBSD `struct pcb`: the registers kgdb takes from a switched-out thread
(sys/<arch>/include/pcb.h), one reader per architecture (kgdb's
*_fbsd_supply_pcb). A new architecture adds one with `@pcb_reader("name")`.
The layouts come from types when a type source knows `struct pcb`, else the
ABI-preserved layout kgdb assumes."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from ..errors import TypeInfoError, UnsupportedError


class Layouts(Protocol):
    """The part of kvmcore.types.TypeInfo the FreeBSD model reads (tests pass
    stand-ins with only these methods)."""

    def offsetof(self, type_name: str, member: str, /) -> int: ...

    def sizeof(self, type_name: str, /) -> int: ...


Read = Callable[[int, int], bytes]
#: None: no type source at all (the reader falls back to kgdb's ABI layout)
Reader = Callable[[Read, int, Layouts | None], dict[str, int]]
_READERS: dict[str, Reader] = {}


def pcb_reader(arch: str) -> Callable[[Reader], Reader]:
    def deco(fn: Reader) -> Reader:
        _READERS[arch] = fn
        return fn

    return deco


def pcb_registers(
    arch: str, read: Read, pcb: int, types: Layouts | None, path: str | None = None
) -> dict[str, int]:
    """Registers the `struct pcb` at `pcb` saved for a switched-out thread."""
    reader = _READERS.get(arch)
    if reader is None:
        raise UnsupportedError(f"{arch}: no FreeBSD pcb layout", path)
    return reader(read, pcb, types)


def pcb_member_offset(types: Layouts | None, member: str) -> int | None:
    """offsetof(struct pcb, member) when a type source knows it, else None."""
    if types is None:
        return None
    try:
        return types.offsetof("struct pcb", member)
    except TypeInfoError:
        return None


AMD64_PCB = ("r15", "r14", "r13", "r12", "rbp", "rsp", "rbx", "rip")
AMD64_KERNEL_CS, AMD64_KERNEL_SS = 0x20, 0x28  # GSEL(GCODE_SEL/GDATA_SEL, SEL_KPL)


@pcb_reader("x86_64")
def _amd64(read: Read, pcb: int, types: Layouts | None) -> dict[str, int]:
    """amd64 struct pcb: "(*) used by kernel debuggers, ABI preserved": eight
    words from offset 0 (r15 r14 r13 r12 rbp rsp rbx rip), or where types say."""
    regs = {}
    for i, name in enumerate(AMD64_PCB):
        off = pcb_member_offset(types, f"pcb_{name}")
        regs[name] = int.from_bytes(read(pcb + (8 * i if off is None else off), 8), "little")
    regs["cs"], regs["ss"] = AMD64_KERNEL_CS, AMD64_KERNEL_SS
    return regs


@pcb_reader("aarch64")
def _arm64(read: Read, pcb: int, types: Layouts | None) -> dict[str, int]:
    """arm64 struct pcb: FreeBSD 14+ has pcb_x[12] = x19..x30 then pcb_sp at
    96; older kernels pcb_x[31] = x0..x30 then pcb_sp. With types the array
    length is measured (pcb_sp - pcb_x); without, the current layout is
    assumed. pc = lr (x30)."""
    off_x = pcb_member_offset(types, "pcb_x")
    off_sp = pcb_member_offset(types, "pcb_sp")
    if off_x is None or off_sp is None:
        off_x, off_sp = 0, 96
    count = (off_sp - off_x) // 8
    if count == 12:
        names = [f"x{i}" for i in range(19, 31)]
    elif count == 31:
        names = [f"x{i}" for i in range(31)]
    else:
        raise UnsupportedError(f"arm64 struct pcb with {count} saved x registers")
    raw = read(pcb + off_x, 8 * count)
    regs = {n: int.from_bytes(raw[8 * i : 8 * i + 8], "little") for i, n in enumerate(names)}
    regs["sp"] = int.from_bytes(read(pcb + off_sp, 8), "little")
    regs["pc"] = regs["x30"]
    return regs
