"""The gdb Remote Serial Protocol framing (kvmcore/gdbserver/packets.py), as pure
unit tests: checksums, binary escapes, run-length bytes, garbage, truncated and
oversized packets, acks. Expected values come from gdb's manual ("Overview" and
"Packets" of the Remote Protocol appendix), worked by hand, never from the code."""

from __future__ import annotations

import pytest

from kvmcore.gdbserver.packets import (
    PACKET_SIZE,
    Event,
    PacketReader,
    checksum,
    escape_binary,
    frame,
)

pytestmark = pytest.mark.fast


def unescape_binary(wire: bytes) -> bytes:
    """The decoding gdb's manual gives for binary data ("Binary Data"): '}'
    escapes the next byte, which is XORed with 0x20; a lone '}' at the end is
    dropped. Written here as the oracle of the server's escape_binary."""
    out = bytearray()
    i = 0
    while i < len(wire):
        if wire[i] == 0x7D:
            if i + 1 < len(wire):
                out.append(wire[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(wire[i])
            i += 1
    return bytes(out)


def events(*chunks: bytes, max_size: int | None = None) -> list[Event]:
    reader = PacketReader() if max_size is None else PacketReader(max_size)
    out: list[Event] = []
    for chunk in chunks:
        out += reader.feed(chunk)
    return out


def packet(body: bytes) -> Event:
    return Event("packet", body)


# ------------------------------------------------------------------ checksums


@pytest.mark.parametrize(
    "body, wire",
    [
        (b"OK", b"$OK#9a"),  # 'O' 0x4f + 'K' 0x4b
        (b"g", b"$g#67"),
        (b"?", b"$?#3f"),
        (b"qC", b"$qC#b4"),  # 0x71 + 0x43
        (b"", b"$#00"),
        (b"\xff\x02", b"$\xff\x02#01"),  # the sum is taken modulo 256
    ],
)
def test_frame_and_checksum(body, wire):
    assert frame(body) == wire
    assert checksum(body) == int(wire[-2:], 16)


def test_checksum_is_two_lowercase_hex_digits():
    assert frame(b"\x00") == b"$\x00#00"
    assert frame(b"m0,1") == b"$m0,1#%02x" % ((0x6D + 0x30 + 0x2C + 0x31) & 0xFF)
    assert frame(b"\x0a\x00")[-3:] == b"#0a"


def test_uppercase_checksum_accepted():
    assert events(b"$OK#9A") == [packet(b"OK")]


@pytest.mark.parametrize("wire", [b"$OK#9b", b"$OK#zz", b"$OK#9 ", b"$qC#00"])
def test_bad_checksum(wire):
    assert events(wire) == [Event("bad-checksum")]


def test_bad_checksum_does_not_poison_what_follows():
    assert events(b"$qC#00$qC#b4") == [Event("bad-checksum"), packet(b"qC")]


# ------------------------------------------------------------------ acks and control bytes


def test_acks_naks_and_interrupt():
    assert events(b"+-\x03+") == [Event("ack"), Event("nak"), Event("interrupt"), Event("ack")]


def test_ack_then_packet_then_ack():
    assert events(b"+$g#67+") == [Event("ack"), packet(b"g"), Event("ack")]


# ------------------------------------------------------------------ incremental input


def test_packet_fed_one_byte_at_a_time():
    wire = b"$qSupported:multiprocess+;swbreak+#" + b"%02x" % checksum(
        b"qSupported:multiprocess+;swbreak+"
    )
    got = events(*(wire[i : i + 1] for i in range(len(wire))))
    assert got == [packet(b"qSupported:multiprocess+;swbreak+")]


def test_checksum_split_across_reads_waits_for_both_digits():
    reader = PacketReader()
    assert reader.feed(b"$OK#9") == []
    assert reader.feed(b"a") == [packet(b"OK")]


def test_two_packets_in_one_read():
    assert events(b"$g#67$?#3f") == [packet(b"g"), packet(b"?")]


# ------------------------------------------------------------------ garbage


def test_noise_between_packets_is_skipped():
    assert events(b"hello\x00\xff garbage $g#67 more noise\n$?#3f") == [packet(b"g"), packet(b"?")]


def test_noise_alone_yields_nothing_and_keeps_nothing():
    reader = PacketReader()
    assert reader.feed(b"no packet here at all\x00\x01\x02" * 100) == []
    assert reader.feed(b"$g#67") == [packet(b"g")]


def test_truncated_packet_then_a_real_one():
    # a '$' before the '#': the first packet was cut short; the second still counts
    assert events(b"$m1234", b"$qAttached#" + b"%02x" % checksum(b"qAttached")) == [
        Event("bad-checksum"),
        packet(b"qAttached"),
    ]


def test_dollar_inside_an_unterminated_body():
    assert events(b"$abc$g#67") == [Event("bad-checksum"), packet(b"g")]


# ------------------------------------------------------------------ oversized packets


def test_oversized_packet_is_refused_and_skipped():
    reader = PacketReader(64)
    got = reader.feed(b"$" + b"q" * 1000)
    assert got == [Event("oversized")]
    assert reader.feed(b"q" * 1000) == []  # still inside the oversized packet
    assert reader.feed(b"#00$g#67") == [packet(b"g")]  # its end, then a good packet


def test_oversized_packet_in_one_read():
    assert events(b"$" + b"x" * 100 + b"#00$g#67", max_size=64) == [
        Event("oversized"),
        packet(b"g"),
    ]


def test_buffer_stays_bounded():
    reader = PacketReader(1024)
    for _ in range(100):
        reader.feed(b"$" + b"a" * 4096)
    assert len(reader._buf) <= 1024 + 4096 + 1


def test_default_limit_fits_a_64k_memory_read():
    # an `m` reply of 64 KB is 128 KB of hex: the advertised PacketSize must hold it
    assert PACKET_SIZE >= 2 * 0x10000
    body = b"0" * (2 * 0x10000)
    assert events(frame(body)) == [packet(body)]


# ------------------------------------------------------------------ binary escapes, run-length


@pytest.mark.parametrize(
    "raw, wire",
    [
        (b"}", b"}]"),  # 0x7d ^ 0x20 = 0x5d
        (b"#", b"}\x03"),  # 0x23 ^ 0x20
        (b"$", b"}\x04"),  # 0x24 ^ 0x20
        (b"*", b"}\x0a"),  # 0x2a ^ 0x20: '*' starts run-length encoding, so it is escaped too
        (b"}#", b"}]}\x03"),
        (b"plain", b"plain"),
    ],
)
def test_escape_binary(raw, wire):
    assert escape_binary(raw) == wire
    assert unescape_binary(wire) == raw


def test_escape_round_trip_of_every_byte():
    data = bytes(range(256)) * 2
    wire = escape_binary(data)
    assert not any(c in wire for c in b"#$*")
    assert unescape_binary(wire) == data


def test_escaped_binary_survives_framing():
    data = b"\x00}#$*\xff"
    assert events(frame(escape_binary(data))) == [packet(escape_binary(data))]


def test_lone_escape_at_the_end_is_dropped():
    assert unescape_binary(b"ab}") == b"ab"


def test_run_length_bytes_are_checked_as_sent():
    # "0* " is gdb's run-length form of "0000" (' ' = 29 + 3 repeats). The checksum
    # covers the bytes as sent; the reader hands the body on as sent, undecoded (gdb
    # itself never run-length encodes what it sends to a stub).
    body = b"0* "
    assert frame(body) == b"$0* #%02x" % ((0x30 + 0x2A + 0x20) & 0xFF)
    assert events(frame(body)) == [packet(body)]


@pytest.mark.parametrize("n", [0, 1, 255, 256, 511, 512, 513, 4096, 65536, 100_001])
def test_checksum_of_large_replies_is_the_byte_sum(n):
    """The chunked (zlib.adler32) checksum equals the byte sum modulo 256, the
    definition in gdb's manual, for random data and the worst case of 0xff bytes."""
    import random

    rng = random.Random(n)
    for data in (bytes(rng.randrange(256) for _ in range(n)), b"\xff" * n):
        assert checksum(data) == sum(data) % 256
