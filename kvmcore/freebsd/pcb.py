"""FreeBSD `struct pcb` register layouts, the registers kgdb takes from a
switched-out thread (sys/<arch>/include/pcb.h; kgdb's *fbsd-kern.c)."""
from __future__ import annotations

import struct
from typing import Any, Callable

from ..errors import TypeInfoError, UnsupportedError

# amd64: "(*) used by kernel debuggers, ABI preserved": eight words from offset 0
AMD64_PCB = ("r15", "r14", "r13", "r12", "rbp", "rsp", "rbx", "rip")
AMD64_KERNEL_CS, AMD64_KERNEL_SS = 0x20, 0x28  # GSEL(GCODE_SEL/GDATA_SEL, SEL_KPL)


def _types_offset(types: Any, member: str) -> int | None:
    if types is None:
        return None
    try:
        return types.offsetof("struct pcb", member)
    except TypeInfoError:
        return None


def amd64_registers(read: Callable[[int, int], bytes], pcb: int, types: Any) -> dict[str, int]:
    regs = {}
    for i, name in enumerate(AMD64_PCB):
        off = _types_offset(types, f"pcb_{name}")
        regs[name] = struct.unpack("<Q", read(pcb + (8 * i if off is None else off), 8))[0]
    regs["cs"], regs["ss"] = AMD64_KERNEL_CS, AMD64_KERNEL_SS
    return regs


def arm64_registers(read: Callable[[int, int], bytes], pcb: int, types: Any) -> dict[str, int]:
    """FreeBSD 14+: pcb_x[12] = x19..x30 then pcb_sp at 96; older kernels had
    pcb_x[31] = x0..x30 then pcb_sp. With types the array length is measured
    (pcb_sp - pcb_x); without, the current layout is assumed. pc = lr (x30)."""
    off_x = _types_offset(types, "pcb_x")
    off_sp = _types_offset(types, "pcb_sp")
    if off_x is None or off_sp is None:
        off_x, off_sp = 0, 96
    count = (off_sp - off_x) // 8
    if count == 12:
        names = [f"x{i}" for i in range(19, 31)]
    elif count == 31:
        names = [f"x{i}" for i in range(31)]
    else:
        raise UnsupportedError(f"arm64 struct pcb with {count} saved x registers")
    words = struct.unpack(f"<{count}Q", read(pcb + off_x, 8 * count))
    regs = dict(zip(names, words))
    regs["sp"] = struct.unpack("<Q", read(pcb + off_sp, 8))[0]
    regs["pc"] = regs["x30"]
    return regs


PCB_READERS = {"x86_64": amd64_registers, "aarch64": arm64_registers}
