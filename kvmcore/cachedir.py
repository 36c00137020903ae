"""Where kvmcore keeps files between runs: ``${KVMCORE_CACHE:-~/.cache/kvmcore}``.

The one definition of the cache root, for kvmcore (the per-build-id indexes
under ``index/``), the sample builder (``sample_dumps/``: ``samples/``,
``dbg/``, ...) and the tests. Standard library only and free of kvmcore
imports: sample_dumps/ loads this file by its path, so the builder runs on a
bare python3 without kvmcore installed.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$KVMCORE_CACHE when set (and not empty), else ~/.cache/kvmcore."""
    env = os.environ.get("KVMCORE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvmcore"


def index_dir(build_id: str) -> Path:
    """The cache of one kernel build's decoded tables: <root>/index/<build-id>."""
    return cache_root() / "index" / build_id
