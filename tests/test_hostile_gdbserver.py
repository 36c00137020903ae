"""The gdb server under many idle connections (issue 12 §4.6): at most
max_clients are served, extra ones get a one-line refusal packet and are
closed, silent clients are dropped after the idle timeout, and nothing a
connection does (or a failed thread start) ends the server. 127.0.0.1 only;
every wait is bounded."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

import kvmcore
from kvmcore.gdbserver import server as server_mod
from kvmcore.gdbserver.packets import PacketReader, frame
from kvmcore.gdbserver.server import TcpServer
from kvmcore.gdbserver.target import DumpTarget

COMMITTED = (
    Path(__file__).resolve().parent.parent
    / "sample_dumps"
    / "committed"
    / "x86_64-small"
    / "vmcore.mdf-d31-c"
)
WAIT = 20.0  # seconds: the bound of every wait below


@pytest.fixture()
def running():
    lines: list[str] = []
    servers: list[TcpServer] = []

    def start(**limits) -> TcpServer:
        target = DumpTarget(kvmcore.open(str(COMMITTED)))
        srv = TcpServer(target, "127.0.0.1", 0, lines.append, **limits)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return srv

    yield start, lines
    for srv in servers:
        srv.close()


def connect(srv: TcpServer) -> socket.socket:
    return socket.create_connection(srv.address, timeout=WAIT)


def read_until_closed(sock: socket.socket) -> bytes:
    data = b""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        chunk = sock.recv(4096)
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server did not close the connection")


def wait_for(cond, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def ask(sock: socket.socket, payload: bytes) -> bytes:
    """One packet, its reply's payload (ack mode)."""
    sock.sendall(frame(payload))
    reader, deadline = PacketReader(), time.monotonic() + WAIT
    while time.monotonic() < deadline:
        chunk = sock.recv(4096)
        assert chunk, "server closed the connection"
        for ev in reader.feed(chunk):
            if ev.kind == "packet":
                return ev.data
    raise AssertionError("no reply")


def test_connections_over_the_cap_are_refused(running):
    start, lines = running
    srv = start(max_clients=4, idle_timeout=60)
    held = [connect(srv) for _ in range(4)]
    wait_for(lambda: srv.clients == 4, "4 clients")
    extra = [connect(srv) for _ in range(6)]
    for sock in extra:
        reply = read_until_closed(sock)
        assert reply.startswith(b"$E.kvmcore: too many gdb connections (4 open)")
        sock.close()
    assert srv.refused == 6
    assert sum("refused" in line for line in lines) == 6
    # the held ones are still served
    assert ask(held[0], b"qAttached") == b"1"
    held[0].close()  # one leaves: a new client gets its place
    wait_for(lambda: srv.clients == 3, "the client to leave")
    again = connect(srv)
    assert ask(again, b"qAttached") == b"1"
    for sock in held[1:] + [again]:
        sock.close()


def test_idle_clients_are_dropped(running):
    start, lines = running
    srv = start(max_clients=2, idle_timeout=0.5)
    socks = [connect(srv) for _ in range(2)]
    for sock in socks:
        assert read_until_closed(sock) == b""  # dropped, not served forever
    wait_for(lambda: srv.clients == 0, "idle clients to be dropped")
    assert sum("idle for 0.5s" in line for line in lines) == 2
    assert ask(connect(srv), b"qAttached") == b"1"


def test_failed_thread_start_does_not_end_the_server(running, monkeypatch):
    start, lines = running
    srv = start(max_clients=8, idle_timeout=60)
    real = threading.Thread.start
    failures = [3]

    def flaky(self):
        if self.name.startswith("gdb ") and failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", flaky)
    for _ in range(3):
        sock = connect(srv)
        assert b"can't start new thread" in read_until_closed(sock)
        sock.close()
    monkeypatch.setattr(threading.Thread, "start", real)
    sock = connect(srv)
    assert ask(sock, b"qAttached") == b"1"
    assert srv.clients == 1  # the failed starts gave their places back
    sock.close()


def test_a_failing_packet_does_not_end_the_session(running, monkeypatch):
    start, lines = running
    srv = start(max_clients=2, idle_timeout=60)

    def broken(self, addr, length):
        raise ZeroDivisionError("simulated bug")

    monkeypatch.setattr(DumpTarget, "read_memory", broken)
    sock = connect(srv)
    assert ask(sock, b"m0,8").startswith(b"E.kvmcore: internal error: ZeroDivisionError")
    assert ask(sock, b"qAttached") == b"1"
    sock.close()


def test_defaults():
    assert server_mod.MAX_CLIENTS == 32 and server_mod.IDLE_TIMEOUT == 300


def test_hundreds_of_idle_connections(running):
    """The finding's shape: many idle clients; threads stay capped, the server lives."""
    start, lines = running
    srv = start()  # the defaults: 32 clients
    before = threading.active_count()
    socks = []
    try:
        for _ in range(200):
            socks.append(connect(srv))
        wait_for(lambda: srv.refused == 200 - 32, "the extra clients to be refused")
        assert srv.clients == 32
        assert threading.active_count() <= before + 32
    finally:
        for sock in socks:
            sock.close()
    wait_for(lambda: srv.clients == 0, "the clients to leave")
    assert ask(connect(srv), b"qAttached") == b"1"
