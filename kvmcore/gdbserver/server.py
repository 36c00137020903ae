"""Transports: a TCP server (one thread per client) and stdio (gdb's
`target remote | CMD`). Each logs one line per connection when it ends."""
from __future__ import annotations

import os
import stat
import socket
import sys
import threading
import time
from typing import Any, Callable, BinaryIO

from ..errors import KvmcoreError
from .session import Session
from .target import DumpTarget

LOOPBACK = ("127.0.0.1", "localhost", "::1")
IDLE_TIMEOUT = 3600.0
REMOTE_TIMEOUT = 60  # seconds, for the gdb command line we print  # a silent client is dropped after an hour


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def parse_listen(listen: str) -> tuple[str, int]:
    host, sep, port = listen.rpartition(":")
    if not sep:
        host, port = "127.0.0.1", listen
    host = host.strip("[]") or "127.0.0.1"
    try:
        number = int(port)
    except ValueError:
        raise KvmcoreError(f"bad --listen {listen!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise KvmcoreError(f"bad --listen {listen!r}: port out of range")
    return host, number


def run_session(session: Session, recv: Callable[[], bytes], send: Callable[[bytes], None]) -> None:
    """Pump bytes through a session until the client leaves or ends it."""
    while not session.closed:
        data = recv()
        if not data:
            break
        reply = session.feed(data)
        if reply:
            send(reply)


def serve_connection(target: DumpTarget, conn: socket.socket, peer: str,
                     log: Callable[[str], None]) -> None:
    session = Session(target)
    start = time.monotonic()
    try:
        conn.settimeout(IDLE_TIMEOUT)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        run_session(session, lambda: conn.recv(1 << 16), conn.sendall)
    except OSError as exc:
        session.end_reason = f"connection error: {exc.strerror or exc}"
    finally:
        conn.close()
        log(f"gdb client {peer}: {session.packets} packets, {session.errors} bad, "
            f"{time.monotonic() - start:.1f}s, {session.end_reason}")


class TcpServer:
    """Accepts gdb clients on a socket; each gets its own thread and session."""

    def __init__(self, target: DumpTarget, host: str, port: int,
                 log: Callable[[str], None] = _stderr) -> None:
        self.target = target
        self.log = log
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self.sock.bind((host, port))
        except OSError as exc:
            self.sock.close()
            raise KvmcoreError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
        self.sock.listen(16)
        self.address = self.sock.getsockname()[:2]
        self._stopping = False

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self.sock.accept()
            except OSError:
                if self._stopping:
                    break
                raise
            name = f"{peer[0]}:{peer[1]}"
            threading.Thread(target=serve_connection, args=(self.target, conn, name, self.log),
                             name=f"gdb {name}", daemon=True).start()

    def close(self) -> None:
        self._stopping = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def release_stderr_pipe() -> None:
    """Point our stderr at /dev/null when it is a pipe or socket (gdb's
    `target remote | CMD` gives CMD a socketpair).

    gdb reads that pipe with one read(2) after every byte of protocol data it
    receives (ser-base.c generic_readchar -> ser_base_read_error_fd) until the
    pipe reaches EOF; a 64 MB `dump binary memory` arrives as 128 MB of hex, so
    gdb spent ~170 s in EAGAIN reads.  Closing the pipe's only writer gives gdb
    its EOF and it stops polling.  Messages after this point are lost; the
    session's own output goes through the protocol (monitor replies)."""
    try:
        mode = os.fstat(2).st_mode
        if not (stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)):
            return
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
    except OSError:
        pass


def serve_stdio(target: DumpTarget, log: Callable[[str], None] = _stderr,
                stdin: BinaryIO | None = None, stdout: BinaryIO | None = None) -> None:
    """One session over stdin/stdout, as `target remote | CMD` runs it."""
    fin = stdin or sys.stdin.buffer
    fout = stdout or sys.stdout.buffer
    fd = fin.fileno()
    session = Session(target)

    def send(data: bytes) -> None:
        fout.write(data)
        fout.flush()

    if stdin is None and stdout is None:
        release_stderr_pipe()
    try:
        run_session(session, lambda: os.read(fd, 1 << 16), send)
    except (BrokenPipeError, ConnectionResetError):
        session.end_reason = "gdb closed the pipe"
    log(f"gdb on stdio: {session.packets} packets, {session.errors} bad, {session.end_reason}")


def _gdb_binary(dump: Any) -> str:
    import platform

    host = platform.machine()
    host = {"amd64": "x86_64", "arm64": "aarch64"}.get(host, host)
    return "gdb" if dump.arch.name == host else "gdb-multiarch"


def _quote(text: str) -> str:
    import shlex

    return shlex.quote(text)


def gdb_command_line(dump: Any, listen: str = "127.0.0.1:1234", stdio: bool = False,
                     serve_command: str = "kvmcore serve") -> str:
    """The gdb invocation that attaches to this server (or starts it, with stdio)."""
    # building the task list can take seconds: more than gdb's 2 s default
    parts = [_gdb_binary(dump), "-ex", _quote(f"set remotetimeout {REMOTE_TIMEOUT}")]
    if dump.vmlinux:
        # qOffsets relocates only .text/.data/.bss of an ET_EXEC vmlinux (gdb
        # maps Text=/Data= to those sections when the file has more than two
        # segments); .rodata, .data..read_mostly etc. need the whole-file offset
        info = dump.vmcoreinfo
        offset = dump.kernel_offset
        if offset:
            parts += ["-ex", _quote(f"symbol-file -o {offset:#x} {_quote(dump.vmlinux)}")]
        else:
            parts.append(_quote(dump.vmlinux))
    if stdio:
        cmd = f"{serve_command} --stdio {_quote(dump.path)}"
        if dump.vmlinux:
            cmd += f" {_quote(dump.vmlinux)}"
        parts += ["-ex", _quote(f"target remote | {cmd}")]
    else:
        host, port = parse_listen(listen)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        parts += ["-ex", _quote(f"target remote {host}:{port}")]
    return " ".join(parts)


def serve(dump: Any, listen: str = "127.0.0.1:1234", stdio: bool = False,
          log: Callable[[str], None] = _stderr, ready: Callable[[TcpServer], None] | None = None
          ) -> None:
    """Serve `dump` read-only to gdb until interrupted (TCP) or the session ends (stdio).

    Binding to anything but loopback is the caller's explicit choice; the dump
    holds the machine's memory (keys, passwords), so it is said loudly."""
    target = DumpTarget(dump)
    warm = target.warm_up()
    if stdio:
        serve_stdio(target, log)
        return
    host, port = parse_listen(listen)
    server = TcpServer(target, host, port, log)
    warm.join()
    bound = f"{server.address[0]}:{server.address[1]}"
    if host not in LOOPBACK:
        log(f"WARNING: listening on {bound}, not loopback: anyone who can reach this address "
            "can read the whole dump, including any secrets in memory")
    log(f"kvmcore gdbserver: serving {dump.path} read-only on {bound}")
    log("attach with: " + gdb_command_line(dump, bound))
    if not dump.vmlinux:
        log("no vmlinux given: for function names, write a symbol file with "
            f"`kvmcore symfile {_quote(dump.path)} -o vmlinux.sym` and pass it to gdb")
    if ready:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
