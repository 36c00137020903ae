"""Fault injection on a real dump, in the reader only: the file is never
touched. Used to put into real kernel data the values a sample did not happen
to contain (a looping list, an impossible index, another task state)."""
from __future__ import annotations

import kvmcore


def patched_dump(samples, patches: dict[int, bytes], sid: str = "x86_64-kaslr",
                 fmt: str = "elf") -> kvmcore.Dump:
    """The sample's dump with the bytes at these kernel virtual addresses replaced."""
    dump = kvmcore.open(str(samples.get_built(sid).file(fmt)))
    by_pa = {dump.translate(va).pa: value for va, value in patches.items()}
    original = dump.mem.read_phys

    def read_phys(pa: int, length: int) -> bytes:
        data = bytearray(original(pa, length))
        for at, value in by_pa.items():
            lo, hi = max(at, pa), min(at + len(value), pa + length)
            if lo < hi:
                data[lo - pa:hi - pa] = value[lo - at:hi - at]
        return bytes(data)

    dump.mem.read_phys = read_phys
    return dump


def word(value: int) -> bytes:
    """A 64-bit little-endian word (the x86_64 and arm64 samples' pointers)."""
    return (value & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "little")
