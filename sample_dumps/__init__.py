"""Reproducible builder of real panicked-kernel crash dumps (QEMU TCG guests).

Python 3.11 stdlib only; independent of the kvmcore package (it shares one
stdlib-only file, kvmcore/cachedir.py, for the cache root).  See README.md.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
COMMITTED_DIR = PACKAGE_DIR / "committed"


def _kvmcore_cachedir():
    """kvmcore/cachedir.py, loaded by its path: it is stdlib only, and importing
    the kvmcore package would need kvmcore's dependencies."""
    spec = importlib.util.spec_from_file_location(
        "_kvmcore_cachedir", REPO_ROOT / "kvmcore" / "cachedir.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: ${KVMCORE_CACHE:-~/.cache/kvmcore}, as kvmcore.cachedir.cache_root computes it
cache_root = _kvmcore_cachedir().cache_root
