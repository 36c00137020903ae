"""`mods` on riscv64, s390x, ppc64le and 32-bit Arm: each sample's guest
insmods a small stock module of its kernel package (sample_dumps/table.py
NEW_ARCH_MODULES) and prints /proc/modules, which the manifest records
(schema 3, `modules`: name, size, address). kvmcore reads the module list from
each dump file with no vmlinux where the kernel has BTF; armhf has none, so
there it takes the -dbg vmlinux, and with a System.map alone (symbols but no
types) it says in one line that the vmlinux is needed."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import BUILD_HINT

import kvmcore
from sample_dumps.table import BY_ID, NEW_ARCH_MODULES

PY = sys.executable
SIDS = ("riscv64", "s390x", "ppc64le", "armhf")
NEEDS_VMLINUX = {"armhf"}


def manifest_modules(sample) -> list[dict]:
    m = sample.manifest
    if m.get("schema", 1) < 3 or "modules" not in m:
        pytest.fail(
            f"sample {sample.id} predates manifest schema 3 (no modules): rebuild it "
            f"(python -m sample_dumps build --only {sample.id} --with-dbg); {BUILD_HINT}",
            pytrace=False,
        )
    return m["modules"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "kvmcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )


@pytest.mark.parametrize("sid", SIDS)
def test_guest_loaded_the_table_modules(samples, sid):
    """The guest's /proc/modules holds the modules the table asks for, live."""
    assert BY_ID[sid].arch.modules == NEW_ARCH_MODULES
    mods = manifest_modules(samples.get_built(sid))
    assert {m["name"] for m in mods} >= set(NEW_ARCH_MODULES), mods
    assert all(m["state"] == "Live" and m["address"] for m in mods), mods


@pytest.mark.parametrize("fmt", ["elf", "kdump-zlib"])
@pytest.mark.parametrize("sid", SIDS)
def test_mods_lists_the_manifest_modules(samples, sid, fmt):
    """`kvmcore mods --json`: every module /proc/modules listed, with its
    address (mem[MOD_TEXT].base) and its size (module_total_size: every
    mem[] region), and no other."""
    s = samples.get_built(sid)
    want = {m["name"]: m for m in manifest_modules(s)}
    args = ["mods", str(s.file(fmt)), "--json"]
    if sid in NEEDS_VMLINUX:
        args.insert(2, str(samples.vmlinux(sid)))
    p = cli(*args)
    assert p.returncode == 0, p.stderr
    got = {m["name"]: m for m in json.loads(p.stdout)["modules"]}
    assert set(got) == set(want), (got, want)
    for name, m in want.items():
        assert int(got[name]["base"], 16) == m["address"], (got[name], m)
        assert got[name]["size"] == m["size"], (got[name], m)


@pytest.mark.parametrize("sid", SIDS)
def test_module_symbols_fall_in_the_module(samples, sid):
    """The module's own kallsyms (module->kallsyms) name its exported function,
    inside the module's memory as /proc/modules placed it."""
    s = samples.get_built(sid)
    vmlinux = str(samples.vmlinux(sid)) if sid in NEEDS_VMLINUX else None
    want = {m["name"]: m for m in manifest_modules(s)}
    with kvmcore.open(str(s.file("elf")), vmlinux) as dump:
        for mod in dump.kernel.modules():
            if mod.name not in NEW_ARCH_MODULES:
                continue
            m = want[mod.name]
            names = {name: addr for name, addr, _, _ in mod.symbols}
            assert mod.name in names, sorted(names)  # crc_itu_t() in crc_itu_t.ko
            assert m["address"] <= names[mod.name] < m["address"] + m["size"]
            args = ["sym", str(s.file("elf")), hex(names[mod.name])] + (
                [vmlinux] if vmlinux else []
            )
            p = cli(*args)
            assert p.returncode == 0 and p.stdout.split()[0].startswith(f"{mod.name}+0x0/"), p
            assert f"[{mod.name}]" in p.stdout, p.stdout


def test_armhf_mods_with_system_map_only_names_the_vmlinux(samples):
    """A System.map gives the `modules` symbol but no types: one line, exit 4,
    naming the -dbg package's vmlinux."""
    s = samples.get_built("armhf")
    smap = s.system_map()
    if smap is None:
        samples.vmlinux("armhf")  # fails with the build hint
    p = cli("mods", str(s.file("elf")), "--system-map", str(smap))
    assert p.returncode == 4, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "struct module" in lines[0], p.stderr
    assert f"vmlinux-{s.manifest['kernel_release']}" in lines[0], p.stderr
