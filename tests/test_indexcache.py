"""The build-id index cache (kvmcore.indexcache): a warm cache gives the same
symbols and types as decoding afresh (checked against System.map and drgn),
and a stale, corrupt, truncated or unwritable cache is never trusted."""

from __future__ import annotations

import os

import pytest
from helpers_symtypes import drgn_program, sample, system_map

import kvmcore
from kvmcore.symbols import load_symbols
from kvmcore.symbols.kallsyms import CACHE_NAME as KALLSYMS_FILE
from kvmcore.symbols.kallsyms import FROZEN_CACHE_NAME as FROZEN_FILE
from kvmcore.types import load_types
from kvmcore.types.btf import CACHE_NAME as BTF_FILE

SIDS = ["x86_64-kaslr", "arm64-kaslr"]
NAMES = ("_stext", "sysrq_handle_crash", "panic", "schedule", "start_kernel")
MEMBERS = (
    ("struct task_struct", "tasks"),
    ("struct task_struct", "comm"),
    ("struct task_struct", "pid"),
    ("struct rq", "curr"),
    ("struct module", "list"),
)


def _facts(s):
    """What the dump should give: System.map addresses (slid) and drgn offsets."""
    slide = kvmcore.open(str(s.file("elf"))).vmcoreinfo.kernel_offset
    smap = system_map(s.system_map())
    addrs = {n: min(a for a, t in smap[n] if t in "tT") + slide for n in NAMES}
    prog = drgn_program(s)
    from drgn import offsetof

    offsets = {(t, m): offsetof(prog.type(t), m) for t, m in MEMBERS}
    return addrs, offsets


def _read(s):
    """Symbols and offsets decoded by kvmcore from the dump alone."""
    dump = kvmcore.open(str(s.file("elf")))
    table = load_symbols(dump)
    dump.__dict__["symbols"] = table  # the BTF bounds come from these symbols
    types = load_types(dump)
    return (
        {n: table.lookup(n) for n in NAMES},
        {(t, m): types.offsetof(t, m) for t, m in MEMBERS},
        dump.vmcoreinfo.build_id,
    )


@pytest.fixture(scope="module")
def samples():
    """Samples (and their oracles' answers) resolved before a test moves the cache root."""
    return {sid: (sample(sid), _facts(sample(sid))) for sid in SIDS}


@pytest.fixture
def cache(samples, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    monkeypatch.setenv("KVMCORE_CACHE", str(root))
    monkeypatch.delenv("KVMCORE_INDEX_CACHE", raising=False)
    return root


@pytest.mark.parametrize("sid", SIDS)
def test_cold_and_warm_cache_agree_with_system_map_and_drgn(sid, samples, cache):
    s, want = samples[sid]
    cold = _read(s)
    folder = cache / "index" / cold[2]
    files = [folder / KALLSYMS_FILE, folder / FROZEN_FILE, folder / BTF_FILE]
    stamps = [f.stat().st_mtime_ns for f in files]
    warm = _read(s)
    assert cold[:2] == want and warm[:2] == want
    assert [f.stat().st_mtime_ns for f in files] == stamps, "a valid cache file was rewritten"


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "empty"])
def test_bad_cache_files_are_ignored_and_rewritten(damage, samples, cache):
    (s, want), (other, _) = samples["x86_64-kaslr"], samples["arm64-kaslr"]
    build_id = _read(s)[2]
    other_id = _read(other)[2]
    folder = cache / "index" / build_id
    for name in (KALLSYMS_FILE, FROZEN_FILE, BTF_FILE):
        path = folder / name
        good = path.read_bytes()
        if damage == "flip":  # one payload byte: the CRC no longer matches
            bad = bytearray(good)
            bad[len(bad) // 2] ^= 0x5A
            path.write_bytes(bytes(bad))
        elif damage == "truncate":
            path.write_bytes(good[: len(good) // 3])
        elif damage == "foreign":  # another kernel's file: its source hash differs
            path.write_bytes((cache / "index" / other_id / name).read_bytes())
        else:
            path.write_bytes(b"")
    assert _read(s)[:2] == want
    for name in (KALLSYMS_FILE, FROZEN_FILE, BTF_FILE):  # rebuilt in place
        assert (folder / name).stat().st_size > 1000


def test_unwritable_cache_still_works(samples, tmp_path, monkeypatch):
    s, want = samples["x86_64-kaslr"]
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory should be\n")
    monkeypatch.setenv("KVMCORE_CACHE", str(blocker))
    monkeypatch.delenv("KVMCORE_INDEX_CACHE", raising=False)
    assert _read(s)[:2] == want
    assert blocker.is_file()


def test_cache_can_be_turned_off(samples, cache, monkeypatch):
    s, want = samples["arm64-kaslr"]
    monkeypatch.setenv("KVMCORE_INDEX_CACHE", "0")
    assert _read(s)[:2] == want
    assert not os.path.exists(cache / "index")


@pytest.fixture(scope="module")
def nokaslr():
    """The nokaslr boot of x86_64-kaslr's kernel and its System.map facts."""
    return sample("x86_64-nokaslr"), _facts(sample("x86_64-nokaslr"))


def test_frozen_kallsyms_serve_another_boot_of_the_build(samples, nokaslr, cache):
    """The frozen kallsyms file is stored KASLR-free: written from the KASLR
    boot, it serves the nokaslr boot of the same kernel build unchanged, and
    each dump's symbols are System.map's moved by its own KERNELOFFSET."""
    s, want = samples["x86_64-kaslr"]
    other, (theirs, _) = nokaslr
    build_id = _read(s)[2]
    if kvmcore.open(str(other.file("elf"))).vmcoreinfo.build_id != build_id:
        pytest.fail("x86_64-kaslr and x86_64-nokaslr should boot one kernel build: rebuild both")
    path = cache / "index" / build_id / FROZEN_FILE
    stamp = path.stat().st_mtime_ns
    assert _read(other)[0] == theirs and theirs != want[0]
    assert path.stat().st_mtime_ns == stamp, "a valid frozen file was rewritten"


def test_vmlinux_symtab_cache_gives_the_decoded_columns(samples, cache):
    """The -dbg vmlinux's .symtab, decoded (cold) and from the cache (warm):
    the same columns, whose addresses and nm letters System.map confirms;
    a damaged cache file is ignored and rewritten."""
    from kvmcore.symbols.vmlinux import SYMBOL_CACHE_NAME, VmlinuxFile

    s, _ = samples["x86_64-kaslr"]
    image = VmlinuxFile(str(s.vmlinux()))
    build_id = image.build_ids()[0]
    cold = image.symbol_columns()
    path = cache / "index" / build_id / SYMBOL_CACHE_NAME
    stamp = path.stat().st_mtime_ns
    warm = image.symbol_columns()
    assert warm == cold and path.stat().st_mtime_ns == stamp
    smap = system_map(s.system_map())
    for name in NAMES:
        i = cold.names.index(name)
        assert (cold.addresses[i], cold.types[i]) in smap[name]
    bad = bytearray(path.read_bytes())
    bad[len(bad) // 2] ^= 0x5A
    path.write_bytes(bytes(bad))
    assert image.symbol_columns() == cold
    assert path.read_bytes() != bytes(bad)  # rewritten
    image.close()


@pytest.mark.parametrize("sid", SIDS)
def test_stext_from_one_kallsyms_entry_is_system_maps(sid, samples, cache):
    """The KASLR check decodes only _stext's kallsyms entry when a vmlinux
    gives the symbols: the same address as the whole table's, and System.map's
    _stext moved by VMCOREINFO's KERNELOFFSET."""
    from kvmcore.symbols.kallsyms import read_kallsyms_columns, stext_address

    s, (addrs, _) = samples[sid]
    one = stext_address(kvmcore.open(str(s.file("elf"))))
    cols = read_kallsyms_columns(kvmcore.open(str(s.file("elf"))))
    assert one == cols.addresses[cols.names.index("_stext")] == addrs["_stext"]


def test_debug_frame_index_cache_gives_the_decoded_index(samples, cache):
    """The vmlinux's .debug_frame FDE index decoded (cold) and from the cache
    (warm): the same FDEs, and the same rows for every function of NAMES."""
    from kvmcore.symbols.vmlinux import VmlinuxFile
    from kvmcore.unwind.dwarf_cfi import FDE_CACHE_NAME, DebugFrame

    s, _ = samples["x86_64-kaslr"]
    image = VmlinuxFile(str(s.vmlinux()))
    data = bytes(image.section_bytes(image.section(".debug_frame")))
    build_id = image.build_ids()[0]
    image.close()
    cold = DebugFrame(data, 8, "little", build_id=build_id)
    assert (cache / "index" / build_id / FDE_CACHE_NAME).exists()
    warm = DebugFrame(data, 8, "little", build_id=build_id)
    assert len(cold) == len(warm) > 1000
    assert list(cold.fdes) == list(warm.fdes) and list(cold.starts) == list(warm.starts)
    smap = system_map(s.system_map())
    pcs = [min(a for a, t in smap[name] if t in "tT") + 4 for name in NAMES]
    rows = [cold.row(pc) for pc in pcs]
    assert rows == [warm.row(pc) for pc in pcs]
    assert sum(r is not None for r in rows) >= 3  # panic, schedule, ... have FDEs
