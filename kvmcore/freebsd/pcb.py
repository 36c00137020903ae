"""FreeBSD `struct pcb`: the registers kgdb takes from a switched-out thread
(sys/<arch>/include/pcb.h). Each arch's layout lives in its arches/ module
(`ArchBackend.freebsd_pcb_registers`); this is the shared types lookup."""
from __future__ import annotations

from typing import Any

from ..errors import TypeInfoError


def pcb_member_offset(types: Any, member: str) -> int | None:
    """offsetof(struct pcb, member) when a type source knows it, else None."""
    if types is None:
        return None
    try:
        return types.offsetof("struct pcb", member)
    except TypeInfoError:
        return None
