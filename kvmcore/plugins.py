"""Registration by import: formats and architecture backends register
themselves when their module is imported, so adding one is adding a module."""

from __future__ import annotations

import importlib
import pkgutil
from functools import cache


@cache
def import_all(package: str, skip: frozenset[str] = frozenset()) -> None:
    """Import every module of `package` (once per process) except `skip`."""
    pkg = importlib.import_module(package)
    for info in pkgutil.iter_modules(pkg.__path__):
        if info.name not in skip:
            importlib.import_module(f"{package}.{info.name}")
