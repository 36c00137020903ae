"""Byte sources the targets feed to kvmcore: in memory, or a real dump seen
through an overlay of patches. Nothing here can write a file."""

from __future__ import annotations

import bisect
from collections.abc import Mapping

from kvmcore.errors import NotMappedError, TruncatedDumpError
from kvmcore.fileio import ByteSource


class BytesSource:
    """A ByteSource over bytes held in memory (a mutated header, a synthetic file)."""

    def __init__(self, data: bytes, path: str = "<fuzz>") -> None:
        self.data = bytes(data)
        self.size = len(self.data)
        self.stored_size = self.size
        self.path = path

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at {offset:#x} runs past the end ({self.size:#x})",
                self.path,
            )
        return self.data[offset : offset + length]

    def close(self) -> None:
        pass


class OverlaySource:
    """`base` (a read-only DumpFile) with its first bytes replaced by `prefix`
    (which may be shorter or longer than the part it replaces, shifting the
    rest) and single-byte-range `patches` applied on top; `size` cuts it."""

    def __init__(
        self,
        base: ByteSource,
        prefix: bytes = b"",
        replaced: int = 0,
        patches: Mapping[int, bytes] | None = None,
        size: int | None = None,
    ) -> None:
        self.base = base
        self.path = base.path
        self.prefix = bytes(prefix)
        self.replaced = replaced
        self.shift = len(self.prefix) - replaced
        full = base.size + self.shift
        self.size = full if size is None else max(0, min(size, full))
        self.stored_size = self.size
        self.patches = sorted((patches or {}).items())
        self._patch_starts = [p[0] for p in self.patches]

    def _raw(self, offset: int, length: int) -> bytes:
        out = bytearray()
        n = len(self.prefix)
        if offset < n:
            take = min(length, n - offset)
            out += self.prefix[offset : offset + take]
            offset, length = offset + take, length - take
        if length:
            out += self.base.pread(offset - self.shift, length)
        return bytes(out)

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at {offset:#x} runs past the end ({self.size:#x})",
                self.path,
            )
        data = self._raw(offset, length)
        if not self.patches:
            return data
        i = max(bisect.bisect_right(self._patch_starts, offset) - 1, 0)
        out = None
        end = offset + length
        for at, value in self.patches[i:]:
            if at >= end:
                break
            lo, hi = max(at, offset), min(at + len(value), end)
            if lo < hi:
                if out is None:
                    out = bytearray(data)
                out[lo - offset : hi - offset] = value[lo - at : hi - at]
        return data if out is None else bytes(out)

    def close(self) -> None:
        pass  # the base belongs to whoever opened it


class Memory:
    """Kernel virtual memory made of byte regions, for targets that read
    through a Dump-like object (kallsyms, ORC). Unmapped reads raise."""

    def __init__(self, regions: Mapping[int, bytes]) -> None:
        self.regions = sorted((a, bytes(b)) for a, b in regions.items())
        self.starts = [a for a, _ in self.regions]

    def read(self, addr: int, length: int) -> bytes:
        if length < 0:
            raise NotMappedError(f"negative read of {length} bytes at {addr:#x}", addr)
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0:
            start, data = self.regions[i]
            if addr + length <= start + len(data):
                return data[addr - start : addr - start + length]
        raise NotMappedError(f"address {addr:#x} (+{length}) is not mapped", addr)
