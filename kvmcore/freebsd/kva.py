"""Pieces the FreeBSD translators in arches/ share: symbol lookup across the
symbol sources kvmcore accepts, and a translator whose page-table root is
found on first use (a FreeBSD full dump names its root only through a kernel
symbol, KPML4phys, which needs the kernel's symbol table)."""
from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

from ..errors import SymbolError, UnsupportedError
from ..pagetable import MappedRange, Translation, Translator


def symbol_value(source: Any, name: str) -> int | None:
    """Address of `name` in a dict[str, int], a kvmcore SymbolTable, or None."""
    if source is None:
        return None
    try:
        if isinstance(source, Mapping):
            value = source.get(name)
        elif hasattr(source, "get"):
            value = source.get(name)
        else:
            value = source.lookup(name)
    except (KeyError, SymbolError):
        return None
    return None if value is None else int(value)


def backend_symbols(backend: Any) -> list[Any]:
    """Symbol sources reachable from an arch backend, explicit ones first."""
    sources = []
    explicit = getattr(backend, "freebsd_symbols", None)
    if explicit is not None:
        sources.append(explicit)
    dump = getattr(backend, "dump", None)
    if dump is not None:
        try:
            sources.append(dump.symbols)
        except (SymbolError, UnsupportedError):
            pass
    return sources


def lookup(backend: Any, name: str) -> int | None:
    for source in backend_symbols(backend):
        value = symbol_value(source, name)
        if value is not None:
            return value
    return None


class LazyRootTranslator(Translator):
    """Builds the real translator on first use, from `make()`."""

    def __init__(self, make: Callable[[], Translator], path: str | None) -> None:
        self._make = make
        self._inner: Translator | None = None
        self._busy = False
        self.path = path

    def inner(self) -> Translator:
        if self._inner is None:
            if self._busy:  # resolving the root needed a kernel-virtual read
                raise SymbolError("locating the page-table root needs kernel symbols, "
                                  "which in turn need virtual reads", self.path)
            self._busy = True
            try:
                self._inner = self._make()
            finally:
                self._busy = False
        return self._inner

    def reset(self) -> None:
        self._inner = None

    def translate(self, va: int) -> Translation:
        return self.inner().translate(va)

    def walk(self) -> Iterator[MappedRange]:
        return self.inner().walk()

