"""One gdb connection: the packet dispatcher and its per-connection state.

`Session.feed(bytes)` returns the bytes to send back, so the same code runs
over TCP and over stdio. A session ends on `D`, `k` or end of input; the
server goes on serving other connections.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ..errors import KvmcoreError
from .packets import PACKET_SIZE, Event, PacketReader, escape_binary, frame
from .target import DumpTarget
from .threads import GdbThread

READ_ONLY = b"E.kvmcore: the target is a crash dump and is read-only"
CANNOT_RUN = b"E.kvmcore: the target is a crash dump and cannot run or step"
MAX_RETRANSMITS = 8
_ADDR_LEN = re.compile(rb"([0-9a-fA-F]{1,16}),([0-9a-fA-F]{1,8})")
_STOP_SIGNAL = 5  # SIGTRAP, as kgdb reports a stopped kernel


def _ascii(text: str) -> bytes:
    """One line of printable ASCII, escaped for a packet (E.message replies)."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text)[:200]
    return escape_binary(clean.encode("ascii"))


class Session:
    """Protocol state of one client."""

    def __init__(self, target: DumpTarget) -> None:
        self.target = target
        self.reader = PacketReader()
        self.ack = True
        self.closed = False
        self.packets = 0
        self.errors = 0
        self.end_reason = "client went away"
        self._last: bytes = b""
        self._retransmits = 0
        self._g_tid = 0  # 0: the current (panicking) thread
        self.client_features: set[str] = set()
        self._handlers: dict[bytes, Callable[[bytes], bytes | list[bytes] | None]] = {
            b"?": self._stop_reason,
            b"g": self._read_registers,
            b"p": self._read_register,
            b"m": self._read_memory_hex,
            b"x": self._read_memory_binary,
            b"H": self._set_thread,
            b"T": self._thread_alive,
            b"q": self._query,
            b"Q": self._set_query,
            b"v": self._v_packet,
            b"D": self._detach,
            b"k": self._kill,
            b"M": self._refuse_write,
            b"X": self._refuse_write,
            b"G": self._refuse_write,
            b"P": self._refuse_write,
            b"Z": self._refuse_write,
            b"z": self._refuse_write,
            b"c": self._refuse_run,
            b"C": self._refuse_run,
            b"s": self._refuse_run,
            b"S": self._refuse_run,
            b"R": self._refuse_run,
            b"!": self._empty,
        }

    # -- framing ---------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        out = bytearray()
        for ev in self.reader.feed(data):
            if self.closed:
                break
            out += self._event(ev)
        return bytes(out)

    def _event(self, ev: Event) -> bytes:
        if ev.kind == "packet":
            self.packets += 1
            ack = b"+" if self.ack else b""  # before dispatch: QStartNoAckMode is acked
            reply = self._dispatch(ev.data)
            if reply is None:  # `k`: no reply, the session ends
                return ack
            if isinstance(reply, list):  # console output packets, then the reply
                early = b"".join(frame(r) for r in reply[:-1])
                reply = reply[-1]
            else:
                early = b""
            self._last = frame(reply)
            self._retransmits = 0
            return ack + early + self._last
        if ev.kind == "bad-checksum":
            self.errors += 1
            return b"-" if self.ack else b""
        if ev.kind == "oversized":
            self.errors += 1
            return (b"-" if self.ack else b"") + frame(b"E.kvmcore: packet too large")
        if ev.kind == "nak" and self.ack and self._last and self._retransmits < MAX_RETRANSMITS:
            self._retransmits += 1
            return self._last
        return b""  # acks, interrupts (the target never runs)

    def _dispatch(self, pkt: bytes) -> bytes | list[bytes] | None:
        handler = self._handlers.get(pkt[:1])
        if handler is None:
            return b""
        try:
            return handler(pkt)
        except (ValueError, IndexError, UnicodeDecodeError):
            self.errors += 1
            return b"E01"
        except KvmcoreError as exc:  # damaged dump data: this packet fails, not the session
            self.errors += 1
            return b"E.kvmcore: " + _ascii(exc.message)
        except Exception as exc:  # a bug: say so in the reply, keep serving
            self.errors += 1
            return b"E.kvmcore: internal error: " + _ascii(f"{type(exc).__name__}: {exc}")

    # -- stop state and threads --------------------------------------------
    def _thread(self, tid: int | None = None) -> GdbThread | None:
        return self.target.threads.get(self._g_tid if tid is None else tid)

    def _stop_reason(self, _pkt: bytes) -> bytes:
        tid = self.target.threads.current_tid
        return b"T%02xthread:%x;" % (_STOP_SIGNAL, tid)

    @staticmethod
    def _parse_tid(text: bytes) -> int:
        if text.startswith(b"p"):  # multiprocess form p<pid>.<tid>
            text = text.partition(b".")[2] or b"-1"
        return -1 if text == b"-1" else int(text, 16)

    def _set_thread(self, pkt: bytes) -> bytes:
        op, tid = pkt[1:2], self._parse_tid(pkt[2:])
        if tid not in (0, -1) and self._thread(tid) is None:
            return b"E02"
        if op == b"g":
            self._g_tid = 0 if tid == -1 else tid
        return b"OK"

    def _thread_alive(self, pkt: bytes) -> bytes:
        return b"OK" if self._thread(self._parse_tid(pkt[1:])) else b"E01"

    def _read_registers(self, _pkt: bytes) -> bytes:
        thread = self._thread()
        if thread is None:
            return b"E02"
        return self.target.registers_hex(thread).encode()

    def _read_register(self, pkt: bytes) -> bytes:
        thread = self._thread()
        text = self.target.register_hex(thread, int(pkt[1:], 16)) if thread else None
        return text.encode() if text is not None else b"E00"

    # -- memory ------------------------------------------------------------
    def _addr_len(self, pkt: bytes) -> tuple[int, int]:
        m = _ADDR_LEN.fullmatch(pkt[1:])
        if not m:
            raise ValueError("malformed address,length")
        return int(m[1], 16), min(int(m[2], 16), PACKET_SIZE // 2 - 16)

    def _read_memory_hex(self, pkt: bytes) -> bytes:
        addr, length = self._addr_len(pkt)
        data = self.target.read_memory(addr, length) if length else b""
        if length and not data:
            return b"E14"  # EFAULT: gdb says "Cannot access memory at address"
        return data.hex().encode()

    def _read_memory_binary(self, pkt: bytes) -> bytes:
        addr, length = self._addr_len(pkt)
        data = self.target.read_memory(addr, length) if length else b""
        if length and not data:
            return b"E14"
        return b"b" + escape_binary(data)

    # -- refusals ------------------------------------------------------------
    def _refuse_write(self, _pkt: bytes) -> bytes:
        return READ_ONLY

    def _refuse_run(self, _pkt: bytes) -> bytes:
        return CANNOT_RUN

    def _empty(self, _pkt: bytes) -> bytes:
        return b""

    def _detach(self, _pkt: bytes) -> bytes:
        self.closed, self.end_reason = True, "detached"
        return b"OK"

    def _kill(self, _pkt: bytes) -> None:
        self.closed, self.end_reason = True, "killed (k)"
        return None

    # -- v packets -------------------------------------------------------------
    def _v_packet(self, pkt: bytes) -> bytes:
        if pkt == b"vMustReplyEmpty" or pkt == b"vCont?":
            return b""  # no vCont: gdb falls back to c/s, refused below
        if pkt.startswith((b"vCont;", b"vRun", b"vAttach", b"vStopped")):
            return CANNOT_RUN
        if pkt.startswith(b"vKill"):
            self.closed, self.end_reason = True, "killed (vKill)"
            return b"OK"
        if pkt.startswith((b"vFlashWrite", b"vFlashErase", b"vFile:open")):
            return READ_ONLY if not pkt.startswith(b"vFile") else b""
        return b""

    # -- queries ---------------------------------------------------------------
    def _query(self, pkt: bytes) -> bytes | list[bytes]:
        name, _, args = pkt.partition(b":")
        if name == b"qSupported":
            self.client_features = {f.decode("ascii", "replace") for f in args.split(b";") if f}
            return (
                b"PacketSize=%x;QStartNoAckMode+;qXfer:features:read+;"
                b"qXfer:threads:read+;qXfer:libraries:read+;binary-upload+;"
                b"multiprocess-;vContSupported-;swbreak-;hwbreak-" % PACKET_SIZE
            )
        if name == b"qXfer":
            return self._xfer(args)
        if pkt == b"qfThreadInfo":
            return b"m" + b",".join(b"%x" % t.tid for t in self.target.threads.threads)
        if pkt == b"qsThreadInfo":
            return b"l"
        if pkt == b"qC":
            return b"QC%x" % self.target.threads.current_tid
        if pkt.startswith(b"qThreadExtraInfo,"):
            thread = self._thread(self._parse_tid(pkt[17:]))
            return thread.extra.encode().hex().encode() if thread else b"E01"
        if pkt.startswith(b"qAttached"):
            return b"1"
        if pkt == b"qOffsets":
            off = self.target.kernel_offset
            return b"Text=%x;Data=%x;Bss=%x" % (off, off, off)
        if pkt.startswith(b"qRcmd,"):
            return self._monitor(pkt[6:])
        if pkt.startswith(b"qSymbol"):
            return b"OK"
        return b""

    def _set_query(self, pkt: bytes) -> bytes:
        if pkt == b"QStartNoAckMode":
            # _event computed this packet's ack before the switch
            self.ack = False
            return b"OK"
        return b""

    def _xfer(self, args: bytes) -> bytes:
        parts = args.split(b":")
        if len(parts) != 4:
            return b"E00"
        obj, op, annex, span = parts
        if op != b"read":
            return READ_ONLY
        if obj == b"features" and annex == b"target.xml":
            doc = self.target.target_xml
        elif obj == b"threads" and not annex:
            doc = self.target.threads_xml()
        elif obj == b"libraries" and not annex:
            doc = self.target.libraries_xml()
        else:
            return b"E00"
        off_text, _, len_text = span.partition(b",")
        offset, length = int(off_text, 16), min(int(len_text, 16), PACKET_SIZE // 2)
        chunk = doc[offset : offset + length]
        more = offset + length < len(doc)
        return (b"m" if more else b"l") + escape_binary(chunk)

    def _monitor(self, hexcmd: bytes) -> list[bytes]:
        """Output as `O` console packets (gdb prints each as it comes), then OK."""
        line = bytes.fromhex(hexcmd.decode("ascii")).decode("utf-8", "replace")
        text = self.target.monitor(line).encode("utf-8", "replace")
        step = PACKET_SIZE // 4
        return [b"O" + text[i : i + step].hex().encode() for i in range(0, len(text), step)] + [
            b"OK"
        ]
