"""makedumpfile's flattened layout, read in place.

`makedumpfile -F` (and every QEMU `kdump-zlib/lzo/snappy` dump) writes a
stream instead of a seekable file: a 4096-byte block opening with
``makedumpfile_header`` (signature "makedumpfile", int64 type = 1, int64
version = 1), then records ``(int64 offset, int64 size)`` + ``size`` bytes,
each saying "these bytes go at `offset` of the real file", ended by a record
whose offset is -1. All int64 are big-endian.

`FlattenedSource` indexes the records once and presents the rearranged file
as a ByteSource, so the kdump (or ELF) reader runs on it unchanged. Holes
read as zeros; where records overlap, the later one wins, as when
`makedumpfile -R` replays the stream.
"""

from __future__ import annotations

import bisect
import struct
from array import array

from ..errors import DumpFormatError, TruncatedDumpError
from ..fileio import ByteSource
from . import register_format
from .base import PhysicalMemory, PhysRange

SIGNATURE = b"makedumpfile"
HEADER_BLOCK = 4096  # MAX_SIZE_MDF_HEADER
TYPE_FLAT_HEADER = 1
END_FLAG = -1
_RECORD = struct.Struct(">qq")
_HEADER = struct.Struct(">16sqq")
MAX_RECORD = 1 << 40  # a single record larger than 1 TiB is corruption


def is_flattened(source: ByteSource) -> bool:
    if source.size < HEADER_BLOCK + _RECORD.size:
        return False
    sig, ftype, _version = _HEADER.unpack(source.pread(0, _HEADER.size))
    return sig.rstrip(b"\0") == SIGNATURE and ftype == TYPE_FLAT_HEADER


class FlattenedSource:
    """The rearranged file of a flattened dump, as a read-only ByteSource."""

    def __init__(self, inner: ByteSource) -> None:
        self.inner = inner
        self.path = inner.path
        if not is_flattened(inner):
            raise DumpFormatError("no makedumpfile flattened header", inner.path)
        _sig, _type, self.version = _HEADER.unpack(inner.pread(0, _HEADER.size))
        self.complete = True
        records = self._scan()
        self._starts, self._ends, self._src = _resolve(records)
        self.size = self._ends[-1] if len(self._ends) else 0
        # bytes the file really holds: `size` counts holes (read as zeros) too, so
        # a reader that sizes a buffer from a header field checks it against this
        self.stored_size = inner.size
        self.records = len(records)

    def _scan(self) -> list[tuple[int, int, int]]:
        """(dest offset, size, position in the flattened file) per record, in write order."""
        inner, path = self.inner, self.inner.path
        pos, end = HEADER_BLOCK, inner.size
        out: list[tuple[int, int, int]] = []
        # every record takes at least 16 bytes, so this bounds the walk
        while True:
            if pos + _RECORD.size > end:
                if pos == end:
                    self.complete = False  # stream stopped cleanly before its end marker
                    return out
                raise TruncatedDumpError(
                    f"flattened record header at {pos:#x} is cut off by the end of the file", path
                )
            offset, size = _RECORD.unpack(inner.pread(pos, _RECORD.size))
            if offset == END_FLAG:
                return out
            if offset < 0 or size < 0 or size > MAX_RECORD:
                raise DumpFormatError(
                    f"bad flattened record at {pos:#x}: offset {offset}, size {size}", path
                )
            data = pos + _RECORD.size
            if data + size > end:
                raise TruncatedDumpError(
                    f"flattened record at {pos:#x} ({size} bytes for offset {offset:#x}) "
                    f"runs past the end of the file ({end:#x} bytes)",
                    path,
                )
            if size:
                out.append((offset, size, data))
            pos = data + size

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at offset {offset:#x} runs past the end of the "
                f"rearranged flattened dump ({self.size:#x} bytes)",
                self.path,
            )
        starts, ends, src = self._starts, self._ends, self._src
        i = bisect.bisect_right(starts, offset) - 1
        if i >= 0 and offset + length <= ends[i]:
            return self.inner.pread(src[i] + offset - starts[i], length)  # one record: fast path
        out = bytearray()
        pos, stop = offset, offset + length
        i = max(i, 0)
        while pos < stop:
            while i < len(starts) and ends[i] <= pos:
                i += 1
            if i == len(starts) or starts[i] >= stop:
                out += bytes(stop - pos)  # a hole up to the end
                break
            if starts[i] > pos:
                out += bytes(starts[i] - pos)  # a hole before the next record
                pos = starts[i]
            n = min(stop, ends[i]) - pos
            out += self.inner.pread(src[i] + pos - starts[i], n)
            pos += n
        return bytes(out)

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if close:
            close()


def _resolve(records: list[tuple[int, int, int]]) -> tuple[array, array, array]:
    """Sorted, non-overlapping pieces (start, end, source position); later writes win."""
    ordered = sorted(records, key=lambda r: r[0])
    if all(a[0] + a[1] <= b[0] for a, b in zip(ordered, ordered[1:])):
        pieces = [(o, o + s, p) for o, s, p in ordered]
    else:
        pieces = _paint(records)
    starts, ends, src = array("q"), array("q"), array("q")
    for s, e, p in pieces:
        if ends and ends[-1] == s and src[-1] + (s - starts[-1]) == p:
            ends[-1] = e  # contiguous in both files: merge
            continue
        starts.append(s)
        ends.append(e)
        src.append(p)
    return starts, ends, src


def _paint(records: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Overlapping records: apply them in write order, each cutting what it covers."""
    starts: list[int] = []
    pieces: list[tuple[int, int, int]] = []
    for off, size, pos in records:
        end = off + size
        i = bisect.bisect_right(starts, off) - 1
        if i < 0 or pieces[i][1] <= off:
            i += 1
        keep_before: list[tuple[int, int, int]] = []
        j = i
        while j < len(pieces) and pieces[j][0] < end:
            s, e, p = pieces[j]
            if s < off:
                keep_before.append((s, off, p))
            if e > end:
                keep_before.append((end, e, p + end - s))
            j += 1
        new = sorted(keep_before + [(off, end, pos)])
        pieces[i:j] = new
        starts[i:j] = [s for s, _, _ in new]
    return pieces


@register_format(priority=15)
class FlattenedDump(PhysicalMemory):
    """Probe-only entry: a flattened file opens as whatever format it wraps.

    Constructing one returns the inner format's object (kdump, or ELF), read
    through a FlattenedSource; its metadata["container"] says "flattened".
    """

    format_name = "flattened"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        return is_flattened(source)

    def __new__(cls, source: ByteSource) -> PhysicalMemory:  # type: ignore[misc]
        from . import open_source

        flat = FlattenedSource(source)
        if flat.size == 0:
            raise DumpFormatError("flattened dump holds no data records", source.path)
        if is_flattened(flat):
            raise DumpFormatError("flattened dump wraps another flattened dump", source.path)
        mem = open_source(flat)
        mem.metadata["container"] = "flattened"
        mem.metadata["flattened_records"] = flat.records
        mem.metadata["flattened_complete"] = flat.complete
        return mem

    def ranges(self) -> list[PhysRange]:  # pragma: no cover - never instantiated
        raise NotImplementedError

    def read_phys(self, pa: int, length: int) -> bytes:  # pragma: no cover
        raise NotImplementedError
