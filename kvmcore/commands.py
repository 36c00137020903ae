"""The per-command views, as data (for --json) and as plain text.

The CLI prints `render(...)`; the gdb server's `monitor` commands print the
very same text.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import KvmcoreError
from .kernel import has_timestamps

if TYPE_CHECKING:
    from .dump import Dump

COMMANDS = ("ps", "dmesg", "mods", "sys", "bt")


def ps_data(dump: "Dump") -> dict[str, Any]:
    result = dump.kernel.task_list
    return {"tasks": [t.as_dict() for t in result.tasks], "count": len(result.tasks),
            "partial": result.partial, "problem": result.problem}


def dmesg_data(dump: "Dump") -> dict[str, Any]:
    log = dump.kernel.kernel_log
    return {"layout": log.layout, "partial": log.partial, "problem": log.problem,
            "timestamps": has_timestamps(log),
            "records": [{"seq": r.seq, "timestamp_ns": r.timestamp_ns, "level": r.level,
                         "facility": r.facility, "caller": r.caller, "text": r.text}
                        for r in log.records]}


def mods_data(dump: "Dump") -> dict[str, Any]:
    return {"modules": [m.as_dict() for m in dump.kernel.modules()]}


def sys_data(dump: "Dump") -> dict[str, Any]:
    from .report.collect import _dump_section, _headline, _system

    out = {"dump": _dump_section(dump)}
    for key, fn in (("system", _system), ("panic", _headline)):
        try:
            out[key] = fn(dump)
        except KvmcoreError as exc:
            out[key] = {"available": False, "reason": exc.message}
    return out


def bt_data(dump: "Dump", pid: int | None = None, all_tasks: bool = False) -> dict[str, Any]:
    from .report.collect import frames_of

    kernel = dump.kernel
    if all_tasks:
        chosen = kernel.tasks()
    elif pid is not None:
        task = kernel.find_task(pid)
        if task is None:
            raise KvmcoreError(f"no task with pid {pid}", dump.path)
        chosen = [task]
    else:
        task = kernel.panic_task()
        if task is None:
            raise KvmcoreError("the panicking task is not known; name one with --pid", dump.path)
        chosen = [task]
    out = []
    for task in chosen:
        entry = task.as_dict()
        try:
            entry["backtrace"] = frames_of(dump, task, 64)
        except KvmcoreError as exc:
            entry["backtrace"] = {"available": False, "reason": exc.message}
        out.append(entry)
    return {"tasks": out}


def info_data(dump: "Dump") -> dict[str, Any]:
    """Format, arch, release, KASLR offset: what can be said without walking anything."""
    vi = dump.vmcoreinfo
    data = {"path": dump.path, "format": dump.mem.describe(), "arch": dump.arch.name,
            "os": dump.os, "release": vi.osrelease if vi else None,
            "kaslr_offset": f"{dump.kernel_offset:#x}" if dump.os == "linux" else None,
            "cpus_dumped": len(dump.mem.prstatus_notes()),
            "memory_bytes": sum(r.size for r in dump.phys_ranges())}
    if data["release"] is None and dump.os in ("linux", "freebsd"):
        try:  # from the kernel's memory; FreeBSD's osrelease needs the kernel's symbols
            data["release"] = dump.kernel.release or None
        except KvmcoreError:
            pass
    return data


def sym_data(dump: "Dump", what: str) -> dict[str, Any]:
    """A symbol's address, or an address's `func+off/size [module]`."""
    table = dump.symbols
    if what[:1].isdigit():
        addr = parse_address(what)
        return {"address": f"{addr:#x}", "symbol": table.symbolize(addr), "source": table.source}
    return {"name": what, "address": f"{table.lookup(what):#x}", "source": table.source}


def read_data(dump: "Dump", address: str, length: int, physical: bool = False) -> dict[str, Any]:
    """Bytes at a kernel virtual (or physical) address, with the translation."""
    addr = parse_address(address)
    data = dump.read_phys(addr, length) if physical else dump.read(addr, length)
    out: dict[str, Any] = {"address": f"{addr:#x}", "hex": data.hex(), "physical": None,
                           "word_size": dump.word_size, "byteorder": dump.byteorder}
    if not physical:
        t = dump.translate(addr)
        out.update(physical=f"{t.pa:#x}", page_size=t.page_size, file_offset=t.file_offset)
    return out


def parse_address(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise KvmcoreError(f"not an address: {text!r}") from None


# -- text -----------------------------------------------------------------
def info_text(data: dict[str, Any]) -> str:
    return "\n".join(f"{k:>13}: {v}" for k, v in data.items())


def sym_text(data: dict[str, Any]) -> str:
    return data.get("symbol") or data["address"]


def read_text(data: dict[str, Any]) -> str:
    """Words of the dump's width and byte order, 16 bytes a line."""
    raw, width, addr = bytes.fromhex(data["hex"]), data["word_size"], int(data["address"], 16)
    lines = []
    for off in range(0, len(raw), 16):
        chunk = raw[off:off + 16]
        words = " ".join(f"{int.from_bytes(chunk[i:i + width], data['byteorder']):0{width * 2}x}"
                         for i in range(0, len(chunk) - width + 1, width))
        lines.append(f"{addr + off:016x}:  {words}")
    return "\n".join(lines)
def ps_text(data: dict[str, Any]) -> str:
    # kernels whose threads have ids of their own (FreeBSD td_tid) get a TID column
    tids = any("tid" in t for t in data["tasks"])
    lines = ["   PID    PPID" + ("     TID" if tids else "") + "  CPU  ST  TASK                COMM"]
    for t in data["tasks"]:
        mark = ">" if t["on_cpu"] else " "
        comm = f"[{t['comm']}]" if t["idle"] or t["tgid"] != t["pid"] else t["comm"]
        tid = f" {t['tid']:7d}" if tids else ""
        lines.append(f"{mark}{t['pid']:6d} {t['ppid']:7d}{tid} {t['cpu']:4d}  {t['state']:2s}  "
                     f"{t['address']:18s}  {comm}")
    if data.get("partial"):
        lines.append(f"(partial: {data['problem']})")
    return "\n".join(lines)


def dmesg_text(data: dict[str, Any]) -> str:
    out = []
    stamped = data.get("timestamps", True)  # FreeBSD's msgbuf has none: lines as written
    for r in data["records"]:
        secs, nsec = divmod(r["timestamp_ns"], 1_000_000_000)
        prefix = f"[{secs:5d}.{nsec // 1000:06d}] " if stamped else ""
        for line in r["text"].split("\n"):
            out.append(prefix + line)
    if data.get("partial"):
        out.append(f"(partial: {data['problem']})")
    return "\n".join(out)


def mods_text(data: dict[str, Any]) -> str:
    lines = ["MODULE              BASE                SIZE  TAINTS"]
    for m in data["modules"]:
        lines.append(f"{m['name']:18s}  {m['base']:18s}  {m['size']:7d}  {m['taints']}")
    return "\n".join(lines)


def sys_text(data: dict[str, Any]) -> str:
    d, s, p = data["dump"], data.get("system", {}), data.get("panic", {})
    rows = [("DUMPFILE", f"{d['path']}  [{d['format_description']}]"),
            ("ARCH", d["arch"]), ("KASLR OFFSET", d["kaslr_offset"] or "-"),
            ("SYMBOLS", str(d["symbols"])), ("TYPES", str(d["types"]))]
    if s.get("available", True) and "release" in s:
        online = s.get("online_cpus")
        rows += [("NODENAME", s["nodename"]), ("RELEASE", s["release"]),
                 ("VERSION", s["version"]), ("MACHINE", s["machine"]),
                 ("CPUS", f"{s['cpus']}" + (f" (online: {online})" if online is not None else "")),
                 ("MEMORY", _size(s["memory_bytes"]))]
    if p.get("available", True) and "panic_message" in p:
        task = p.get("task")
        rows += [("PANIC", p["panic_message"] or "-"),
                 ("TASK", f"{task['pid']} ({task['comm']})" if task else "-"),
                 ("CPU", str(p["cpu"])),
                 ("UPTIME", f"{p['uptime_seconds']} s" if p.get("uptime_seconds") is not None
                  else "unknown"),
                 ("TAINT", p["taint"])]
    return "\n".join(f"{k:>13}: {v}" for k, v in rows)


def bt_text(data: dict[str, Any]) -> str:
    out = []
    for t in data["tasks"]:
        tid = f"  TID: {t['tid']}" if "tid" in t else ""  # FreeBSD's td_tid
        out.append(f"PID: {t['pid']}{tid}  TASK: {t['address']}  CPU: {t['cpu']}  "
                   f"COMMAND: \"{t['comm']}\"")
        out.extend(frame_lines(t["backtrace"]))
        out.append("")
    return "\n".join(out).rstrip("\n")


def frame_lines(bt: dict[str, Any]) -> list[str]:
    if not bt.get("available", True):
        return [f"  (backtrace unavailable: {bt['reason']})"]
    out = []
    for f in bt["frames"]:
        func = f["function"] or "?"
        mod = f" [{f['module']}]" if f["module"] else ""
        guess = " (guess)" if f["guessed"] else ""
        kind = f"  <{f['kind']}>" if f["kind"] not in (None, "normal") else ""
        out.append(f" #{f['index']:<2d} [{f['sp'] or '?':>18}] {func}{mod} at {f['pc']}{guess}{kind}")
    if bt.get("stopped"):
        out.append(f"  (stopped: {bt['stopped']})")
    return out


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def render(name: str, dump: "Dump", args: list[str] | None = None) -> str:
    """Plain-text output of command `name` (ps, dmesg, mods, sys, bt [PID|-a])."""
    args = args or []
    if name == "ps":
        return ps_text(ps_data(dump))
    if name == "dmesg":
        return dmesg_text(dmesg_data(dump))
    if name == "mods":
        return mods_text(mods_data(dump))
    if name == "sys":
        return sys_text(sys_data(dump))
    if name == "bt":
        if args and args[0] in ("-a", "--all"):
            return bt_text(bt_data(dump, all_tasks=True))
        pid = int(args[0]) if args else None
        return bt_text(bt_data(dump, pid=pid))
    raise KvmcoreError(f"unknown command {name!r}; try one of {', '.join(COMMANDS)}")
