"""Read-only access to a dump file.

Dumps are opened O_RDONLY and mapped with ACCESS_READ: no code path can write
to them. When the map cannot be made (a dump larger than the process's address
space limit, `ulimit -v`, or a file system without mmap), the same interface
reads with os.pread instead. Everything above reads through the `ByteSource`
protocol, which a flattened or compressed container can also implement.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import stat
from typing import Protocol

from .errors import DumpFormatError, HostError, KvmcoreError, NotFoundError, TruncatedDumpError

#: file pages this process may keep mapped (the dump's, and its libraries') before
#: a dump's mapped pages are let go (DumpFile._drop_mapped)
MAPPED_BYTES = 48 << 20
#: how many 64 KiB blocks not read before make DumpFile look at that size again
CHECK_BLOCKS = 16
#: reads shorter than this are copied with pread, not sliced from the map (1 MiB)
SMALL_READ = 0x100000


def _mapped_file_bytes() -> int:
    """The file-backed pages this process has mapped (/proc/self/statm's
    `shared`): not just what was read, since a fault maps a whole page-cache
    folio (up to 2 MiB on a file read ahead into large folios). Unknown
    (another OS): as if over the limit, so that the pages are let go."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[2]) * mmap.PAGESIZE
    except (OSError, ValueError, IndexError):
        return MAPPED_BYTES + 1


class ByteSource(Protocol):
    """A random-access, read-only sequence of bytes."""

    path: str
    size: int

    def pread(self, offset: int, length: int) -> bytes: ...


def _open_error(exc: OSError, path: str) -> KvmcoreError:
    """A missing file is "not found" (exit 6); anything else the host refused
    (permission denied, an I/O error) is a HostError (exit 7), not bad input."""
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        return NotFoundError(f"cannot open: {exc.strerror}", path)
    return HostError(f"cannot open: {exc.strerror}", path)


def _open_read_only(path: str) -> int:
    """The file opened read-only, without updating its access time where the
    kernel allows it (O_NOATIME: the file's owner, or root): reading a dump
    writes nothing to it, not even the inode's atime, and each read skips the
    atime check (2% of `ps` at 10,000 tasks)."""
    noatime = getattr(os, "O_NOATIME", 0)
    if noatime:
        try:
            return os.open(path, os.O_RDONLY | noatime)
        except PermissionError:  # EPERM: another user's file
            pass
    return os.open(path, os.O_RDONLY)


class DumpFile:
    """A dump file mapped read-only into memory, or read with os.pread when
    it cannot be mapped (`mapped` tells which)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        try:
            st = os.stat(self.path)
        except OSError as exc:
            raise _open_error(exc, self.path) from None
        if stat.S_ISDIR(st.st_mode):
            raise DumpFormatError("is a directory, not a dump file", self.path)
        if not stat.S_ISREG(st.st_mode):
            raise DumpFormatError("is not a regular file", self.path)
        if st.st_size == 0:
            raise DumpFormatError("is empty", self.path)
        try:
            fd = _open_read_only(self.path)
        except OSError as exc:
            raise _open_error(exc, self.path) from None
        self.size = st.st_size
        self._touched: set[int] = set()  # 64 KiB blocks read through the map since the last drop
        self._new_blocks = 0  # blocks added to _touched since the last look at the mapped size
        self._map: mmap.mmap | None = None
        self._fd: int | None = None
        self._small_fd: int | None = None
        try:
            self._map = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, OverflowError):
            # ENOMEM under an address-space limit, ENODEV on a file system that
            # cannot map, a file larger than this platform's map size
            self._fd = fd
        else:
            # kept for the reads under SMALL_READ, which pread copies (see pread)
            self._small_fd = fd

    @property
    def mapped(self) -> bool:
        return self._map is not None

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at offset {offset:#x} runs past the end of the file "
                f"({self.size:#x} bytes): the dump is truncated",
                self.path,
            )
        if self._map is not None and length < SMALL_READ and self._small_fd is not None:
            # a small read copies with pread: a fault on the map would map a whole
            # page-cache folio (up to 2 MiB) to read a pointer
            try:
                data = os.pread(self._small_fd, length, offset)
            except OSError:
                data = b""
            if len(data) == length:
                return data
        if self._map is not None:
            # the 64 KiB blocks this read touches that no read touched before: every
            # CHECK_BLOCKS of those, see how much of the file is mapped now
            first, last = offset >> 16, (offset + length - 1) >> 16
            touched = self._touched
            if first not in touched or last not in touched:
                before = len(touched)
                touched.update(range(first, last + 1))
                self._new_blocks += len(touched) - before
                if self._new_blocks >= CHECK_BLOCKS:
                    self._new_blocks = 0
                    if _mapped_file_bytes() > MAPPED_BYTES:
                        self._drop_mapped()
            return self._map[offset : offset + length]
        return self._pread(offset, length)

    def fileno(self) -> int | None:
        """The descriptor pread reads with (None once closed): for a reader in
        C that reads the file itself (kvmcore._listwalk)."""
        return self._small_fd if self._small_fd is not None else self._fd

    def _drop_mapped(self) -> None:
        """Unmap the pages read so far (MADV_DONTNEED): they stay in the page
        cache, and a later read maps them again. Without it a walk over a large
        dump keeps every page it touched resident in this process (ps of
        10,000 tasks: ~150 MB of task_structs and the pages around them)."""
        self._touched.clear()
        self._new_blocks = 0
        dontneed = getattr(mmap, "MADV_DONTNEED", None)
        if self._map is not None and dontneed is not None:
            with contextlib.suppress(OSError, ValueError):
                self._map.madvise(dontneed)

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd is None:
            raise DumpFormatError("read after close", self.path)
        chunks = []
        while length > 0:
            try:
                data = os.pread(self._fd, min(length, 1 << 30), offset)
            except OSError as exc:
                raise DumpFormatError(
                    f"read error at offset {offset:#x}: {exc.strerror}", self.path
                ) from None
            if not data:  # the file shrank under us
                raise TruncatedDumpError(
                    f"file ends at {offset:#x}, before the {self.size:#x} bytes it had when opened",
                    self.path,
                )
            chunks.append(data)
            offset += len(data)
            length -= len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)  # b"" for length 0

    def view(self) -> memoryview:
        """A zero-copy view of the whole file (read-only); a copy when unmapped."""
        if self._map is not None:
            return memoryview(self._map)
        return memoryview(self._pread(0, self.size))

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._small_fd is not None:
            os.close(self._small_fd)
            self._small_fd = None
        if self._map is not None:
            # BufferError: a memoryview is still alive; the map goes when it does
            with contextlib.suppress(BufferError):
                self._map.close()
