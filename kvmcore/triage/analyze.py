"""One dump -> one compact result: what a triage worker sends back.

:func:`analyze_dump` never raises: a dump that cannot be opened or analyzed is a
result with ``ok: false`` and its error, so a fleet run never fails on one file.
It reads the dump where it lies (the path) and returns a few kilobytes: the
signature, the headline, the top of the backtrace and small facts, never dump
bytes. It is idempotent: analyzing a dump twice gives the same result (the
``worker`` and ``seconds`` fields aside), which is what lets Dask retry the tasks
of a lost worker elsewhere.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from typing import Any

from ..errors import KvmcoreError
from .signature import facts_from_report, signature

#: frames of the representative backtrace kept in a result
BACKTRACE_FRAMES = 24
#: log lines read for the signature (the crash report precedes the panic line)
LOG_LINES = 400
#: log lines kept in a result (the tail, for the member's page)
LOG_TAIL = 30

VmlinuxIndex = dict[str, dict[str, str]]  # {"build_id": {id: path}, "release": {rel: path}}


def vmlinux_build_id(path: str) -> str | None:
    """The (first) GNU build-id of an ELF file (a vmlinux), or None."""
    from ..symbols.vmlinux import VmlinuxFile

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"\x7fELF":
                return None
        ids = VmlinuxFile(path).build_ids()
    except Exception:  # noqa: BLE001 - any unreadable or odd file is "no build id"
        return None
    return ids[0] if ids else None


def index_vmlinux_dir(directory: str) -> VmlinuxIndex:
    """The kernels under `directory` (recursively), by GNU build-id and by release
    (from a ``vmlinux-<release>`` file name, as Debian's -dbg packages name them,
    or a ``<release>/vmlinux`` directory); and ``System.map-<release>`` files by
    release, used when no vmlinux matches a dump."""
    by_id: dict[str, str] = {}
    by_release: dict[str, str] = {}
    maps: dict[str, str] = {}
    for root, _dirs, files in os.walk(directory, followlinks=True):
        for name in sorted(files):
            path = os.path.join(root, name)
            if name.startswith("System.map-"):
                maps.setdefault(name[len("System.map-") :], path)
                continue
            if not (name == "vmlinux" or name.startswith("vmlinux-")):
                continue
            bid = vmlinux_build_id(path)
            if bid is None:
                continue
            by_id.setdefault(bid, path)
            release = name[len("vmlinux-") :] if name != "vmlinux" else os.path.basename(root)
            by_release.setdefault(release, path)
    return {"build_id": by_id, "release": by_release, "system_map": maps}


def _choose_vmlinux(dump: Any, index: VmlinuxIndex | None) -> tuple[str | None, str | None]:
    info = dump.vmcoreinfo
    if not index or info is None:
        return None, None
    bid = info.build_id
    if bid and bid.lower() in index.get("build_id", {}):
        return index["build_id"][bid.lower()], "build-id"
    rel = info.osrelease
    if rel and rel in index.get("release", {}):
        return index["release"][rel], "release"
    return None, None


def _choose_system_map(dump: Any, index: VmlinuxIndex | None) -> str | None:
    info = dump.vmcoreinfo
    if not index or info is None or not info.osrelease:
        return None
    return index.get("system_map", {}).get(info.osrelease)


def _frame_text(frame: dict[str, Any]) -> str:
    fn = frame.get("function") or frame.get("pc") or "?"
    mod = frame.get("module")
    return f"{fn} [{mod}]" if mod else str(fn)


def analyze_dump(path: str, key: str, vmlinux_index: VmlinuxIndex | None = None) -> dict[str, Any]:
    """Analyze one dump; the compact result (see the module's docstring)."""
    import kvmcore
    from kvmcore.report.collect import build_report

    t0 = time.monotonic()
    out: dict[str, Any] = {
        "key": key,
        "path": path,
        "ok": False,
        "error": None,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
    }
    try:
        st = os.stat(path)
        out["size"], out["mtime"] = st.st_size, int(st.st_mtime)
    except OSError as exc:
        out["error"] = f"cannot stat: {exc.strerror or exc}"
        out["exit_code"] = 6
        out["seconds"] = round(time.monotonic() - t0, 3)
        return out
    dump = None
    try:
        sidecar = path + ".vmlinux"
        vmlinux, how = (sidecar, "sidecar") if os.path.isfile(sidecar) else (None, None)
        dump = kvmcore.open(path, vmlinux)
        if vmlinux is None:
            vmlinux, how = _choose_vmlinux(dump, vmlinux_index)
            system_map = None if vmlinux else _choose_system_map(dump, vmlinux_index)
            if vmlinux is not None or system_map is not None:
                dump.close()
                dump = kvmcore.open(path, vmlinux, system_map=system_map)
                if system_map is not None:
                    vmlinux, how = system_map, "system-map"
        report = build_report(dump, log_lines=LOG_LINES)
        sig = signature(facts_from_report(report))
        headline = report.get("headline") or {}
        bt = report.get("backtrace") or {}
        d = report.get("dump") or {}
        task = headline.get("task") or {}
        out.update(
            ok=True,
            signature=sig.as_dict(),
            headline={
                "panic_message": headline.get("panic_message"),
                "pid": task.get("pid"),
                "comm": task.get("comm"),
                "cpu": headline.get("cpu"),
                "uptime_seconds": headline.get("uptime_seconds"),
                "taint": headline.get("taint"),
            },
            release=headline.get("release") or (report.get("system") or {}).get("release"),
            arch=headline.get("arch") or d.get("arch"),
            crash_time=headline.get("crash_time"),
            build_id=dump.vmcoreinfo.build_id if dump.vmcoreinfo else None,
            kaslr_offset=d.get("kaslr_offset"),
            format=d.get("format"),
            vmlinux=vmlinux,
            vmlinux_match=how,
            backtrace=[_frame_text(f) for f in (bt.get("frames") or [])[:BACKTRACE_FRAMES]],
            log_tail=[str(x) for x in ((report.get("log") or {}).get("lines") or [])[-LOG_TAIL:]],
            problems=list(report.get("problems") or [])[:10],
        )
    except KvmcoreError as exc:
        out["error"] = exc.message
        out["exit_code"] = exc.exit_code
    except MemoryError:
        out["error"] = "out of memory analyzing the dump"
        out["exit_code"] = 1
    except Exception as exc:  # noqa: BLE001 - one bad dump is one error row, never a failed run
        out["error"] = f"internal error: {type(exc).__name__}: {exc}"
        out["exit_code"] = 70
    finally:
        if dump is not None:
            with contextlib.suppress(Exception):
                dump.close()
    out["seconds"] = round(time.monotonic() - t0, 3)
    return out
