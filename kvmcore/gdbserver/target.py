"""What a dump offers to gdb, shared by every connection: the target
description, threads, memory reads, modules, KASLR offsets, monitor text.

Everything here only reads; one lock serialises access to the dump because
the kernel model's caches are not built for concurrent use.
"""

from __future__ import annotations

import threading
from functools import cached_property
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from .. import commands
from ..errors import AddressError, KvmcoreError
from .tdesc import RegisterCodec, target_xml
from .threads import GdbThread, ThreadList


class DumpTarget:
    """The read-only gdb view of one open Dump."""

    def __init__(self, dump: Any) -> None:
        self.dump = dump
        self.arch = dump.arch
        self.lock = threading.RLock()
        self.codec = RegisterCodec(self.arch)
        self.mask = (1 << (self.arch.word_size * 8)) - 1
        self._threads: ThreadList | None = None

    # -- static documents ------------------------------------------------
    @cached_property
    def target_xml(self) -> bytes:
        return target_xml(self.arch).encode()

    @property
    def threads(self) -> ThreadList:
        with self.lock:  # the first caller builds it; others wait on the lock
            if self._threads is None:
                self._threads = ThreadList.from_dump(self.dump)
            return self._threads

    def warm_up(self) -> threading.Thread:
        """Build the thread list (the kernel model, seconds with a DWARF
        vmlinux) in the background, so that gdb's first packets are answered
        within its remotetimeout."""
        t = threading.Thread(target=lambda: self.threads, name="kvmcore warm-up", daemon=True)
        t.start()
        return t

    def threads_xml(self) -> bytes:
        out = ['<?xml version="1.0"?>', "<threads>"]
        for t in self.threads.threads:
            if t.cpu is not None:
                with self.lock:
                    t.registers()  # finds the module frames named in the extra text
            core = f' core="{t.cpu}"' if t.cpu is not None else ""
            out.append(
                f'<thread id="{t.tid:x}"{core} name={quoteattr(t.name)}>{escape(t.extra)}</thread>'
            )
        out.append("</threads>")
        return ("\n".join(out) + "\n").encode()

    @cached_property
    def kernel_offset(self) -> int:
        return self.dump.kernel_offset

    @cached_property
    def modules(self) -> list[Any]:
        with self.lock:
            try:
                return list(self.dump.kernel.modules())
            except (KvmcoreError, NotImplementedError):
                return []

    @cached_property
    def unwind_library(self) -> tuple[str, int] | None:
        """(file, .text address) of the unwind rows gdb lacks, or None."""
        from .unwindlib import unwind_library

        with self.lock:
            try:
                return unwind_library(self.dump)
            except (KvmcoreError, OSError):
                return None

    def libraries_xml(self) -> bytes:
        """Modules as gdb's target library list: one <section> per allocated
        section in the kernel's order (the .ko's order of non-empty SHF_ALLOC
        sections), falling back to the module base as its .text."""
        out = ['<?xml version="1.0"?>', "<library-list>"]
        extra = self.unwind_library
        if extra is not None:  # the entry code's unwind rows (gdbserver.unwindlib)
            out.append(f"<library name={quoteattr(extra[0])}>")
            out.append(f'  <segment address="{extra[1]:#x}"/>')
            out.append("</library>")
        for mod in self.modules:
            sections = dict(getattr(mod, "sections", None) or {})
            if not sections:
                sections = {".text": mod.base}
            out.append(f"<library name={quoteattr(mod.name + '.ko')}>")
            for addr in sections.values():
                out.append(f'  <section address="{addr:#x}"/>')
            out.append("</library>")
        out.append("</library-list>")
        return ("\n".join(out) + "\n").encode()

    # -- registers and memory --------------------------------------------
    def registers_hex(self, thread: GdbThread) -> str:
        with self.lock:
            regs = thread.registers()
        return self.codec.encode_all(regs)

    def register_hex(self, thread: GdbThread, index: int) -> str | None:
        if not 0 <= index < len(self.codec.regs):
            return None
        with self.lock:
            regs = thread.registers()
        return self.codec.encode_one(regs, index)

    def read_memory(self, addr: int, length: int) -> bytes:
        """Up to `length` bytes at `addr`: all of them, or those before the
        first unreadable byte; b"" when the first byte is unreadable."""
        addr &= self.mask
        with self.lock:
            try:
                return self.dump.read(addr, length)
            except AddressError as exc:
                fault = exc.address & self.mask
                if not addr < fault < addr + length:
                    # the fault address may be the page's start: read the part before it
                    return self._read_prefix(addr, length)
                try:
                    return self.dump.read(addr, fault - addr)
                except KvmcoreError:
                    return self._read_prefix(addr, length)
            except KvmcoreError:
                return self._read_prefix(addr, length)

    def _read_prefix(self, addr: int, length: int) -> bytes:
        """Page by page, stopping at the first page that cannot be read."""
        parts = []
        while length > 0:
            n = min(length, 0x1000 - (addr & 0xFFF))
            try:
                parts.append(self.dump.read(addr, n))
            except KvmcoreError:
                break
            addr = (addr + n) & self.mask
            length -= n
        return b"".join(parts)

    # -- monitor ---------------------------------------------------------
    def monitor(self, line: str) -> str:
        """`monitor LINE`: `help`, or a command of kvmcore.commands.COMMANDS
        with its CLI arguments (`monitor bt 115`, `monitor bt --all`), printing
        what the CLI prints."""
        words = line.split()
        if not words or words[0] == "help":
            return monitor_help()
        name = words[0]
        if name == "modules":
            with self.lock:
                return self.monitor_modules(words[1:])
        cmd = commands.COMMANDS.get(name)
        if cmd is None:
            return f"unknown monitor command {name!r}; try `monitor help`\n"
        with self.lock:
            try:
                text = cmd.run(self.dump, **cmd.parse(words[1:]))
            except KvmcoreError as exc:
                return f"monitor {name}: {exc}\n"
            except Exception as exc:  # noqa: BLE001 - a report bug must not end the session
                return f"monitor {name}: not available ({type(exc).__name__}: {exc})\n"
        return text if text.endswith("\n") or not text else text + "\n"

    def monitor_modules(self, args: list[str]) -> str:
        """`monitor modules [DIR]`: gdb's add-symbol-file lines for the loaded
        modules with a debug file in DIR (default: the server's --module-dir)."""
        from ..unwind import use_module_dir
        from .server import module_symbol_files

        if len(args) > 1:
            return "usage: monitor modules [DIR]\n"
        try:
            if args:
                use_module_dir(self.dump, args[0])
        except KvmcoreError as exc:
            return f"monitor modules: {exc}\n"
        if not getattr(self.dump, "module_dir", None):
            return "monitor modules: no module directory (kvmcore serve --module-dir DIR)\n"
        lines = module_symbol_files(self.dump)
        if not lines:
            where = self.dump.module_dir
            return f"monitor modules: no debug file in {where} matches a loaded module\n"
        return "".join(line + "\n" for line in lines)


def monitor_help() -> str:
    """`monitor help`: every command of the table, with its arguments."""
    rows = [
        ("help", "List these commands."),
        ("modules [DIR]", "gdb add-symbol-file lines for modules' debug files in DIR."),
    ]
    rows += [(cmd.usage(), cmd.help) for cmd in commands.COMMANDS.values()]
    width = max(len(usage) for usage, _ in rows)
    return "kvmcore monitor commands (the target is a read-only crash dump):\n" + "".join(
        f"  {usage:<{width}}  {text}\n" for usage, text in rows
    )
