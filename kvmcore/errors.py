"""The kvmcore exception hierarchy.

Every error the library raises on bad input is a KvmcoreError; the CLI turns
each into one line on stderr and an exit status chosen by its class (the
README's "Exit status" lists them; keep the two in step):

    2 bad input or usage   3 unsupported   4 symbols or types
    5 unreadable address   6 not found     7 host (OS) error
    8 corrupt kernel data  1 any other KvmcoreError (none is raised as such)
"""

from __future__ import annotations


class KvmcoreError(Exception):
    """Base of every kvmcore error. `path` names the file at fault, if any."""

    exit_code = 1

    #: what a bounded walk had read when it failed, where the walk attaches it
    #: (FreeBSDKernel.procs); unset otherwise, so read it with getattr
    partial: list[int]

    def __init__(self, message: str, path: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = path

    def __str__(self) -> str:
        return f"{self.path}: {self.message}" if self.path else self.message


class UsageError(KvmcoreError):
    """A bad argument: not an address, not a number, an unknown option."""

    exit_code = 2


class NotFoundError(KvmcoreError):
    """What was asked for does not exist: no task with that pid, no such file."""

    exit_code = 6


class HostError(KvmcoreError):
    """The host refused: a file that cannot be read, an address that cannot be bound."""

    exit_code = 7


class DumpFormatError(KvmcoreError):
    """The file is not a dump, or its headers are corrupt."""

    exit_code = 2


class TruncatedDumpError(DumpFormatError):
    """The file ends before data its headers promise."""


class DecompressionError(DumpFormatError):
    """A compressed page or stream failed to inflate."""


class UnsupportedError(KvmcoreError):
    """A format, architecture or feature kvmcore does not handle."""

    exit_code = 3


class ArchProbeError(UnsupportedError):
    """No architecture backend, or more than one, claims the dump."""


class AddressError(KvmcoreError):
    """An address could not be read. `address` is the address at fault."""

    exit_code = 5

    def __init__(self, message: str, address: int, path: str | None = None) -> None:
        super().__init__(message, path)
        self.address = address


class NotMappedError(AddressError):
    """A kernel virtual address has no mapping in the kernel's page tables."""


class NotInDumpError(AddressError):
    """A physical address lies outside every range the dump holds."""


class PageExcludedError(NotInDumpError):
    """The page existed but the dump filtered it out (makedumpfile -d)."""


class SymbolError(KvmcoreError):
    """A symbol, or every source of symbols, is missing."""

    exit_code = 4


class TypeInfoError(KvmcoreError):
    """A type or member is known to no type source (BTF, DWARF, helpers)."""

    exit_code = 4


class WalkError(KvmcoreError):
    """A bounded walk of kernel data (list, table, log) hit its bound or a cycle."""

    exit_code = 8
