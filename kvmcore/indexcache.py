"""An on-disk cache of what decoding a kernel's tables produced, per build id.

Some work depends only on the kernel build, never on the boot: expanding
the kallsyms names, walking the BTF type section. Its result is kept under
``${KVMCORE_CACHE:-~/.cache/kvmcore}/index/<build-id>/<name>`` and used again
only when it provably belongs to the same input: each file records the
SHA-256 and length of the source bytes it was computed from and a CRC of its
own payload, so a stale, foreign, truncated or corrupt file is ignored (and
rewritten). Files are written atomically (temporary file + rename); a cache
that cannot be written (read-only, full) only costs speed.
KVMCORE_INDEX_CACHE=0 turns the cache off.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import struct
import zlib

from .cachedir import index_dir

MAGIC = b"KVMCIDX1"
# magic, source length, source sha256, payload length, payload crc32
_HEADER = struct.Struct("<8sQ32sQI")
MAX_PAYLOAD = 256 << 20
_BUILD_ID = re.compile(r"[0-9a-f]{8,128}")


def enabled() -> bool:
    return os.environ.get("KVMCORE_INDEX_CACHE", "1") not in ("0", "off", "no")


def _path(build_id: str | None, name: str) -> str | None:
    if not build_id or not enabled():
        return None
    build_id = build_id.lower()
    if not _BUILD_ID.fullmatch(build_id):  # it names a directory: hex only
        return None
    return os.path.join(index_dir(build_id), name)


def source_digest(*parts: bytes | memoryview) -> tuple[int, bytes]:
    """(total length, SHA-256) of the source bytes, given in parts."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part)
    return sum(memoryview(p).nbytes for p in parts), h.digest()


def load(build_id: str | None, name: str, source: tuple[int, bytes]) -> bytes | None:
    """The payload stored for `source` (from source_digest), or None when
    there is none or it does not check out."""
    path = _path(build_id, name)
    if path is None:
        return None
    try:
        with open(path, "rb") as f:
            raw = f.read(_HEADER.size + MAX_PAYLOAD + 1)
    except OSError:
        return None
    if len(raw) < _HEADER.size:
        return None
    magic, src_len, src_hash, length, crc = _HEADER.unpack_from(raw)
    payload = raw[_HEADER.size :]
    if (
        magic != MAGIC
        or (src_len, src_hash) != source
        or length != len(payload)
        or zlib.crc32(payload) != crc
    ):
        return None
    return payload


def store(build_id: str | None, name: str, source: tuple[int, bytes], payload: bytes) -> None:
    """Keep `payload` for `source`; silently nothing when the cache is unwritable."""
    path = _path(build_id, name)
    if path is None or len(payload) > MAX_PAYLOAD:
        return
    import tempfile  # writing only: a warm run imports neither it nor shutil/random

    header = _HEADER.pack(MAGIC, source[0], source[1], len(payload), zlib.crc32(payload))
    folder = os.path.dirname(path)
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(header)
            f.write(payload)
        os.replace(tmp, path)
        tmp = None
    except OSError:
        pass  # read-only or full: the next run decodes again
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
