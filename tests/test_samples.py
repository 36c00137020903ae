"""The sample dumps are real: checked with independent tools only (readelf, file,
sha256, drgn, crash), never with kvmcore."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, sample_files, sample_ids

ELF_FORMATS = {"elf", "mdf-d31-E", "proc-elf", "elf-paging"}
DRGN_FORMATS = {
    "elf",
    "mdf-d31-c",
    "mdf-d31-l",
    "mdf-d31-E",
    "proc-elf",
}  # drgn cannot read flattened
# drgn 0.3.0 opens QEMU's i386 dump (an ELF64 container, EM_386) but takes it for a 64-bit
# program and cannot translate addresses: i386 is proven by readelf/file/sha256 only.
DRGN_ARCHES = ("x86_64", "aarch64")  # s390x, ppc64le: tests/test_arch_<arch>.py
NO_VMCOREINFO_DEVICE = ("riscv64", "s390x", "ppc64le", "armv7l")
APT_HINT = "apt-get install $(grep -v '^#' sample_dumps/apt-packages.txt)"


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {APT_HINT}", pytrace=False)
    return path


def drgn_module():
    try:
        import drgn
    except ImportError:
        pytest.fail(
            "drgn is not importable: python3 -m venv .venv && .venv/bin/pip install drgn pytest, "
            "then run .venv/bin/python -m pytest",
            pytrace=False,
        )
    return drgn


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


# ---------------------------------------------------------------- manifest


@pytest.mark.parametrize("sid", sample_ids())
def test_manifest_consistent(samples, sid):
    m = samples.get_built(sid).manifest
    assert m["id"] == sid
    assert m["uts"]["release"] == m["kernel_release"]
    assert m["uts"]["machine"] == m["arch"]
    assert m["build_id"] and re.fullmatch(r"[0-9a-f]{40}", m["build_id"])
    comms = [p["comm"] for p in m["processes"]]
    for name in (
        "init",
        "sleeper_a",
        "sleeper_b",
        "sleeper_c",
        "busyloop_task",
        "threaded_task",
        "crasher",
    ):
        assert comms.count(name) == 1, name
    assert comms.count("sleep") == 3
    by_pid = {p["pid"]: p for p in m["processes"]}
    for p in m["processes"]:
        if p["comm"] == "sleep":
            assert by_pid[p["ppid"]]["comm"].startswith("sleeper_")
    tt = next(p for p in m["processes"] if p["comm"] == "threaded_task")
    assert sorted(t["comm"] for t in m["threads"]) == [f"worker-{i}" for i in range(4)]
    assert all(t["tgid"] == tt["pid"] for t in m["threads"])
    assert m["panic"]["comm"] == "crasher" and m["panic"]["cpu"] == 1
    assert m["marker"].startswith("kvmcore-marker-")


@pytest.mark.parametrize("sid,fmt", sample_files())
def test_sha256(samples, sid, fmt):
    s = samples.get_built(sid)
    entry = s.manifest["files"][fmt]
    path = s.file(fmt)
    assert path.stat().st_size == entry["size"]
    assert sha256(path) == entry["sha256"]


@pytest.mark.fast
def test_committed_copy():
    d = ROOT / "sample_dumps" / "committed" / "x86_64-small"
    m = json.loads((d / "manifest.json").read_text())
    for entry in m["files"].values():
        p = d / entry["path"]
        assert p.stat().st_size == entry["size"] < 20 << 20
        assert sha256(p) == entry["sha256"]


# ---------------------------------------------------------------- readelf


def vmcoreinfo(path: Path) -> tuple[str, str]:
    """(readelf -n output, VMCOREINFO text decoded from readelf's description hex)."""
    out = subprocess.run(
        [tool("readelf"), "-n", "-W", str(path)], capture_output=True, text=True, check=True
    ).stdout
    m = re.search(r"^\s*VMCOREINFO\s[^\n]*?description data:((?: [0-9a-f]{2})+)", out, re.M | re.S)
    assert m, f"no VMCOREINFO note in {path}"
    return out, bytes.fromhex(m[1].replace(" ", "")).decode()


@pytest.mark.parametrize("sid,fmt", sample_files(ELF_FORMATS))
def test_elf_notes(samples, sid, fmt):
    s = samples.get_built(sid)
    m = s.manifest
    if m["arch"] in NO_VMCOREINFO_DEVICE:
        # QEMU has no vmcoreinfo device there: no note (tests/test_arch_<arch>.py
        # find the kernel's own in memory)
        out = subprocess.run(
            [tool("readelf"), "-n", "-W", str(s.file(fmt))],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert "VMCOREINFO" not in out
        assert len(re.findall(r"NT_PRSTATUS", out)) == m["qemu"]["smp"]
        return
    out, info = vmcoreinfo(s.file(fmt))
    assert len(re.findall(r"NT_PRSTATUS", out)) == m["qemu"]["smp"]
    fields = dict(line.split("=", 1) for line in info.splitlines() if "=" in line)
    assert fields["OSRELEASE"] == m["kernel_release"]
    assert fields["BUILD-ID"] == m["build_id"]
    if m["arch"] == "x86_64":
        assert (int(fields["KERNELOFFSET"], 16) != 0) == m["kaslr"]
        # 5-level paging exactly when QEMU offered LA57 (Debian's CONFIG_X86_5LEVEL=y)
        assert fields["NUMBER(pgtable_l5_enabled)"] == ("1" if "la57" in m["qemu"]["cpu"] else "0")


# ---------------------------------------------------------------- file(1)


def expected_file_output(m: dict, entry: dict) -> list[str]:
    # QEMU's i386 dump is an ELF64 container with e_machine EM_386
    machine = {
        "x86_64": "x86-64",
        "aarch64": "ARM aarch64",
        "i686": "Intel 80386",
        "riscv64": "UCB RISC-V",
        "s390x": "IBM S/390",
        "ppc64le": "64-bit PowerPC",
        "armv7l": "ARM",
    }[m["arch"]]
    release = f"release {m['kernel_release']}"
    # QEMU 7.2 writes a little-endian ppc64 guest's ELF header big-endian (the
    # CPU was in big-endian firmware), and s390x's kdump header little-endian
    # with utsname "S390X" (file(1) then misreads its version)
    order = "MSB" if m["arch"] in ("s390x", "ppc64le") else "LSB"
    if entry["format"] == "elf" and order == "MSB":
        return [f"ELF 64-bit MSB core file, {machine}"]
    if entry["format"] == "kdump-flattened" and m["arch"] in ("s390x", "ppc64le"):
        return [
            "Flattened kdump compressed dump",
            "machine " + {"s390x": "S390X", "ppc64le": "Unknown"}[m["arch"]],
        ]
    if entry["format"] in ("elf", "elf-filtered"):
        bits = 32 if m["arch"] == "armv7l" else 64  # QEMU's arm dump is an ELF32
        return [f"ELF {bits}-bit LSB core file, {machine}"]
    if entry["format"] == "elf-paging":  # QEMU paging=true: a PT_LOAD per mapping, PN_XNUM
        return [f"ELF 64-bit LSB core file, {machine}", "too many program headers (65535)"]
    if entry["format"] == "kdump-flattened" and entry["filtered"] is None:
        # QEMU's kdump-zlib: file(1) prints only the header's utsname.machine, which QEMU 7.2
        # fills with its target's ELF_MACHINE_UNAME: "x86_64", but "Unknown" on aarch64.
        machine = {
            "x86_64": "x86_64",
            "aarch64": "Unknown",
            "i686": "i686",
            "riscv64": "Unknown",
            "armv7l": "Unknown",
        }[m["arch"]]
        return ["Flattened kdump compressed dump v6", f"machine {machine}"]
    if entry["format"] == "kdump-flattened":
        return ["Flattened kdump compressed dump v6", "system Linux", release]
    if entry["format"] == "kdump":
        return ["Kdump compressed dump v6", "system Linux", release, f"machine {m['arch']}"]
    raise AssertionError(entry)


@pytest.mark.parametrize("sid,fmt", sample_files())
def test_file_identifies(samples, sid, fmt):
    s = samples.get_built(sid)
    out = subprocess.run(
        [tool("file"), "-b", str(s.file(fmt))], capture_output=True, text=True, check=True
    ).stdout
    for want in expected_file_output(s.manifest, s.manifest["files"][fmt]):
        assert want in out, f"{want!r} not in file(1) output {out!r}"


# ---------------------------------------------------------------- drgn


@pytest.mark.parametrize(
    "sid,fmt", [p for a in DRGN_ARCHES for p in sample_files(DRGN_FORMATS, arch=a)]
)
def test_drgn_tasks_and_log(samples, sid, fmt):
    drgn = drgn_module()
    from drgn.helpers.linux.pid import for_each_task
    from drgn.helpers.linux.printk import get_printk_records

    s = samples.get_built(sid)
    m = s.manifest
    prog = drgn.Program()
    prog.set_core_dump(str(s.file(fmt)))
    prog.load_debug_info([str(samples.vmlinux(sid))], default=False, main=False)

    tasks = {}
    for t in for_each_task(prog):
        tasks[t.pid.value_()] = (
            t.tgid.value_(),
            t.real_parent.tgid.value_(),
            t.comm.string_().decode(),
        )
    for p in m["processes"]:
        assert p["pid"] in tasks, f"process {p} not in the dump's task list"
        tgid, ppid, comm = tasks[p["pid"]]
        assert (tgid, comm) == (p["pid"], p["comm"])
        if p["pid"] != 1:
            assert ppid == p["ppid"], p
    for th in m["threads"]:
        assert th["tid"] in tasks, f"thread {th} not in the dump's task list"
        tgid, _, comm = tasks[th["tid"]]
        assert (tgid, comm) == (th["tgid"], th["comm"])

    texts = [r.text.decode(errors="replace") for r in get_printk_records(prog)]
    assert m["marker"] in texts
    assert any("sysrq triggered crash" in t for t in texts)
    assert prog["init_uts_ns"].name.release.string_().decode() == m["kernel_release"]


# ---------------------------------------------------------------- crash


@pytest.mark.parametrize("sid,fmt", sample_files(arch="x86_64"))
def test_crash_sys_and_log(samples, sid, fmt, tmp_path):
    crash = tool("crash")
    s = samples.get_built(sid)
    m = s.manifest
    cmds = tmp_path / "cmds"
    cmds.write_text("sys\nlog\nquit\n")
    p = subprocess.run(
        [crash, "-s", "-i", str(cmds), str(samples.vmlinux(sid)), str(s.file(fmt))],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = p.stdout
    assert re.search(rf"RELEASE: {re.escape(m['kernel_release'])}\b", out), (
        out[-3000:] + p.stderr[-2000:]
    )
    assert "sysrq triggered crash" in out
    assert m["marker"] in out
