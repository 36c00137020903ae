"""Read-only access to a dump file.

Dumps are opened O_RDONLY and mapped with ACCESS_READ: no code path can write
to them. Everything above reads through the `ByteSource` protocol, which a
flattened or compressed container can also implement.
"""
from __future__ import annotations

import mmap
import os
import stat
from typing import Protocol

from .errors import DumpFormatError, TruncatedDumpError


class ByteSource(Protocol):
    """A random-access, read-only sequence of bytes."""

    path: str
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


class DumpFile:
    """A dump file mapped read-only into memory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise DumpFormatError(f"cannot open: {exc.strerror}", self.path) from None
        if stat.S_ISDIR(st.st_mode):
            raise DumpFormatError("is a directory, not a dump file", self.path)
        if not stat.S_ISREG(st.st_mode):
            raise DumpFormatError("is not a regular file", self.path)
        if st.st_size == 0:
            raise DumpFormatError("is empty", self.path)
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError as exc:
            raise DumpFormatError(f"cannot open: {exc.strerror}", self.path) from None
        try:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        self.size = st.st_size

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at offset {offset:#x} runs past the end of the file "
                f"({self.size:#x} bytes): the dump is truncated", self.path)
        return self._map[offset:offset + length]

    def view(self) -> memoryview:
        """A zero-copy view of the whole file (read-only)."""
        return memoryview(self._map)

    def close(self) -> None:
        try:
            self._map.close()
        except BufferError:
            pass  # a memoryview is still alive; the map goes when it does
