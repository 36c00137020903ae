"""Wrappers around FreeBSD dumps: a leading kerneldumpheader, gzip, zstd.

savecore(8) writes vmcore.N (raw minidump or ELF), vmcore.N.gz or vmcore.N.zst
(the dump was compressed by the kernel, kept compressed); a copy of the dump
device region starts with a 512-byte `struct kerneldumpheader`
(sys/sys/kerneldump.h, big-endian fields, XOR parity over 128 words).

The probe here recognises the wrapper and `__new__` returns the inner
format's object (FreeBSDMinidump, ElfDump), opened over the unwrapped bytes.
Decompressed bytes go to an unlinked temporary file (or anonymous memory for
zstd), never next to the dump; output is capped by `max_decompressed()`.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import struct
import zlib

from ..errors import DecompressionError, DumpFormatError, TruncatedDumpError, UnsupportedError
from ..fileio import ByteSource
from . import open_source, register_format
from .base import PhysicalMemory, PhysRange

KDH_SIZE = 512
KDH_MAGICS = {
    b"FreeBSD Kernel Dump": "dump",
    b"FreeBSD Text Dump": "textdump",
    b"Cleared Kernel Dump": "cleared",
}
GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
COMPRESSION = {0: None, 1: "gzip", 2: "zstd"}
#: default cap on decompressed size; KVMCORE_MAX_DECOMPRESSED (bytes) overrides it
DEFAULT_MAX_DECOMPRESSED = 64 << 30
CHUNK = 4 << 20


def max_decompressed() -> int:
    value = os.environ.get("KVMCORE_MAX_DECOMPRESSED")
    return int(value, 0) if value else DEFAULT_MAX_DECOMPRESSED


class SliceSource:
    """A window [offset, offset + size) of another ByteSource."""

    def __init__(self, base: ByteSource, offset: int, size: int, path: str) -> None:
        self.base, self.offset, self.size, self.path = base, offset, size, path

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at offset {offset:#x} runs past the end of the "
                f"dump payload ({self.size:#x} bytes): the dump is truncated",
                self.path,
            )
        return self.base.pread(self.offset + offset, length)


class BufferSource:
    """Decompressed bytes held in a read-only mapping; `path` names the original file."""

    def __init__(self, buf: mmap.mmap, size: int, path: str) -> None:
        self._buf, self.size, self.path = buf, size, path

    def pread(self, offset: int, length: int) -> bytes:
        if offset < 0 or offset + length > self.size:
            raise TruncatedDumpError(
                f"read of {length} bytes at offset {offset:#x} runs past the end of the "
                f"decompressed dump ({self.size:#x} bytes): the dump is truncated",
                self.path,
            )
        return self._buf[offset : offset + length]

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._buf.close()


def _gunzip(src: ByteSource, path: str, limit: int) -> BufferSource:
    """Stream-inflate a gzip member into an unlinked temp file, capped at `limit`."""
    inflater = zlib.decompressobj(wbits=31)
    total = 0
    import tempfile  # only to inflate a compressed dump: not every open's import

    with tempfile.TemporaryFile(prefix="kvmcore-") as tmp:
        pos = 0
        try:
            while pos < src.size and not inflater.eof:
                chunk = src.pread(pos, min(CHUNK, src.size - pos))
                pos += len(chunk)
                while chunk:
                    out = inflater.decompress(chunk, CHUNK)
                    total += len(out)
                    if total > limit:
                        raise DecompressionError(
                            f"gzip stream inflates past {limit} bytes (decompression-bomb "
                            "limit; raise it with KVMCORE_MAX_DECOMPRESSED)",
                            path,
                        )
                    tmp.write(out)
                    chunk = inflater.unconsumed_tail
        except zlib.error as exc:
            raise DecompressionError(
                f"gzip stream is corrupt at input offset ~{pos:#x}: {exc}", path
            ) from None
        if not inflater.eof:
            raise DecompressionError(
                f"gzip stream ends early (input exhausted at {pos:#x}, {total} bytes out): "
                "the dump is truncated",
                path,
            )
        if total == 0:
            raise DecompressionError("gzip stream holds no data", path)
        tmp.flush()
        buf = mmap.mmap(tmp.fileno(), total, access=mmap.ACCESS_READ)
    return BufferSource(buf, total, path)


def _check_gzip_payload(src: ByteSource, path: str) -> None:
    """Inflate only the first bytes: refuse a gzip that holds no FreeBSD dump early."""
    try:
        first = zlib.decompressobj(wbits=31).decompress(src.pread(0, min(src.size, 65536)), 8)
    except zlib.error as exc:
        raise DecompressionError(f"gzip stream is corrupt: {exc}", path) from None
    if first != b"minidump" and first[:4] != b"\x7fELF":
        raise UnsupportedError(
            "this gzip file holds neither a FreeBSD minidump nor an ELF dump", path
        )


def _zstd_content_size(head: bytes) -> int | None:
    """Frame_Content_Size from a zstd frame header, when the writer recorded it."""
    if len(head) < 6:
        return None
    fhd = head[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[dict_flag]
    width = (1 if single else 0, 2, 4, 8)[fcs_flag]
    if width == 0 or pos + width > len(head):
        return None
    value = int.from_bytes(head[pos : pos + width], "little")
    return value + 256 if width == 2 else value


def _unzstd(src: ByteSource, path: str, limit: int) -> BufferSource:
    """Decompress a zstd stream into anonymous memory no larger than `limit`."""
    import cramjam

    data = src.pread(0, src.size)
    known = _zstd_content_size(data[:18])
    if known is not None and known > limit:
        raise DecompressionError(
            f"zstd frame declares {known} bytes, past the {limit}-byte decompression-bomb "
            "limit (raise it with KVMCORE_MAX_DECOMPRESSED)",
            path,
        )
    size = known or min(limit, max(len(data) * 8, 1 << 20))
    while True:
        buf = mmap.mmap(-1, max(size, 1))
        try:
            written = cramjam.zstd.decompress_into(data, buf)
            break
        except Exception as exc:  # cramjam.DecompressionError: too small or corrupt
            buf.close()
            if "whole buffer" in str(exc) and size < limit:
                size = min(limit, size * 4)
                continue
            if "whole buffer" in str(exc):
                raise DecompressionError(
                    f"zstd stream inflates past {limit} bytes (decompression-bomb limit; raise "
                    "it with KVMCORE_MAX_DECOMPRESSED)",
                    path,
                ) from None
            raise DecompressionError(f"zstd stream is corrupt or truncated: {exc}", path) from None
    if written == 0:
        raise DecompressionError("zstd stream holds no data", path)
    return BufferSource(buf, written, path)


def parse_kerneldumpheader(raw: bytes, path: str) -> dict:
    """struct kerneldumpheader (version 4 layout; older fields where they agree)."""
    if len(raw) < KDH_SIZE:
        raise TruncatedDumpError("file ends inside its kerneldumpheader", path)
    parity = 0
    for (word,) in struct.iter_unpack(">I", raw[:KDH_SIZE]):
        parity ^= word
    if parity:
        raise DumpFormatError(f"kerneldumpheader parity check failed (residue {parity:#x})", path)
    magic = raw[:20].split(b"\0", 1)[0]
    version, archver, dumplength, dumptime = struct.unpack_from(">IIQQ", raw, 32)

    def text(a: int, b: int) -> str:
        return raw[a:b].split(b"\0", 1)[0].decode("utf-8", "replace")

    hdr = {
        "magic": magic.decode("ascii", "replace"),
        "kind": KDH_MAGICS.get(magic),
        "architecture": text(20, 32),
        "version": version,
        "architectureversion": archver,
        "dumplength": dumplength,
        "dumptime": dumptime,
    }
    if version >= 2:
        keysize, blocksize = struct.unpack_from(">II", raw, 56)
        hdr.update(
            dumpkeysize=keysize,
            blocksize=blocksize,
            hostname=text(64, 128),
            versionstring=text(128, 320),
            panicstring=text(320, 495),
            compression=raw[495] if version >= 3 else 0,
        )
    else:  # version 1 (FreeBSD <= 11): no key size, no compression
        blocksize = struct.unpack_from(">I", raw, 56)[0]
        hdr.update(
            dumpkeysize=0,
            blocksize=blocksize,
            hostname=text(60, 124),
            versionstring=text(124, 316),
            panicstring=text(316, 508),
            compression=0,
        )
    return hdr


@register_format(priority=15)
class FreeBSDContainer(PhysicalMemory):
    """Not a format of its own: unwraps and hands over to the inner format."""

    format_name = "freebsd-container"

    @classmethod
    def probe(cls, source: ByteSource) -> bool:
        head = source.pread(0, min(source.size, 20))
        if head[:20].split(b"\0", 1)[0] in KDH_MAGICS:
            return True
        return head[:2] == GZIP_MAGIC or head[:4] == ZSTD_MAGIC

    def __new__(cls, source: ByteSource) -> PhysicalMemory:  # type: ignore[misc]
        path = source.path
        wrappers: list[str] = []
        header = None
        inner: ByteSource = source
        head = source.pread(0, min(source.size, 20))
        compression = None
        if head[:20].split(b"\0", 1)[0] in KDH_MAGICS:
            header = parse_kerneldumpheader(source.pread(0, min(source.size, KDH_SIZE)), path)
            if header["kind"] != "dump":
                raise UnsupportedError(
                    f"holds a {header['magic']!r} record, not a kernel memory dump", path
                )
            if header["dumpkeysize"]:
                raise UnsupportedError(
                    "the dump is encrypted (EKCD); decrypt it with decryptcore(8) first", path
                )
            start = KDH_SIZE
            length = header["dumplength"]
            if start + length > source.size:
                raise TruncatedDumpError(
                    f"kerneldumpheader promises {length:#x} bytes of dump after the header, "
                    f"the file holds {source.size - start:#x}: the dump is truncated",
                    path,
                )
            inner = SliceSource(source, start, length, path)
            wrappers.append("kerneldumpheader")
            compression = COMPRESSION.get(header["compression"], "unknown")
            if compression == "unknown":
                raise UnsupportedError(
                    f"kerneldumpheader compression type {header['compression']}", path
                )
        magic = inner.pread(0, min(inner.size, 4))
        if compression == "gzip" or magic[:2] == GZIP_MAGIC:
            _check_gzip_payload(inner, path)
            inner = _gunzip(inner, path, max_decompressed())
            wrappers.append("gzip")
        elif compression == "zstd" or magic[:4] == ZSTD_MAGIC:
            inner = _unzstd(inner, path, max_decompressed())
            wrappers.append("zstd")
        if inner.size < 8:
            raise DumpFormatError("the unwrapped dump is too small to be a dump", path)
        first = inner.pread(0, 8)
        if first != b"minidump" and first[:4] != b"\x7fELF":
            raise UnsupportedError(
                f"the {'+'.join(wrappers)} wrapper holds neither a FreeBSD minidump nor an "
                "ELF dump",
                path,
            )
        mem = open_source(inner)
        mem.metadata["container"] = wrappers
        if header is not None:
            mem.metadata["kerneldumpheader"] = header
            if header["architecture"] and mem.facts.os is None and first[:4] == b"\x7fELF":
                mem.facts.os = "freebsd"
        return mem

    # never instantiated: __new__ returns the inner format's object
    def ranges(self) -> list[PhysRange]:  # pragma: no cover
        raise NotImplementedError

    def read_phys(self, pa: int, length: int) -> bytes:  # pragma: no cover
        raise NotImplementedError
