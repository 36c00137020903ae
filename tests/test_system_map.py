"""--system-map FILE and kvmcore.open(..., system_map=): a dump opened without
its vmlinux takes its symbols from the System.map it is given. Expected
values come from the System.map text, the KERNELOFFSET that readelf decodes
from the dump's VMCOREINFO note, the sample's manifest and the sample
builder's table (the modules the guest init loads)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

import kvmcore
from kvmcore.errors import SymbolError
from kvmcore.symbols import load_symbols
from sample_dumps.table import BY_ID

KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]
# arm64's Debian kernel has no KALLSYMS_ALL: without a vmlinux or System.map
# it lacks data symbols such as `modules`
SID = "arm64-kaslr"


def kvmcore_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        KVMCORE + [str(a) for a in args], capture_output=True, text=True, timeout=600
    )


def link_address(system_map, name: str) -> int:
    for line in system_map.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise AssertionError(f"{name} not in {system_map}")


def kernel_offset(dump) -> int:
    p = subprocess.run(["readelf", "-n", str(dump)], capture_output=True, text=True)
    if p.returncode != 0:
        pytest.fail(f"readelf failed ({p.stderr.strip()}): apt-get install binutils", pytrace=False)
    hexdata = re.search(r"VMCOREINFO.*?\n\s+description data: ([0-9a-f ]+)", p.stdout, re.S).group(
        1
    )
    info = bytes.fromhex(hexdata.replace(" ", "")).decode()
    return int(re.search(r"^KERNELOFFSET=([0-9a-f]+)$", info, re.M).group(1), 16)


@pytest.fixture(scope="module")
def arm64(samples):
    s = samples.get_built(SID)
    samples.vmlinux(SID)  # the -dbg package holds the System.map too
    smap = s.system_map()
    assert smap is not None
    return s, s.file("elf"), smap


def test_mods_needs_and_takes_the_system_map(arm64):
    s, dump, smap = arm64
    bare = kvmcore_cli("mods", dump)
    assert bare.returncode == 4, bare.stderr
    assert "System.map" in bare.stderr and len(bare.stderr.strip().splitlines()) == 1
    p = kvmcore_cli("mods", dump, "--system-map", smap, "--json")
    assert p.returncode == 0, p.stderr
    names = {m["name"] for m in json.loads(p.stdout)["modules"]}
    assert names == set(BY_ID[SID].arch.modules)


def test_sym_is_the_system_map_address_moved_by_kerneloffset(arm64):
    s, dump, smap = arm64
    p = kvmcore_cli("sym", dump, "modules", "--system-map", smap, "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert out["source"] == "System.map"
    assert int(out["address"], 16) == link_address(smap, "modules") + kernel_offset(dump)


def test_a_name_only_the_given_file_has(arm64, tmp_path):
    """The linux_banner line renamed in a copy: the new name resolves, and
    the bytes there are the kernel's banner."""
    s, dump, smap = arm64
    copy = tmp_path / "System.map"
    copy.write_text(re.sub(r" linux_banner$", " kvmcore_test_banner", smap.read_text(), flags=re.M))
    p = kvmcore_cli("sym", dump, "kvmcore_test_banner", "--system-map", copy, "--json")
    assert p.returncode == 0, p.stderr
    address = json.loads(p.stdout)["address"]
    r = kvmcore_cli("read", dump, address, "64", "--json", "--system-map", copy)
    assert r.returncode == 0, r.stderr
    banner = bytes.fromhex(json.loads(r.stdout)["hex"])
    assert banner.startswith(f"Linux version {s.manifest['kernel_release']}".encode())


def test_ps_and_sys_with_the_system_map(arm64):
    s, dump, smap = arm64
    p = kvmcore_cli("ps", dump, "--system-map", smap, "--json")
    assert p.returncode == 0, p.stderr
    tasks = {(t["pid"], t["comm"]) for t in json.loads(p.stdout)["tasks"]}
    assert {(proc["pid"], proc["comm"]) for proc in s.manifest["processes"]} <= tasks
    p = kvmcore_cli("sys", dump, "--system-map", smap)
    assert p.returncode == 0, p.stderr
    assert re.search(r"^\s+SYMBOLS: System\.map$", p.stdout, re.M), p.stdout


def test_missing_system_map_is_one_line(arm64, tmp_path):
    s, dump, _ = arm64
    missing = tmp_path / "System.map-none"
    p = kvmcore_cli("ps", dump, "--system-map", missing)
    assert p.returncode == 6  # not found (README, exit status)
    assert p.stderr.strip() == f"kvmcore: error: {missing}: no such System.map file"


def test_open_takes_system_map(arm64):
    s, dump, smap = arm64
    with kvmcore.open(str(dump), system_map=str(smap)) as d:
        assert d.system_map == str(smap)
        assert d.symbols.source == "System.map"
        assert d.symbols.origin == str(smap)
        assert d.symbols.lookup("linux_banner") == link_address(
            smap, "linux_banner"
        ) + kernel_offset(dump)


def test_system_map_next_to_the_vmlinux_is_found(arm64, tmp_path):
    """find_system_map: the System.map beside a vmlinux is used without being
    named; beside a vmlinux that has none, nothing is found."""
    s, dump, smap = arm64
    vmlinux = s.vmlinux()
    with kvmcore.open(str(dump), str(vmlinux)) as d:
        table = load_symbols(d, prefer="System.map")
        assert table.origin == str(smap)
        assert table.lookup("modules") == link_address(smap, "modules") + kernel_offset(dump)
    lonely = tmp_path / vmlinux.name
    lonely.symlink_to(vmlinux)
    with (
        kvmcore.open(str(dump), str(lonely)) as d,
        pytest.raises(SymbolError, match="no System.map given or found"),
    ):
        load_symbols(d, prefer="System.map")
    with kvmcore.open(str(dump), str(lonely), system_map=str(smap)) as d:
        assert load_symbols(d, prefer="System.map").origin == str(smap)
