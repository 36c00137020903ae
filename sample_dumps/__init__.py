"""Reproducible builder of real panicked-kernel crash dumps (QEMU TCG guests).

Python 3.11 stdlib only; independent of kvmcore.  See README.md.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
COMMITTED_DIR = PACKAGE_DIR / "committed"


def cache_dir() -> Path:
    """${KVMCORE_CACHE:-~/.cache/kvmcore}"""
    env = os.environ.get("KVMCORE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "kvmcore"
