"""A dump's content hash, cheaply.

The quick hash of a file is its size and the sha256 of its first and last
:data:`BLOCK` bytes (the whole file when it is smaller than two blocks): a dump's
head holds its headers, notes and bitmaps (registers, VMCOREINFO, crash time) and
its tail the last pages written, so two different crashes practically never share
it, and it costs two reads whatever the dump's size. Only files whose quick hash
collides with another file's (in the same run, or a different path in the
database) are hashed in full, and then the full sha256 decides whether they are
the same dump. A result's key says which it is: ``quick:<size>:<hex>`` or
``sha256:<hex>``.
"""

from __future__ import annotations

import hashlib
import os

BLOCK = 1 << 20


def quick_hash(path: str) -> str:
    size = os.path.getsize(path)
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if size <= 2 * BLOCK:
            h.update(f.read())
        else:
            h.update(f.read(BLOCK))
            f.seek(size - BLOCK)
            h.update(f.read(BLOCK))
    return f"quick:{size}:{h.hexdigest()[:32]}"


def full_hash(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return f"sha256:{h.hexdigest()}"
