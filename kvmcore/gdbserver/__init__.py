"""A read-only GDB Remote Serial Protocol server for crash dumps.

A stock gdb attaches with `target remote` and debugs the dump at source
level: tasks are threads, memory reads come from the dump, and anything that
would write or run gets an error reply. `serve()` runs it; the CLI's
`kvmcore serve` is a thin wrapper.
"""

from __future__ import annotations

from .server import TcpServer, gdb_command_line, serve
from .session import Session
from .target import DumpTarget

__all__ = ["serve", "gdb_command_line", "DumpTarget", "Session", "TcpServer"]
