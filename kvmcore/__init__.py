"""kvmcore: offline kernel crash-dump analysis (Linux and FreeBSD vmcores)."""

from __future__ import annotations

from .dump import Dump, open
from .errors import KvmcoreError

__version__ = "0.1.0"
__all__ = ["Dump", "open", "KvmcoreError", "__version__"]
