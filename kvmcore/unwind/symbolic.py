"""The unwinders' view of the symbol layer: symbol addresses and
"function+0xoff/0xsize [module]" descriptions of code addresses.

kvmcore.symbols owns the symbol tables; this adapter only normalises what it
returns and turns a missing symbol layer into "no names" instead of a crash,
so a backtrace still comes out (with bare addresses) when symbols fail.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

from ..errors import KvmcoreError

if TYPE_CHECKING:
    from ..dump import Dump


def _as_address(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int):
        return value
    for attr in ("address", "value", "addr"):
        v = getattr(value, attr, None)
        if isinstance(v, int):
            return v
    return None


def _past_end(text: str) -> bool:
    """Whether `name+0xoff/0xsize` puts the offset past the symbol's size."""
    _, plus, rest = text.rpartition("+")
    off, slash, size = rest.partition("/")
    try:
        return bool(plus and slash) and int(size, 16) > 0 and int(off, 16) >= int(size, 16)
    except ValueError:
        return False


class CodeSymbols:
    """Symbol look-ups for one dump, cached; never raises."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self._table: Any = None
        self._loaded = False
        self.error: str | None = None
        self._described: dict[int, tuple[str | None, str | None]] = {}
        self._modules: list[tuple[int, int, str]] | None = None

    @property
    def table(self) -> Any:
        """The kernel's symbol table with each loaded module's own symbols:
        the model adds those in one explicit step (KernelModel.symbol_table)."""
        if not self._loaded:
            self._loaded = True
            try:
                self._table = self.dump.symbols
            except KvmcoreError as exc:
                self.error = f"no kernel symbols: {exc}"
                return None
            with contextlib.suppress(KvmcoreError):  # no module list: core symbols only
                self._table = self.dump.kernel.symbol_table()
        return self._table

    def address(self, name: str) -> int | None:
        table = self.table
        if table is None:
            return None
        try:
            return _as_address(table.get(name))
        except KvmcoreError:
            return None

    def describe(self, pc: int) -> tuple[str | None, str | None]:
        """(\"name+0xoff/0xsize\", module or None) for a code address."""
        hit = self._described.get(pc)
        if hit is None:
            hit = self._describe(pc)
            self._described[pc] = hit
        return hit

    def _module_of(self, pc: int) -> str | None:
        """The loaded module whose core memory holds `pc` (kernel model), if any."""
        if self._modules is None:
            self._modules = []
            with contextlib.suppress(KvmcoreError):
                self._modules = [
                    (m.base, m.base + m.size, m.name) for m in self.dump.kernel.modules()
                ]
        return next((name for lo, hi, name in self._modules if lo <= pc < hi), None)

    def _describe(self, pc: int) -> tuple[str | None, str | None]:
        text, module = self._describe_symbol(pc)
        if text is None and module is None and self.dump.is_kernel_address(pc):
            module = self._module_of(pc)
        return text, module

    def _describe_symbol(self, pc: int) -> tuple[str | None, str | None]:
        table = self.table
        if table is None:
            return None, None
        try:
            sym = table.symbolize(pc)
        except KvmcoreError:
            return None, None
        if sym is None:
            return None, None
        if isinstance(sym, str):
            text, module = sym, None
            if text.endswith("]") and " [" in text:
                text, _, module = text[:-1].rpartition(" [")
            if text.startswith("0x"):  # the table's "no symbol holds it"
                return None, module
            if _past_end(text):
                return None, module
            return text or None, module
        if isinstance(sym, tuple):
            sym = dict(zip(("name", "offset", "size", "module"), sym))
        get = sym.get if isinstance(sym, dict) else (lambda k, d=None: getattr(sym, k, d))
        name = get("name")
        if not name:
            return None, None
        offset, size = get("offset"), get("size")
        if offset is None:
            start = _as_address(get("address"))
            offset = pc - start if start is not None else None
        if offset is not None and size and offset >= size:
            return None, None  # past the symbol's end: no symbol holds pc
        text = name
        if offset is not None:
            text += f"+{offset:#x}"
            if size:
                text += f"/{size:#x}"
        module = get("module")
        return text, module if isinstance(module, str) and module else None

    def describe_return(self, pc: int) -> tuple[str | None, str | None]:
        """Like describe, for a return address: named after the call it
        follows (pc - 1), so a call at the very end of a function (to a
        noreturn one) is not credited to the next function."""
        text, module = self.describe(pc - 1)
        if text and "+" in text:
            name, _, rest = text.partition("+")
            off, slash, size = rest.partition("/")
            with contextlib.suppress(ValueError):
                text = f"{name}+{int(off, 16) + 1:#x}{slash}{size}"
        return text, module

    def function_start(self, pc: int) -> int | None:
        """Address of the start of the function holding `pc`, or None."""
        text, _ = self.describe(pc)
        if not text or "+" not in text:
            return None
        try:
            return pc - int(text.split("+", 1)[1].split("/", 1)[0], 16)
        except ValueError:
            return None

    def function_bounds(self, pc: int) -> tuple[int, int] | None:
        """[start, end) of the function holding `pc`, when its symbol has a size."""
        text, _ = self.describe(pc)
        if not text or "+" not in text or "/" not in text:
            return None
        try:
            off, size = (int(x, 16) for x in text.split("+", 1)[1].split("/", 1))
        except ValueError:
            return None
        return (pc - off, pc - off + size) if size > off else None

    def function_name(self, pc: int) -> str | None:
        """The bare function name at `pc` (no offset), or None."""
        text, _ = self.describe(pc)
        return text.split("+", 1)[0] if text else None
