"""The fuzz campaign's short, repeatable run (fuzz/), and hypothesis's
structured inputs for the parsers, held to the same contract: only
KvmcoreError escapes, no hang, the seed dumps unchanged."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fuzz import campaign
from fuzz.contract import ERROR, OK, check
from fuzz.targets import TARGETS, frame_sections

SETTINGS = settings(
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=80,
    suppress_health_check=list(HealthCheck),
)


def assert_contract(target: str, data: bytes) -> None:
    out = check(TARGETS[target].run, data)
    assert out.kind in (OK, ERROR), f"{target}: {out.key}\n{out.text}"


# -- the short campaign: fixed seed, fixed number of inputs per target ---------------------
FAST = [name for name in TARGETS if name != "analyze"]


@pytest.mark.parametrize("names,seconds,runs", [(FAST, 66, 200), (["analyze"], 30, 12)])
def test_short_campaign_is_clean(names, seconds, runs):
    """The built-in mutator from a fixed seed: the same inputs in the same order
    on every run, at most `runs` per target (fewer when its time share ends first)."""
    res = campaign.run(seconds, names, seed=12, engine="random", runs=runs)
    assert not res.worker_problems, res.worker_problems
    assert res.hashes_unchanged
    for name, tally in res.tallies.items():
        assert tally.inputs > len(TARGETS[name].seeds()), (name, tally.inputs)
    assert not res.failures(), res.report()


# -- hypothesis: structured inputs ---------------------------------------------------------
names = st.sampled_from(
    [
        "SYMBOL",
        "OFFSET",
        "SIZE",
        "LENGTH",
        "NUMBER",
        "KERNELOFFSET",
        "PAGESIZE",
        "CRASHTIME",
        "OSRELEASE",
        "BUILD-ID",
    ]
)
values = st.one_of(st.text(max_size=24), st.integers().map(str), st.integers().map(hex))


@SETTINGS
@given(st.lists(st.tuples(names, st.text(max_size=12), values), max_size=30))
def test_vmcoreinfo_text(entries):
    text = "\n".join(
        f"{k}({a})={v}" if k in ("SYMBOL", "OFFSET", "SIZE", "LENGTH", "NUMBER") else f"{k}={v}"
        for k, a, v in entries
    )
    assert_contract("vmcoreinfo", text.encode("utf-8", "surrogatepass"))


note = st.tuples(
    st.sampled_from(["CORE", "VMCOREINFO", "QEMU", "", "LINUX"]),
    st.integers(0, 2**32 - 1),
    st.binary(max_size=64),
    st.integers(-8, 8),
    st.integers(-8, 8),
)


@SETTINGS
@given(st.lists(note, max_size=12), st.booleans())
def test_notes(notes, little):
    e = "<" if little else ">"
    raw = b""
    for name, ntype, desc, dn, dd in notes:
        nb = name.encode() + b"\0"
        raw += struct.pack(e + "III", max(0, len(nb) + dn), max(0, len(desc) + dd), ntype)
        raw += nb.ljust((len(nb) + 3) & ~3, b"\0") + desc.ljust((len(desc) + 3) & ~3, b"\0")
    assert_contract("notes", bytes([1 if little else 0]) + raw)


@SETTINGS
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=80),
            st.sampled_from(
                [b"$", b"#", b"+", b"-", b"\x03", b"}", b"$g#67", b"$m0,4#fd", b"$?#3f", b"$qC#b4"]
            ),
        ),
        max_size=40,
    ),
    st.integers(0, 255),
)
def test_rsp_packets(chunks, step):
    from kvmcore.gdbserver.packets import PacketReader, frame

    assert_contract("rsp", bytes([step]) + b"".join(chunks))
    # every well-framed packet after noise comes back whole
    reader = PacketReader()
    events = reader.feed(b"".join(c.replace(b"$", b"") for c in chunks) + frame(b"qfThreadInfo"))
    assert events and events[-1].kind == "packet" and events[-1].data == b"qfThreadInfo"


btf_type = st.tuples(
    st.integers(0, 64),
    st.integers(0, 31),
    st.integers(0, 3),
    st.integers(0, 2**32 - 1),
    st.lists(st.integers(0, 2**32 - 1), max_size=12),
)


@SETTINGS
@given(st.lists(btf_type, max_size=20), st.binary(max_size=64))
def test_btf_records(types, strings):
    words = []
    for name_off, kind, vlen, size, extra in types:
        words += [name_off, (kind << 24) | vlen, size, *extra]
    section = struct.pack(f"<{len(words)}I", *words)
    strings = b"\0" + strings + b"\0"
    hdr = struct.pack("<HBB5I", 0xEB9F, 1, 0, 24, 0, len(section), len(section), len(strings))
    assert_contract("btf", hdr + section + strings)


@SETTINGS
@given(
    st.lists(st.binary(min_size=1, max_size=6), max_size=24),
    st.binary(max_size=8),
    st.integers(1, 8),
    st.integers(-16, 16),
)
def test_dwarf_cfi_instructions(rows, initial, code_align, data_align):
    from kvmcore.symbols.cfi import CfiLayout, DebugFrameWriter

    w = DebugFrameWriter(CfiLayout(8, 16, data_align, initial, code_align))
    w.fde(
        0xFFFFFFFF81000000,
        0xFFFFFFFF81000000 + 64 * (len(rows) + 1),
        [(0xFFFFFFFF81000000 + 64 * i, r) for i, r in enumerate(rows)],
        signal=False,
    )
    assert_contract("dwarf_cfi", bytes(w.out))


@SETTINGS
@given(
    st.integers(0, 3000),
    st.lists(st.binary(min_size=1, max_size=6), min_size=1, max_size=40),
    st.binary(max_size=64),
    st.binary(max_size=64),
)
def test_kallsyms_tables(num, names, offsets, base):
    from fuzz.targets import kallsyms_seeds, sections

    real = sections(kallsyms_seeds()[0], 6)
    raw_names = b"".join(bytes([len(n)]) + n for n in names)
    parts = [struct.pack("<I", num), raw_names, real[2], real[3], offsets, base]
    assert_contract("kallsyms", frame_sections(parts))


@settings(SETTINGS, max_examples=6)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 255), st.integers(0, 2**32 - 1), st.binary(min_size=1, max_size=8)
        ),
        max_size=6,
    )
)
def test_analyze_recipes(patches):
    data = b"".join(struct.pack("<BIB", k, w, len(v) - 1) + v for k, w, v in patches)
    assert_contract("analyze", data)


def test_rsp_buffer_bound_regression():
    """The long campaign's one failure, in the harness's own invariant: with
    max_size 64 and 5-byte chunks, '$' + 67 bytes + '#' + one checksum byte
    waits (70 bytes) for the checksum's last byte; the reader is right to."""
    data = bytes([4]) + b"$" + bytes(67) + b"#\x03"
    assert_contract("rsp", data)
