"""Transports: a TCP server (one thread per client, at most MAX_CLIENTS at a
time, each dropped after IDLE_TIMEOUT seconds of silence) and stdio (gdb's
`target remote | CMD`). Each logs one line per connection when it ends; no
client, and no failure to serve one, ends the server."""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, BinaryIO

from ..errors import HostError, KvmcoreError, UsageError
from .packets import frame
from .session import Session
from .target import DumpTarget

LOOPBACK = ("127.0.0.1", "localhost", "::1")
IDLE_TIMEOUT = 300.0  # seconds: a silent client is dropped (gdb sends nothing while idle
#                       at its prompt, so a long interactive pause needs a reconnect)
MAX_CLIENTS = 32  # connections served at once; more are refused with a message
REMOTE_TIMEOUT = 60  # seconds, for the gdb command line we print
ACCEPT_RETRY = 0.2  # seconds to wait after accept() fails for lack of resources


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
        raise UsageError(f"bad --listen {listen!r}: expected HOST:PORT") from None
    if not 0 <= number <= 65535:
        raise UsageError(f"bad --listen {listen!r}: port out of range")
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


def serve_connection(
    target: DumpTarget,
    conn: socket.socket,
    peer: str,
    log: Callable[[str], None],
    idle_timeout: float = IDLE_TIMEOUT,
) -> None:
    session = Session(target)
    start = time.monotonic()
    try:
        conn.settimeout(idle_timeout)
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        run_session(session, lambda: conn.recv(1 << 16), conn.sendall)
    except TimeoutError:
        session.end_reason = f"idle for {idle_timeout:g}s: dropped"
    except OSError as exc:
        session.end_reason = f"connection error: {exc.strerror or exc}"
    except Exception as exc:  # a bug must end this connection only, on one line
        session.end_reason = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        conn.close()
        log(
            f"gdb client {peer}: {session.packets} packets, {session.errors} bad, "
            f"{time.monotonic() - start:.1f}s, {session.end_reason}"
        )


def refuse(conn: socket.socket, reason: str) -> None:
    """Tell a client why it is not served (an error reply to its first packet,
    which gdb prints), then close."""
    try:
        conn.settimeout(1.0)
        conn.sendall(frame(b"E.kvmcore: " + reason.encode("ascii", "replace")))
    except OSError:
        pass
    finally:
        conn.close()


class TcpServer:
    """Accepts gdb clients on a socket; each gets its own thread and session."""

    def __init__(
        self,
        target: DumpTarget,
        host: str,
        port: int,
        log: Callable[[str], None] = _stderr,
        *,
        max_clients: int = MAX_CLIENTS,
        idle_timeout: float = IDLE_TIMEOUT,
    ) -> None:
        if max_clients < 1 or not idle_timeout > 0:
            raise UsageError(
                f"bad gdb server limits: {max_clients} clients, {idle_timeout}s idle timeout"
            )
        self.target = target
        self.log = log
        self.max_clients = max_clients
        self.idle_timeout = idle_timeout
        self._clients = 0
        self._lock = threading.Lock()
        self.refused = 0
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:  # each refusal (no IPv6, no such host, in use, privileged) is one line, exit 7
            self.sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as exc:
            raise HostError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
        try:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.sock.bind((host, port))
            self.sock.listen(64)
        except (OSError, OverflowError, UnicodeError) as exc:
            self.sock.close()
            reason = getattr(exc, "strerror", None) or str(exc)
            raise HostError(f"cannot listen on {host}:{port}: {reason}") from None
        self.address = self.sock.getsockname()[:2]
        self._stopping = False

    @property
    def clients(self) -> int:
        """Connections being served now."""
        return self._clients

    def serve_forever(self) -> None:
        while not self._stopping:
            try:
                conn, peer = self.sock.accept()
            except OSError as exc:
                if self._stopping:
                    break
                # out of descriptors or memory, a client gone before accept: wait, go on
                self.log(f"gdb server: accept failed: {exc.strerror or exc}")
                time.sleep(ACCEPT_RETRY)
                continue
            try:
                self._start(conn, f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer))
            except Exception as exc:  # never let one connection end the server
                self.log(f"gdb server: dropped a connection: {type(exc).__name__}: {exc}")
                conn.close()

    def _start(self, conn: socket.socket, name: str) -> None:
        with self._lock:
            full = self._clients >= self.max_clients
            if not full:
                self._clients += 1
        if full:
            self.refused += 1
            self.log(f"gdb client {name}: refused, {self.max_clients} connections already open")
            refuse(conn, f"too many gdb connections ({self.max_clients} open); try again later")
            return
        try:
            threading.Thread(
                target=self._serve, args=(conn, name), name=f"gdb {name}", daemon=True
            ).start()
        except RuntimeError as exc:  # "can't start new thread"
            with self._lock:
                self._clients -= 1
            self.refused += 1
            self.log(f"gdb client {name}: refused, {exc}")
            refuse(conn, f"server cannot take another connection now ({exc})")

    def _serve(self, conn: socket.socket, name: str) -> None:
        try:
            serve_connection(self.target, conn, name, self.log, self.idle_timeout)
        finally:
            with self._lock:
                self._clients -= 1

    def close(self) -> None:
        self._stopping = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
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


def serve_stdio(
    target: DumpTarget,
    log: Callable[[str], None] = _stderr,
    stdin: BinaryIO | None = None,
    stdout: BinaryIO | None = None,
) -> None:
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


def module_symbol_files(dump: Any) -> list[str]:
    """gdb's `add-symbol-file FILE -s .text ADDR -s .data ADDR ...` for the
    loaded modules whose debug files the dump's module directory holds
    (kvmcore.unwind.modlines); [] without one."""
    from ..unwind.modlines import module_lines

    try:
        lines = module_lines(dump)
    except KvmcoreError:
        return []
    return lines.gdb_commands() if lines is not None else []


def gdb_command_line(
    dump: Any,
    listen: str = "127.0.0.1:1234",
    stdio: bool = False,
    serve_command: str = "kvmcore serve",
) -> str:
    """The gdb invocation that attaches to this server (or starts it, with stdio)."""
    # building the task list can take seconds: more than gdb's 2 s default
    parts = [_gdb_binary(dump), "-ex", _quote(f"set remotetimeout {REMOTE_TIMEOUT}")]
    if dump.vmlinux:
        # qOffsets relocates only .text/.data/.bss of an ET_EXEC vmlinux (gdb
        # maps Text=/Data= to those sections when the file has more than two
        # segments); .rodata, .data..read_mostly etc. need the whole-file offset
        offset = dump.kernel_offset
        if offset:
            # the exec file makes gdb read the server's library list on connect
            parts += ["-ex", _quote(f"exec-file {_quote(dump.vmlinux)}")]
            parts += ["-ex", _quote(f"symbol-file -o {offset:#x} {_quote(dump.vmlinux)}")]
        else:
            parts.append(_quote(dump.vmlinux))
    adds = module_symbol_files(dump)
    if adds:
        # add-symbol-file asks to confirm each file at gdb's prompt
        parts += ["-ex", _quote("set confirm off")]
        for line in adds:
            parts += ["-ex", _quote(line)]
        parts += ["-ex", _quote("set confirm on")]
    if stdio:
        cmd = f"{serve_command} --stdio {_quote(dump.path)}"
        if dump.vmlinux:
            cmd += f" {_quote(dump.vmlinux)}"
        if getattr(dump, "module_dir", None):
            cmd += f" --module-dir {_quote(dump.module_dir)}"
        parts += ["-ex", _quote(f"target remote | {cmd}")]
    else:
        host, port = parse_listen(listen)
        if host in ("0.0.0.0", "::", ""):
            host = "127.0.0.1"
        parts += ["-ex", _quote(f"target remote {host}:{port}")]
    return " ".join(parts)


def serve(
    dump: Any,
    listen: str = "127.0.0.1:1234",
    stdio: bool = False,
    log: Callable[[str], None] = _stderr,
    ready: Callable[[TcpServer], None] | None = None,
    *,
    max_clients: int = MAX_CLIENTS,
    idle_timeout: float = IDLE_TIMEOUT,
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
    server = TcpServer(target, host, port, log, max_clients=max_clients, idle_timeout=idle_timeout)
    warm.join()
    bound = f"{server.address[0]}:{server.address[1]}"
    if host not in LOOPBACK:
        log(
            f"WARNING: listening on {bound}, not loopback: anyone who can reach this address "
            "can read the whole dump, including any secrets in memory"
        )
    log(f"kvmcore gdbserver: serving {dump.path} read-only on {bound}")
    log("attach with: " + gdb_command_line(dump, bound))
    adds = module_symbol_files(dump)
    if adds:
        log(f"module debug files for gdb ({len(adds)}; also `monitor modules`):")
        for line in adds:
            log("  " + line)
    elif getattr(dump, "module_dir", None):
        log(f"no debug file in {dump.module_dir} matches a loaded module")
    if not dump.vmlinux:
        log(
            "no vmlinux given: for function names, write a symbol file with "
            f"`kvmcore symfile {_quote(dump.path)} -o vmlinux.sym` and pass it to gdb"
        )
    if ready:
        ready(server)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
