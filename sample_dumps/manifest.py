"""Ground truth: what the guest reported on its serial console plus the build inputs."""

from __future__ import annotations

import json
import lzma
import re
import subprocess
import tempfile
import zlib
from pathlib import Path

from .table import FORMAT_INFO
from .util import sha256

MANIFEST = "manifest.json"
#: 2: the exploration commands' ground truth (fds, mounts, net devices, meminfo, clock)
#: 3: the loaded modules as /proc/modules lists them (`modules`)
SCHEMA_VERSION = 3

_PROC = re.compile(r"KVMCORE pid=(\d+) ppid=(\d+) comm=(\S+)")
_THREAD = re.compile(r"KVMCORE tid=(\d+) tgid=(\d+) comm=(\S+)")
_PANIC = re.compile(r"KVMCORE panicker pid=(\d+) ppid=(\d+) cpu=(\d+) comm=(\S+)")
_UTS = re.compile(r"KVMCORE uts\.(sysname|release|version|machine)=(.*?)\r?$")
_MARKER = re.compile(r"KVMCORE marker=(\S+)")
_FD = re.compile(r"KVMCORE fd pid=(\d+) fd=(\d+) target=(.*?)\r?$")
_MOUNT = re.compile(r"KVMCORE mount dev=(\S+) dir=(\S+) type=(\S+)")
_NETDEV = re.compile(r"KVMCORE netdev name=(\S+) flags=(\S+) mtu=(\d+) mac=(\S*)")
_NETADDR = re.compile(r"KVMCORE netaddr name=(\S+) family=(\S+) addr=(\S+)")
_MEMINFO = re.compile(r"KVMCORE meminfo\.(\w+)=(\d+)")
_CLOCK = re.compile(r"KVMCORE clock date=(\d+) uptime=([\d.]+)")
_MODULE = re.compile(r"KVMCORE module name=(\S+) size=(\d+) refs=(\d+) state=(\S+) addr=(\S+)")


def parse_serial(text: str) -> dict:
    """Extract processes, threads, panicker, uts and marker from the guest's KVMCORE
    lines, (schema 2) the exploration commands' ground truth: `explore`, and (schema
    3) the modules /proc/modules listed: `modules`."""
    procs, threads, uts, panic, marker = [], [], {}, None, None
    explore: dict = {}
    modules: list[dict] = []
    for line in text.splitlines():
        if m := _MODULE.search(line):
            modules.append(
                {
                    "name": m[1],
                    "size": int(m[2]),
                    "refs": int(m[3]),
                    "state": m[4],
                    "address": int(m[5], 16),
                }
            )
            continue
        if m := _FD.search(line):
            fds = explore.setdefault("fds", {"pid": int(m[1]), "fds": {}})
            fds["fds"][m[2]] = m[3].strip()
            continue
        if m := _MOUNT.search(line):
            explore.setdefault("mounts", []).append({"device": m[1], "dir": m[2], "type": m[3]})
            continue
        if m := _NETDEV.search(line):
            explore.setdefault("netdevs", {})[m[1]] = {
                "flags": int(m[2], 0),
                "mtu": int(m[3]),
                "mac": m[4],
                "addrs": [],
            }
            continue
        if m := _NETADDR.search(line):
            explore.setdefault("netdevs", {}).setdefault(m[1], {"addrs": []})["addrs"].append(
                {"family": m[2], "addr": m[3]}
            )
            continue
        if m := _MEMINFO.search(line):
            explore.setdefault("meminfo_kb", {})[m[1]] = int(m[2])
            continue
        if m := _CLOCK.search(line):
            explore["clock"] = {
                "date": int(m[1]),
                "uptime": float(m[2]),
                "boot_time": int(m[1]) - float(m[2]),
            }
            continue
        if m := _PROC.search(line):
            procs.append({"pid": int(m[1]), "ppid": int(m[2]), "comm": m[3]})
        elif m := _THREAD.search(line):
            threads.append({"tid": int(m[1]), "tgid": int(m[2]), "comm": m[3]})
        elif m := _PANIC.search(line):
            panic = {"pid": int(m[1]), "ppid": int(m[2]), "cpu": int(m[3]), "comm": m[4]}
        elif m := _UTS.search(line):
            uts[m[1]] = m[2].strip()
        elif m := _MARKER.search(line):
            marker = m[1]
    return {
        "processes": procs,
        "threads": threads,
        "uts": uts,
        "panic": panic,
        "marker": marker,
        "explore": explore,
        "modules": modules,
    }


_GNU_BUILD_ID_NOTE = b"\x04\x00\x00\x00\x14\x00\x00\x00\x03\x00\x00\x00GNU\x00"


def _readelf_build_id(path: Path) -> str | None:
    out = subprocess.run(["readelf", "-n", str(path)], capture_output=True, text=True).stdout
    m = re.search(r"Build ID:\s*([0-9a-f]+)", out)
    return m[1] if m else None


def _decompress_kernel(data: bytes) -> bytes | None:
    """The kernel payload of a vmlinuz: arm64 Image.gz, or the xz/gzip payload of a bzImage."""
    for magic, make in (
        (b"\xfd7zXZ\x00", lambda: lzma.LZMADecompressor()),
        (b"\x1f\x8b\x08", lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)),
    ):
        start = data.find(magic)
        while start != -1:
            try:
                out = make().decompress(data[start:])
                if out[:4] == b"\x7fELF" or len(out) > 4 << 20:
                    return out
            except (lzma.LZMAError, zlib.error, EOFError):
                pass
            start = data.find(magic, start + 1)
    return None


def build_id(vmlinux: Path | None, vmlinuz: Path) -> tuple[str | None, str | None]:
    """(build_id, source) from the kernel package, never from a dump."""
    if vmlinux and vmlinux.exists():
        bid = _readelf_build_id(vmlinux)
        if bid:
            return bid, "readelf -n dbg vmlinux"
    raw = vmlinuz.read_bytes()
    payload = _decompress_kernel(raw)
    if payload is None:
        # an uncompressed image (riscv64's Image): its build-id note is in the clear
        i = raw.find(_GNU_BUILD_ID_NOTE)
        if i != -1:
            desc = raw[i + len(_GNU_BUILD_ID_NOTE) : i + len(_GNU_BUILD_ID_NOTE) + 20]
            return desc.hex(), "GNU build-id note in the uncompressed kernel Image"
        return None, None
    if payload[:4] == b"\x7fELF":
        with tempfile.NamedTemporaryFile(suffix=".vmlinux") as tmp:
            tmp.write(payload)
            tmp.flush()
            bid = _readelf_build_id(Path(tmp.name))
        if bid:
            return bid, "readelf -n decompressed vmlinuz"
    i = payload.find(_GNU_BUILD_ID_NOTE)
    if i != -1:
        desc = payload[i + len(_GNU_BUILD_ID_NOTE) : i + len(_GNU_BUILD_ID_NOTE) + 20]
        return desc.hex(), "GNU build-id note in decompressed vmlinuz Image"
    return None, None


def file_entry(sample_dir: Path, fmt: str) -> dict:
    path = sample_dir / f"vmcore.{fmt}"
    kind, filtered, compression = FORMAT_INFO[fmt]
    return {
        "path": path.name,
        "size": path.stat().st_size,
        "sha256": sha256(path),
        "format": kind,
        "filtered": filtered,
        "compression": compression,
    }


def write(sample_dir: Path, manifest: dict) -> Path:
    path = sample_dir / MANIFEST
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    return path


def load(sample_dir: Path) -> dict | None:
    try:
        return json.loads((sample_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def release_tuple(release: str) -> tuple[int, ...]:
    """(6, 12) of "6.12.107+deb13-s390x", (6, 1, 0) of "6.1.0-50-s390x"."""
    m = re.match(r"(\d+(?:\.\d+)*)", release)
    return tuple(int(x) for x in m[1].split(".")) if m else ()


def is_complete(
    sample_dir: Path,
    formats: tuple[str, ...],
    min_schema: int = 1,
    min_release: str | None = None,
) -> bool:
    """Manifest present, of at least the schema the sample's tests need (an older one
    lacks ground truth they read: rebuild), of a kernel at least `min_release` (a row
    moved to a newer suite: the older cached kernel is rebuilt), lists every expected
    format, and every file's sha256 matches."""
    m = load(sample_dir)
    if not m or m.get("schema", 1) < min_schema or set(m.get("files", {})) != set(formats):
        return False
    if min_release and release_tuple(m.get("kernel_release", "")) < release_tuple(min_release):
        return False
    for entry in m["files"].values():
        p = sample_dir / entry["path"]
        if not p.exists() or p.stat().st_size != entry["size"] or sha256(p) != entry["sha256"]:
            return False
    return True
