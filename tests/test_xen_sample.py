"""The Xen guest sample (sample_dumps/xen.py) is real: its `xl dump-core` files are
checked with independent tools only (readelf, crash 8.0.2), against the layout of Xen's
docs/misc/dump-core-format.txt and the manifest's ground truth, never with kvmcore."""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from conftest import sample_files, sample_ids

from sample_dumps import xen
from sample_dumps.table import BY_ID
from sample_dumps.util import sha256

PV_IDS = sample_ids(kind="xen-pv")
# the HVM guest's sample is the slow tier (./dev.sh slow builds it)
HVM = [pytest.param("xen-hvm", marks=pytest.mark.slow)]
XEN_IDS = PV_IDS + HVM
XEN_FILES = sample_files(kind="xen-pv") + [
    pytest.param(p.values[0], f, marks=pytest.mark.slow)
    for p in HVM
    for f in BY_ID["xen-hvm"].formats
]
APT_HINT = "apt-get install $(grep -v '^#' sample_dumps/apt-packages.txt)"

# ELF note types of .note.Xen (dump-core-format.txt)
XEN_ELFNOTE_DUMPCORE_NONE = 0x2000000
XEN_ELFNOTE_DUMPCORE_HEADER = 0x2000001
XEN_ELFNOTE_DUMPCORE_XEN_VERSION = 0x2000002
XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION = 0x2000003
MAGIC = {"pv": 0xF00FEBED, "hvm": 0xF00FEBEE}
#: the section mapping the pages of .xen_pages to the guest's frames, and its entry size
FRAME_MAP = {"pv": (".xen_p2m", 16), "hvm": (".xen_pfn", 8)}  # (pfn, gmfn) pairs; pfns


def tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: {APT_HINT}", pytrace=False)
    return path


def readelf(*args: str) -> str:
    return subprocess.run(
        [tool("readelf"), *args], capture_output=True, text=True, check=True
    ).stdout


def sections(path: Path) -> dict[str, tuple[int, int, int]]:
    """{name: (offset, size, entsize)} from readelf -S -W."""
    out = {}
    for line in readelf("-S", "-W", str(path)).splitlines():
        m = re.match(
            r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+[0-9a-f]+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)",
            line,
        )
        if m:
            out[m[1]] = (int(m[2], 16), int(m[3], 16), int(m[4], 16))
    return out


def section_bytes(path: Path, name: str) -> bytes:
    """A section's contents from readelf's hex dump (-x): 16 bytes a line, in four
    groups of up to 8 hex digits after the address."""
    data = bytearray()
    for line in readelf("-x", name, str(path)).splitlines():
        m = re.match(r"\s+0x[0-9a-f]{8} ", line)
        if m:
            data += bytes.fromhex(line[m.end() : m.end() + 35].replace(" ", ""))
    return bytes(data)


def notes(blob: bytes) -> list[tuple[str, int, bytes]]:
    """(name, type, desc) of each ELF note (4-byte aligned names and descs)."""
    out, off = [], 0
    while off + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, off)
        off += 12
        name = blob[off : off + namesz].rstrip(b"\0").decode()
        off += (namesz + 3) & ~3
        out.append((name, ntype, blob[off : off + descsz]))
        off += (descsz + 3) & ~3
    return out


# ---------------------------------------------------------------- builder (no sample)


@pytest.mark.fast
@pytest.mark.parametrize("kind", sorted(xen.MODES))
def test_dom0_init_placeholders_filled(kind):
    assert not re.search(r"@[A-Z_]+@", xen.dom0_init(xen.MODES[kind]))


@pytest.mark.fast
def test_guest_init_has_the_wait_hook():
    """xen.GUEST_WAIT goes in where guest/init.sh says, after "KVMCORE ready"."""
    init = (Path(xen.__file__).parent / "guest" / "init.sh").read_text()
    assert init.index('echo "KVMCORE ready"') < init.index("@BEFORE_CRASH@")
    assert init.index("@BEFORE_CRASH@") < init.index("/bin/crasher")


@pytest.mark.fast
def test_multiboot_paths_refused_with_a_comma(tmp_path):
    bad = tmp_path / "a,b"
    with pytest.raises(RuntimeError, match="comma"):
        xen.qemu_cmd(xen.MODES["xen-pv"], tmp_path / "xen", bad, tmp_path / "i", tmp_path / "d")


# ---------------------------------------------------------------- manifest


@pytest.mark.parametrize("sid", XEN_IDS)
def test_manifest(samples, sid):
    s = samples.get_built(sid)
    m = s.manifest
    spec = BY_ID[sid]
    assert m["id"] == sid and m["kind"] == spec.kind and m["arch"] == "x86_64"
    assert m["uts"]["release"] == m["kernel_release"]
    g = m["xen"]["guest"]
    assert g["type"] == xen.MODES[spec.kind].guest_type
    assert 128 <= g["memory_mb"] <= 256 and g["vcpus"] == 2
    # the kernel's own "Kernel Offset:" line: a PV guest's kernel is not relocated; an
    # HVM guest's is by KASLR (whose offset may come out 0: one build's did)
    assert isinstance(g["kernel_offset"], int)
    assert m["kaslr"] == (g["type"] == "hvm")
    if g["type"] == "pv":
        assert g["kernel_offset"] == 0
    assert m["xen"]["version"].startswith(xen.XEN_SERIES + ".")
    comms = [p["comm"] for p in m["processes"]]
    for name in ("init", "sleeper_a", "sleeper_b", "sleeper_c", "busyloop_task", "crasher"):
        assert comms.count(name) == 1, name
    assert comms.count("sleep") == 3
    tt = next(p for p in m["processes"] if p["comm"] == "threaded_task")
    assert sorted(t["comm"] for t in m["threads"]) == [f"worker-{i}" for i in range(4)]
    assert all(t["tgid"] == tt["pid"] for t in m["threads"])
    assert m["panic"]["comm"] == "crasher" and m["panic"]["cpu"] == 1
    assert set(m["files"]) == set(spec.formats)
    assert {e["format"] for e in m["files"].values()} == {"xen-core"}


@pytest.mark.parametrize("sid", XEN_IDS)
def test_guest_console_log(samples, sid):
    """The guest's console (PV: xenconsoled's log, HVM: its serial port) holds the
    kernel's own panic line for the task and CPU init's KVMCORE lines named, and the
    marker it logged."""
    s = samples.get_built(sid)
    m = s.manifest
    text = (s.dir / m["serial_log"]).read_text(errors="replace")
    p = m["panic"]
    assert re.search(rf"CPU: {p['cpu']} PID: {p['pid']} Comm: {p['comm']}\b", text)
    assert "Kernel panic - not syncing: sysrq triggered crash" in text
    assert re.search(rf"^\[[\s\d.]+\] {re.escape(m['marker'])}\r?$", text, re.M)


@pytest.mark.parametrize("sid,fmt", XEN_FILES)
def test_sha256(samples, sid, fmt):
    s = samples.get_built(sid)
    entry = s.manifest["files"][fmt]
    assert s.file(fmt).stat().st_size == entry["size"]
    assert sha256(s.file(fmt)) == entry["sha256"]


# ---------------------------------------------------------------- readelf


@pytest.mark.parametrize("sid,fmt", XEN_FILES)
def test_dump_core_layout(samples, sid, fmt):
    """ELF64 core, no program headers, the sections of the guest's type (.xen_p2m for
    PV, .xen_pfn for HVM), and a .note.Xen whose header note gives the type's magic,
    the guest's vCPU count and the page count of .xen_pages."""
    s = samples.get_built(sid)
    m = s.manifest
    path = s.file(fmt)
    gtype = m["xen"]["guest"]["type"]
    frame_map, entry = FRAME_MAP[gtype]
    other_map = next(n for n, _ in FRAME_MAP.values() if n != frame_map)
    head = readelf("-h", str(path))
    assert re.search(r"Class:\s+ELF64", head) and re.search(r"Type:\s+CORE", head)
    assert re.search(r"Number of program headers:\s+0\b", head)
    sec = sections(path)
    for name in (".note.Xen", ".xen_prstatus", ".xen_shared_info", ".xen_pages", frame_map):
        assert name in sec, f"{name} not in {sorted(sec)}"
    assert other_map not in sec
    vcpus = m["xen"]["guest"]["vcpus"]

    found = {t: (n, d) for n, t, d in notes(section_bytes(path, ".note.Xen"))}
    assert all(found[t][0] == "Xen" for t in found)
    assert XEN_ELFNOTE_DUMPCORE_NONE in found
    magic, nr_vcpus, nr_pages, page_size = struct.unpack_from(
        "<QQQQ", found[XEN_ELFNOTE_DUMPCORE_HEADER][1]
    )
    assert magic == MAGIC[gtype]
    assert nr_vcpus == vcpus and page_size == 4096
    major, minor = struct.unpack_from("<QQ", found[XEN_ELFNOTE_DUMPCORE_XEN_VERSION][1])
    assert f"{major}.{minor}" == xen.XEN_SERIES
    assert struct.unpack_from("<Q", found[XEN_ELFNOTE_DUMPCORE_FORMAT_VERSION][1]) == (1,)

    assert sec[".xen_pages"][1] == nr_pages * page_size
    assert sec[frame_map][1] == nr_pages * entry
    # the guest's memory, every page of it (HVM: less the frames its firmware gave back)
    assert nr_pages * page_size <= m["xen"]["guest"]["memory_mb"] << 20
    assert nr_pages * page_size >= (m["xen"]["guest"]["memory_mb"] - 8) << 20
    _, size, entsize = sec[".xen_prstatus"]
    assert size == vcpus * entsize  # one vcpu_guest_context per vCPU


# ---------------------------------------------------------------- crash


def crash_output(samples, sid: str, path: Path, cmds: str, tmp_path: Path) -> str:
    crash = tool("crash")
    f = tmp_path / "cmds"
    f.write_text(cmds + "\nquit\n")
    p = subprocess.run(
        [crash, "-s", "-i", str(f), str(samples.vmlinux(sid)), str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return p.stdout + p.stderr


@pytest.mark.parametrize("sid", PV_IDS)
def test_crash_reads_the_crashed_guest(samples, sid, tmp_path):
    """crash 8.0.2 reads Xen dump-core files with the guest's vmlinux: release, log
    (marker and panic) and the panicking task's backtrace through sysrq_handle_crash."""
    s = samples.get_built(sid)
    m = s.manifest
    out = crash_output(samples, sid, s.file("xen-core"), "sys\nlog\nbt", tmp_path)
    assert re.search(rf"RELEASE: {re.escape(m['kernel_release'])}\b", out), out[-3000:]
    assert m["marker"] in out
    assert "sysrq triggered crash" in out
    p = m["panic"]
    assert re.search(
        rf"PID: {p['pid']}\s+TASK: \S+\s+CPU: {p['cpu']}\s+COMMAND: \"{p['comm']}\"", out
    )
    assert "sysrq_handle_crash" in out


@pytest.mark.parametrize("sid", PV_IDS)
def test_crash_reads_the_live_guest(samples, sid, tmp_path):
    """The live dump was taken after the marker and before the crash: crash finds the
    marker in its log and no panic."""
    s = samples.get_built(sid)
    m = s.manifest
    out = crash_output(samples, sid, s.file("xen-core-live"), "sys\nlog", tmp_path)
    assert re.search(rf"RELEASE: {re.escape(m['kernel_release'])}\b", out), out[-3000:]
    assert m["marker"] in out
    assert "sysrq triggered crash" not in out
