# Types of kvmcore/_listwalk.c (the task walk's loop in C); see its docstring.
from collections.abc import Callable

def walk_spans(
    fd: int,
    blocks: dict[int, int],
    locate: Callable[[int], int],
    node: int,
    head: int,
    link_offset: int,
    span_start: int,
    span_length: int,
    layout: tuple[tuple[int, int, int], ...],
    next_field: int,
    mask: int,
    big_endian: bool,
    limit: int,
    seen: set[int],
    out: list[int],
    found: list[tuple[object, ...]],
) -> tuple[int, int]: ...
def build_task_records(
    addresses: list[int],
    found: list[tuple[object, ...]],
    task_type: type,
    registers: object,
    comms: dict[bytes, str],
    states: dict[tuple[int, int], str],
    tgids: dict[int, int],
    records: dict[int, tuple[object, ...] | None],
    record: Callable[[int, tuple[object, ...]], object],
) -> None: ...
