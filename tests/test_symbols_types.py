"""Symbols and types on the real sample dumps, against independent oracles:
the -dbg System.map text, nm, readelf, gdb and drgn."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from helpers_symtypes import (
    SAMPLE_IDS,
    drgn_program,
    nm_size,
    readelf_section_bytes,
    sample,
    system_map,
    tool,
)

import kvmcore
from kvmcore.errors import SymbolError
from kvmcore.symbols import load_symbols
from kvmcore.symbols.elfsym import write_symbol_file
from kvmcore.types import load_types
from kvmcore.types.facade import TypeInfo
from kvmcore.types.helpers import VmcoreInfoTypes


def _open(s, fmt="elf", vmlinux=True):
    return kvmcore.open(str(s.file(fmt)), str(s.vmlinux()) if vmlinux else None)


@pytest.mark.parametrize("sid", SAMPLE_IDS)
def test_kallsyms_functions_match_system_map(sid):
    s = sample(sid)
    dump = _open(s, vmlinux=False)
    table = load_symbols(dump)
    assert table.source == "kallsyms"
    slide = dump.vmcoreinfo.kernel_offset
    assert (slide != 0) == s.manifest["kaslr"]
    smap = system_map(s.system_map())
    ours: dict[str, set[int]] = {}
    for sym in table:
        if sym.type in "tT":
            ours.setdefault(sym.name, set()).add(sym.address)
    theirs = {
        name: {addr + slide for addr, typ in entries if typ in "tT"}
        for name, entries in smap.items()
    }
    common = [n for n in ours if theirs.get(n)]
    assert len(common) > 20000, f"only {len(common)} function names in common"
    mismatches = [
        (n, sorted(map(hex, ours[n])), sorted(map(hex, theirs[n])))
        for n in common
        if ours[n] != theirs[n]
    ]
    assert not mismatches, f"{len(mismatches)} of {len(common)} differ: {mismatches[:10]}"


@pytest.mark.parametrize("sid", SAMPLE_IDS)
def test_vmlinux_symtab_relocated_matches_system_map(sid):
    s = sample(sid)
    dump = _open(s)
    table = load_symbols(dump)
    assert table.source == "vmlinux"
    slide = dump.vmcoreinfo.kernel_offset
    smap = system_map(s.system_map())
    for name in ("_stext", "sysrq_handle_crash", "panic", "schedule", "init_task", "start_kernel"):
        link = min(a for a, _ in smap[name])
        assert table.lookup(name) == link + slide, name
    assert table.lookup("_stext") == dump.vmcoreinfo.symbol("_stext")


@pytest.mark.parametrize("sid", SAMPLE_IDS)
def test_linux_banner(sid):
    s = sample(sid)
    dump = _open(s, vmlinux=False)
    # arm64 Debian kernels lack KALLSYMS_ALL: linux_banner is then in System.map only
    source = "kallsyms" if sid.startswith("x86_64") else "System.map"
    table = load_symbols(dump, system_map=str(s.system_map()), prefer=source)
    banner = dump.read_cstring(table.lookup("linux_banner"))
    assert banner.startswith(f"Linux version {s.manifest['kernel_release']} "), banner


def _uts_cases():
    from sample_dumps.catalog import load_samples

    samples = load_samples()
    return [(sid, fmt) for sid in SAMPLE_IDS if sid in samples for fmt in samples[sid].formats] or [
        (sid, "elf") for sid in SAMPLE_IDS
    ]


@pytest.mark.parametrize("sid,fmt", _uts_cases())
def test_init_uts_ns_through_every_format(sid, fmt):
    s = sample(sid)
    dump = kvmcore.open(str(s.file(fmt)))
    info = dump.vmcoreinfo
    base = info.symbol("init_uts_ns") + info.offset("uts_namespace", "name")
    fields = [dump.read(base + 65 * i, 65).split(b"\0")[0].decode() for i in range(5)]
    uts = s.manifest["uts"]
    assert (fields[0], fields[2], fields[4]) == (uts["sysname"], uts["release"], uts["machine"])
    assert fields[3] == uts["version"]


@pytest.mark.parametrize("sid", SAMPLE_IDS)
def test_btf_from_memory_equals_vmlinux_section(sid):
    s = sample(sid)
    section = readelf_section_bytes(s.vmlinux(), ".BTF")
    # x86_64: bounds from kallsyms alone; arm64: kallsyms lacks them, System.map supplies
    dump = _open(s, vmlinux=False) if sid.startswith("x86_64") else _open(s)
    from kvmcore.types.btf_source import btf_from_memory

    assert btf_from_memory(dump) == section
    types = load_types(_open(s, vmlinux=False))
    # with neither vmlinux nor System.map (arm64 kallsyms lacks __start_BTF) the
    # blob is still found in memory, by its header
    assert types.sources[0].name == "btf" and "(memory)" in types.sources[0].origin
    assert types.sources[0].blob == section
    with_map = load_types(_open(s))
    assert with_map.sources[0].name == "btf"


# (type, member or None for sizeof) the kernel model relies on
COMMON = [
    ("struct task_struct", m)
    for m in (
        "pid",
        "tgid",
        "comm",
        "tasks",
        "tasks.next",
        "thread_group",
        "signal",
        "real_parent",
        "__state",
        "on_cpu",
        "thread_info.cpu",
        "stack",
        "thread",
        "mm",
        "flags",
        "children",
        "sibling",
        "group_leader",
        "cpus_ptr",
    )
] + [
    ("struct list_head", "next"),
    ("struct list_head", "prev"),
    ("struct module", "list"),
    ("struct module", "name"),
    ("struct module", "core_layout"),
    ("struct module", "kallsyms"),
    ("struct mod_kallsyms", "symtab"),
    ("struct mod_kallsyms", "num_symtab"),
    ("struct mod_kallsyms", "strtab"),
    ("struct printk_ringbuffer", "desc_ring"),
    ("struct printk_ringbuffer", "text_data_ring"),
    ("struct prb_desc_ring", "descs"),
    ("struct prb_desc_ring", "infos"),
    ("struct prb_desc_ring", "head_id"),
    ("struct printk_info", "text_len"),
    ("struct printk_info", "ts_nsec"),
    ("struct prb_data_ring", "data"),
    ("struct uts_namespace", "name"),
    ("struct new_utsname", "release"),
    ("struct signal_struct", "thread_head"),
    ("struct mm_struct", "pgd"),
    ("struct pid", "numbers"),
    ("struct upid", "nr"),
]
SIZES = [
    "struct task_struct",
    "struct list_head",
    "struct module",
    "struct printk_info",
    "struct prb_desc",
    "struct uts_namespace",
    "struct new_utsname",
    "struct thread_struct",
    "struct printk_ringbuffer",
    "struct mm_struct",
    "pid_t",
    "unsigned long",
]
ARCH = {
    "x86_64": [("struct inactive_task_frame", m) for m in ("bp", "ret_addr", "r15", "bx")]
    + [("struct task_struct", "thread.sp"), ("struct thread_struct", "sp")],
    "arm64": [("struct cpu_context", m) for m in ("x19", "fp", "sp", "pc")]
    + [
        ("struct task_struct", "thread.cpu_context"),
        ("struct task_struct", "thread.cpu_context.sp"),
    ],
}
ARCH_SIZES = {"x86_64": ["struct inactive_task_frame"], "arm64": ["struct cpu_context"]}


def _drgn_facts(prog, sid):
    import drgn

    arch = sid.split("-")[0]
    offsets = {}
    for tname, member in COMMON + ARCH[arch]:
        try:
            offsets[(tname, member)] = drgn.offsetof(prog.type(tname), member)
        except (LookupError, ValueError):
            offsets[(tname, member)] = None
    sizes = {t: drgn.sizeof(prog.type(t)) for t in SIZES + ARCH_SIZES[arch]}
    return offsets, sizes


def _check_against(types, offsets, sizes, source):
    for (tname, member), want in offsets.items():
        if want is None:
            assert not types.has_member(tname, member), (tname, member)
        else:
            assert types.offsetof(tname, member) == want, (tname, member)
    for tname, want in sizes.items():
        assert types.sizeof(tname) == want, tname
    for tname, _ in offsets:
        assert types.source_of(tname) == source
    assert sum(v is not None for v in offsets.values()) >= 40


@pytest.fixture(scope="module")
def drgn_facts():
    cache = {}

    def get(sid):
        if sid not in cache:
            cache[sid] = _drgn_facts(drgn_program(sample(sid)), sid)
        return cache[sid]

    return get


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr"])
def test_btf_layouts_match_drgn(sid, drgn_facts):
    s = sample(sid)
    offsets, sizes = drgn_facts(sid)
    types = load_types(_open(s))
    _check_against(types, offsets, sizes, "btf")
    comm = types.member_type("struct task_struct", "comm").strip()
    assert (comm.kind, comm.length) == ("array", 16)
    assert types.enum_value("enum pid_type", "PIDTYPE_TGID") == 1


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr"])
def test_dwarf_layouts_match_drgn_and_are_cached(sid, drgn_facts):
    s = sample(sid)
    offsets, sizes = drgn_facts(sid)
    types = load_types(_open(s), prefer="dwarf")
    assert types.sources[0].name == "dwarf"
    _check_against(types, offsets, sizes, "dwarf")
    dwarf = types.sources[0]
    assert os.path.isfile(dwarf.index_path), "DWARF index was not cached"
    assert dwarf.index_path.endswith(os.path.join("index", dump_build_id(s), "types.json"))
    again = load_types(_open(s), prefer="dwarf")
    assert again.offsetof("struct task_struct", "tasks") == offsets[("struct task_struct", "tasks")]
    assert again.sources[0].scan_seconds == 0.0, "second open re-scanned DWARF"


def dump_build_id(s):
    return kvmcore.open(str(s.file("elf"))).vmcoreinfo.build_id


def test_vmcoreinfo_helpers_alone(drgn_facts):
    s = sample("x86_64-kaslr")
    offsets, _ = drgn_facts("x86_64-kaslr")
    helpers_only = TypeInfo([], VmcoreInfoTypes(_open(s).vmcoreinfo))
    for member in ("desc_ring", "text_data_ring"):
        assert (
            helpers_only.offsetof("struct printk_ringbuffer", member)
            == offsets[("struct printk_ringbuffer", member)]
        )
    assert helpers_only.source_of("struct printk_ringbuffer") == "vmcoreinfo"
    assert helpers_only.sizeof("struct list_head") == 16


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr"])
def test_symbolize_uses_symtab_size(sid):
    s = sample(sid)
    table = load_symbols(_open(s))
    size = nm_size(s.vmlinux(), "sysrq_handle_crash")
    addr = table.lookup("sysrq_handle_crash")
    assert table.symbolize(addr + 4) == f"sysrq_handle_crash+0x4/{size:#x}"
    sym, off = table.nearest(addr + 4)
    assert (sym.name, off) == ("sysrq_handle_crash", 4)


def test_build_id_mismatch_names_both_ids(tmp_path):
    # a vmlinux of another build (the sample's, its build id changed) for the committed dump
    from patching import _readelf_build_id, other_build

    x86 = sample("x86_64-kaslr")
    committed = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"
    ours = json.loads((committed / "manifest.json").read_text())["build_id"]
    other = other_build(x86.vmlinux(), tmp_path)
    with pytest.raises(SymbolError) as err:  # refused at open (issue 12 §4)
        kvmcore.open(str(committed / "vmcore.mdf-d31-c"), str(other))
    assert ours in str(err.value)
    assert _readelf_build_id(other) in str(err.value)


def test_module_symbols_symbolize_with_module_name():
    s = sample("x86_64-kaslr")
    table = load_symbols(_open(s, vmlinux=False))
    table.add_module_symbols("demo", [("demo_fn", 0xFFFFFFFFC0001000, 0x40, "t")])
    assert table.symbolize(0xFFFFFFFFC0001010) == "demo_fn+0x10/0x40 [demo]"
    assert table.sources == ["kallsyms", "modules"]


@pytest.mark.parametrize("sid,gdb", [("x86_64-kaslr", "gdb"), ("arm64-kaslr", "gdb-multiarch")])
def test_gdb_reads_written_symbol_file(sid, gdb, tmp_path):
    s = sample(sid)
    dump = _open(s, vmlinux=False)
    table = load_symbols(dump)
    out = tmp_path / "kernel.sym"
    write_symbol_file(table, str(out), dump.arch.name)
    link = min(a for a, _ in system_map(s.system_map())["sysrq_handle_crash"])
    want = link + dump.vmcoreinfo.kernel_offset
    res = subprocess.run(
        [
            tool(gdb),
            "-batch",
            "-ex",
            "info address sysrq_handle_crash",
            "-ex",
            f"info symbol {want + 4:#x}",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert f"is at {want:#x}" in res.stdout, res.stdout + res.stderr
    assert "sysrq_handle_crash + 4 in section" in res.stdout, res.stdout
