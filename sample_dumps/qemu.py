"""Run a QEMU guest until it panics, then dump its memory over QMP (plain socket)."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

from .util import log


class QMPError(RuntimeError):
    pass


class QMP:
    """Minimal QMP client over a unix socket: commands and event collection."""

    def __init__(self, path: Path, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                self.sock.connect(str(path))
                break
            except OSError as exc:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise QMPError(f"cannot connect to QMP socket {path}: {exc}") from None
                time.sleep(0.05)
        self.buf = b""
        self.events: list[dict] = []
        self.greeting = self._read(timeout)
        self.command("qmp_capabilities")

    def _read(self, timeout: float | None) -> dict | None:
        """One JSON message, or None on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not chunk:
                raise QMPError("QMP connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def command(self, name: str, timeout: float = 300.0, **args) -> object:
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        deadline = time.monotonic() + timeout
        while True:
            resp = self._read(max(0.0, deadline - time.monotonic()))
            if resp is None:
                raise QMPError(f"QMP {name}: no reply within {timeout}s")
            if "event" in resp:
                self.events.append(resp)
                continue
            if "error" in resp:
                raise QMPError(f"QMP {name}: {resp['error']}")
            return resp.get("return")

    def poll_event(self, timeout: float) -> dict | None:
        if self.events:
            return self.events.pop(0)
        msg = self._read(timeout)
        if msg is not None and "event" not in msg:
            return None
        return msg

    def close(self) -> None:
        self.sock.close()


def serial_tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no serial log)"


def run_and_dump(
    cmd: list[str],
    *,
    workdir: Path,
    serial: Path,
    panic_wait: str,
    dumps: dict[str, Path],
    timeout: float = 120.0,
    serial_pattern: str = "end Kernel panic",
) -> dict:
    """Start QEMU (cmd without -serial/-qmp), wait for the guest panic, `stop`, run
    dump-guest-memory for each {format: path}, `quit`.  Returns timing + version info."""
    sock = workdir / "qmp.sock"
    for p in [sock, serial, *dumps.values()]:
        p.unlink(missing_ok=True)
    full = cmd + [
        "-serial",
        f"file:{serial}",
        "-qmp",
        f"unix:{sock},server=on,wait=off",
        "-display",
        "none",
        "-monitor",
        "none",
        "-no-reboot",
    ]
    log(" ".join(full))
    t0 = time.monotonic()
    proc = subprocess.Popen(
        full, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    qmp = None
    try:
        qmp = QMP(sock)
        version = qmp.greeting["QMP"]["version"]
        deadline = t0 + timeout
        panicked = None
        while panicked is None:
            if proc.poll() is not None:
                out = proc.stdout.read().decode(errors="replace")
                raise RuntimeError(
                    f"QEMU exited ({proc.returncode}) before the guest panicked\n{out}\n"
                    f"--- serial tail ({serial}) ---\n{serial_tail(serial)}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"guest did not panic within {timeout}s\n"
                    f"--- serial tail ({serial}) ---\n{serial_tail(serial)}"
                )
            if panic_wait in ("pvpanic", "guest-panicked"):  # QMP GUEST_PANICKED
                ev = qmp.poll_event(0.5)
                if ev and ev.get("event") == "GUEST_PANICKED":
                    panicked = "GUEST_PANICKED"
            else:
                time.sleep(0.3)
                if serial.exists() and serial_pattern in serial.read_text(errors="replace"):
                    time.sleep(0.5)  # let the panic cpu settle in its final loop
                    panicked = f"serial:{serial_pattern}"
        t_panic = time.monotonic() - t0
        log(f"guest panicked after {t_panic:.1f}s ({panicked}); stopping")
        qmp.command("stop")
        dump_secs = {}
        for fmt, path in dumps.items():
            t1 = time.monotonic()
            # "elf-paging": QEMU walks the guest page tables and writes one PT_LOAD per
            # virtual mapping (p_vaddr virtual, p_paddr physical), often PN_XNUM of them
            paging = fmt == "elf-paging"
            qmp.command(
                "dump-guest-memory",
                paging=paging,
                protocol=f"file:{path}",
                format="elf" if paging else fmt,
            )
            dump_secs[fmt] = round(time.monotonic() - t1, 2)
            _dig_holes(path)
            log(
                f"dump-guest-memory {fmt} -> {path.name} "
                f"({path.stat().st_size} bytes, {dump_secs[fmt]}s)"
            )
        with contextlib.suppress(QMPError):
            qmp.command("quit", timeout=10)
        proc.wait(timeout=30)
        return {
            "qemu_version": "{major}.{minor}.{micro}".format(**version["qemu"]),
            "qemu_package": version.get("package", "").strip(),
            "panic_seconds": round(t_panic, 1),
            "panic_event": panicked,
            "dump_seconds": dump_secs,
        }
    finally:
        if qmp:
            qmp.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.unlink(missing_ok=True)


def run_until_exit(
    cmd: list[str],
    *,
    serial: Path,
    timeout: float = 180.0,
    fail_patterns: tuple[str, ...] = (),
    done_pattern: str | None = None,
    done_grace: float = 20.0,
    tail_lines: int = 40,
) -> float:
    """Run QEMU until it exits by itself (guest poweroff); for the real-kdump cycle.
    Any of fail_patterns in the serial log aborts the run (also when the guest powers
    off right after printing it). Once `done_pattern` is in the serial log the guest's
    work is done: QEMU gets `done_grace` seconds to power off, then is killed (Xen
    under TCG does not always power the machine off)."""
    full = cmd + ["-serial", f"file:{serial}", "-display", "none", "-monitor", "none", "-no-reboot"]
    serial.unlink(missing_ok=True)
    log(" ".join(full))
    t0 = time.monotonic()
    done_at = None

    def check_serial() -> None:
        text = serial.read_text(errors="replace") if serial.exists() else ""
        hit = [p for p in fail_patterns if p in text]
        if hit:
            time.sleep(2.0)  # the lines the guest prints after its failure line
            raise RuntimeError(
                f"serial log shows {hit[0]!r}\n"
                f"--- serial tail ({serial}) ---\n{serial_tail(serial, tail_lines)}"
            )
        nonlocal done_at
        if done_at is None and done_pattern is not None and done_pattern in text:
            done_at = time.monotonic()

    proc = subprocess.Popen(full, stdin=subprocess.DEVNULL)
    try:
        while proc.poll() is None:
            now = time.monotonic()
            if done_at is not None and now - done_at > done_grace:
                log(f"no poweroff {done_grace}s after {done_pattern!r}: stopping QEMU")
                break
            if now - t0 > timeout:
                raise RuntimeError(
                    f"QEMU did not power off within {timeout}s\n"
                    f"--- serial tail ({serial}) ---\n{serial_tail(serial, tail_lines)}"
                )
            check_serial()
            time.sleep(0.5)
        check_serial()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return time.monotonic() - t0


def _dig_holes(path: Path) -> None:
    """Make the runs of zeros QEMU wrote (a guest's untouched memory) holes of a
    sparse file, where the file system allows: a 16 GB guest's ELF dump then
    takes the disk its used memory does. The bytes read are the same."""
    tool = shutil.which("fallocate")
    if tool:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            subprocess.run([tool, "--dig-holes", str(path)], capture_output=True, timeout=600)
