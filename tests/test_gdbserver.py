"""The gdb remote server, driven by a real gdb (Debian's gdb for x86_64,
gdb-multiarch for arm64) against the real sample dumps, plus raw-socket
protocol tests (garbage, checksums, noise, concurrency)."""

from __future__ import annotations

import hashlib
import random
import re
import socket
import subprocess
import sys
import threading

import pytest
from oracles import gdb_binary, gdb_static_value

import kvmcore
from kvmcore.gdbserver import gdb_command_line, serve
from kvmcore.gdbserver.packets import PacketReader, checksum, frame

PY = sys.executable


def initial_jiffies(arch: str, vmlinux) -> int:
    """jiffies as the vmlinux initialises it (INITIAL_JIFFIES, -300*HZ as an unsigned
    int: depends on the build's HZ), read from the file by gdb, no dump involved."""
    return gdb_static_value(arch, vmlinux, "jiffies")


def current_thread(s) -> bytes:
    """qC's reply: gdb's thread ids are pids (kvmcore/gdbserver/threads.py), and the
    current thread is the panicking task the manifest names."""
    return b"QC%x" % s.manifest["panic"]["pid"]


def run_gdb(
    arch: str, vmlinux, dump_path, commands: list[str], serve_vmlinux=None, timeout: int = 300
) -> str:
    server = f"{PY} -m kvmcore.gdbserver --stdio {dump_path}"
    if serve_vmlinux:
        server += f" {serve_vmlinux}"
    args = [
        gdb_binary(arch),
        "-nx",
        "-batch",
        "-ex",
        "set width 0",
        "-ex",
        "set height 0",
        "-ex",
        "set remotetimeout 60",  # as gdb_command_line() prints it
        "-ex",
        f"target remote | {server}",
    ]
    for c in commands:
        args += ["-ex", c]
    args.append(str(vmlinux))
    p = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return p.stdout + p.stderr


def sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------ real gdb, x86_64


@pytest.fixture(scope="module")
def x86(samples):
    s = samples.get_built("x86_64-kaslr")
    vmlinux = samples.vmlinux("x86_64-kaslr")
    path = s.file("elf")
    out = run_gdb(
        "x86_64",
        vmlinux,
        path,
        [
            "info threads",
            "bt 8",
            "p init_uts_ns.name.release",
            "p jiffies",
            "p/x &init_uts_ns",
            "echo ==X8==\\n",
            "x/8gx &init_uts_ns",
            "echo ==END==\\n",
            "set var jiffies = 0",
            "break panic",
            "continue",
            "monitor ps",
            "echo ==PSEND==\\n",
        ],
    )
    return s, vmlinux, path, out


def test_gdb_threads_are_tasks(x86):
    s, _, path, out = x86
    with kvmcore.open(str(path)) as dump:
        ntasks = len(dump.kernel.tasks())
    rows = re.findall(r"^[ *] +\d+ +Thread ", out, re.M)
    assert len(rows) == ntasks, out[-3000:]
    # ground truth from the manifest: every process is a thread named "pid comm"
    for p in s.manifest["processes"]:
        assert f'"{p["pid"]} {p["comm"]}"' in out, p


def test_gdb_current_thread_is_panic_task(x86):
    s, _, _, out = x86
    panic = s.manifest["panic"]
    current = re.search(r"^\* +\d+ +Thread (\d+) \"([^\"]+)\"", out, re.M)
    assert current, out[-3000:]
    assert current[2] == f"{panic['pid']} {panic['comm']}"


def test_gdb_bt_of_panic_task(x86):
    out = x86[3]
    funcs = re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+)", out, re.M)
    assert "sysrq_handle_crash" in funcs, out[-3000:]
    i = funcs.index("sysrq_handle_crash")
    assert funcs[i + 1] == "__handle_sysrq", funcs
    assert "panic" in funcs[:i]


def test_gdb_kaslr_symbols_line_up(x86):
    s, vmlinux, _, out = x86
    assert s.manifest["kaslr"]
    assert f'"{s.manifest["kernel_release"]}"' in out
    jiffies = re.search(r"^\$2 = (\d+)$", out, re.M)
    assert jiffies, out[-3000:]
    assert int(jiffies[1]) != initial_jiffies("x86_64", vmlinux)


def test_gdb_memory_matches_dump(x86):
    _, _, path, out = x86
    addr = int(re.search(r"^\$3 = (0x[0-9a-f]+)", out, re.M)[1], 16)
    block = out.split("==X8==")[1].split("==END==")[0]
    words = [int(w, 16) for w in re.findall(r"\t(0x[0-9a-f]{16})", block)]
    assert len(words) == 8, block
    with kvmcore.open(str(path)) as dump:
        raw = dump.read(addr, 64)
    assert words == [int.from_bytes(raw[i : i + 8], "little") for i in range(0, 64, 8)]
    assert raw.startswith(b"Linux\0")  # independent fact: utsname.sysname


def test_gdb_writes_refused(x86):
    s, _, path, out = x86
    assert "Cannot access memory at address" in out
    assert "Cannot insert breakpoint 1" in out
    assert sha256(path) == s.manifest["files"]["elf"]["sha256"]


def test_gdb_monitor_ps(x86):
    _, _, path, out = x86
    from kvmcore.commands import COMMANDS

    with kvmcore.open(str(path)) as dump:
        want = COMMANDS["ps"].run(dump)
    got = out.split("Command aborted.\n", 1)[-1].split("==PSEND==")[0]
    assert want.strip() in got, got[:2000]


def test_gdb_monitor_dmesg(samples):
    s = samples.get_built("x86_64-kaslr")
    path = s.file("elf")
    out = run_gdb("x86_64", samples.vmlinux("x86_64-kaslr"), path, ["monitor dmesg"])
    from kvmcore.commands import COMMANDS

    with kvmcore.open(str(path)) as dump:
        want = COMMANDS["dmesg"].run(dump)
    assert s.manifest["marker"] in out
    assert want.strip() in out


# ------------------------------------------------------------ real gdb, arm64


def test_gdb_arm64_kaslr(samples):
    s = samples.get_built("arm64-kaslr")
    vmlinux = samples.vmlinux("arm64-kaslr")
    out = run_gdb(
        "aarch64",
        vmlinux,
        s.file("elf"),
        ["info threads", "p init_uts_ns.name.release", "p jiffies", "p $pc"],
        serve_vmlinux=vmlinux,
    )
    assert f'"{s.manifest["kernel_release"]}"' in out, out[-3000:]
    jiffies = re.search(r"^\$2 = (\d+)$", out, re.M)
    assert jiffies and int(jiffies[1]) != initial_jiffies("aarch64", vmlinux), out[-3000:]
    panic = s.manifest["panic"]
    assert re.search(rf'^\* +\d+ +Thread \d+ "{panic["pid"]} {panic["comm"]}"', out, re.M), out[
        -3000:
    ]
    with kvmcore.open(str(s.file("elf")), str(vmlinux)) as dump:
        ntasks = len(dump.kernel.tasks())
    assert len(re.findall(r"^[ *] +\d+ +Thread ", out, re.M)) == ntasks


# ------------------------------------------------------------ TCP server, raw protocol


@pytest.fixture(scope="module")
def tcp_server(samples):
    s = samples.get_built("x86_64-kaslr")
    dump = kvmcore.open(str(s.file("elf")))
    lines: list[str] = []
    box = {}
    ready = threading.Event()

    def on_ready(server):
        box["server"] = server
        ready.set()

    t = threading.Thread(
        target=serve,
        args=(dump, "127.0.0.1:0"),
        kwargs={"log": lines.append, "ready": on_ready},
        daemon=True,
    )
    t.start()
    assert ready.wait(30)
    yield box["server"], dump, lines, s
    box["server"].close()


def connect(server) -> socket.socket:
    sock = socket.create_connection(server.address, timeout=30)
    return sock


def exchange(sock: socket.socket, payload: bytes | None, ack: bool = True) -> bytes:
    """Send one packet (None: none) and return the body of the next reply
    (acks and console output consumed)."""
    if payload is not None:
        sock.sendall(frame(payload))
    reader = PacketReader(1 << 22)
    while True:
        data = sock.recv(1 << 16)
        assert data, "server closed the connection"
        for ev in reader.feed(data):
            if ev.kind == "packet":
                if ack:
                    sock.sendall(b"+")
                if ev.data.startswith(b"O") and ev.data != b"OK":
                    continue
                return ev.data


def test_listen_is_loopback_and_logged(tcp_server):
    server, dump, lines, _ = tcp_server
    assert server.address[0] == "127.0.0.1"
    assert any("read-only on 127.0.0.1:" in line for line in lines)
    assert "target remote 127.0.0.1:" in gdb_command_line(dump, f"127.0.0.1:{server.address[1]}")


def test_bad_checksum_gets_nak(tcp_server):
    sock = connect(tcp_server[0])
    sock.sendall(b"$qC#00")
    assert sock.recv(1) == b"-"
    assert exchange(sock, b"qC") == current_thread(tcp_server[3])
    sock.close()


def test_garbage_truncated_and_oversized(tcp_server):
    server, current = tcp_server[0], current_thread(tcp_server[3])
    sock = connect(server)
    sock.sendall(b"hello\x00\xffgarbage$m1234")  # truncated packet, then a real one
    assert exchange(sock, b"qAttached") == b"1"
    assert exchange(sock, b"mzz,4") == b"E01"  # malformed
    assert exchange(sock, b"m0,4") == b"E14"  # not mapped
    big = b"$" + b"q" * (1 << 20)
    sock.sendall(big + b"#00")
    assert exchange(sock, None) == b"E.kvmcore: packet too large"
    assert exchange(sock, b"qC") == current
    sock.close()
    sock = connect(server)
    sock.sendall(b"$qSupported:multipr")  # disconnect mid-packet
    sock.close()
    sock = connect(server)
    assert exchange(sock, b"qC") == current
    sock.close()


def test_noise_then_real_gdb(tcp_server, samples):
    server, dump, lines, s = tcp_server
    rnd = random.Random(6)
    sock = connect(server)
    noise = bytes(rnd.getrandbits(8) for _ in range(1 << 20))
    try:
        sock.sendall(noise)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):
            pass
    except OSError:
        pass  # the server may end the session on a lucky `k`
    sock.close()
    vmlinux = samples.vmlinux("x86_64-kaslr")
    p = subprocess.run(
        [
            gdb_binary("x86_64"),
            "-nx",
            "-batch",
            "-ex",
            f"target remote {server.address[0]}:{server.address[1]}",
            "-ex",
            "p init_uts_ns.name.release",
            str(vmlinux),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert f'"{s.manifest["kernel_release"]}"' in p.stdout, p.stdout + p.stderr


def test_concurrent_clients_read_memory(tcp_server):
    server, dump, _, _ = tcp_server
    addr = dump.vmcoreinfo.symbol("init_uts_ns")
    want = dump.read(addr, 4096)
    errors: list[str] = []

    def client(n: int) -> None:
        try:
            sock = connect(server)
            assert exchange(sock, b"QStartNoAckMode") == b"OK"
            for _ in range(20):
                assert bytes.fromhex(exchange(sock, b"m%x,1000" % addr, ack=False).decode()) == want
                reply = exchange(sock, b"x%x,1000" % addr, ack=False)
                assert reply[:1] == b"b"
            sock.close()
        except Exception as exc:  # noqa: BLE001
            errors.append(f"client {n}: {exc!r}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors, errors


def test_write_and_run_packets_refused(tcp_server):
    sock = connect(tcp_server[0])
    for pkt in (
        b"M1000,1:00",
        b"Gaabb",
        b"P0=00",
        b"Z0,ffffffff81000000,1",
        b"c",
        b"s",
        b"vCont;c",
        b"vRun;",
    ):
        reply = exchange(sock, pkt)
        assert reply.startswith(b"E"), (pkt, reply)
        assert b"crash dump" in reply
    sock.close()


def test_target_xml_for_x86_64(tcp_server):
    sock = connect(tcp_server[0])
    xml = exchange(sock, b"qXfer:features:read:target.xml:0,ffff")
    assert xml.startswith(b"l")
    for feature in (b"org.gnu.gdb.i386.core", b"org.gnu.gdb.i386.sse"):
        assert feature in xml
    assert b"<architecture>i386:x86-64</architecture>" in xml
    sock.close()


@pytest.mark.fast
def test_checksum_and_frame():
    assert frame(b"OK") == b"$OK#9a"  # the example in gdb's protocol documentation
    assert checksum(b"") == 0
