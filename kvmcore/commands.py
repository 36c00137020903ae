"""The command table: every command that shows something of a dump.

`COMMANDS` maps each name to a `Command`. The `kvmcore` CLI (kvmcore/cli/app.py,
and cli/fastpath.py for the common lines), the gdb server's `monitor`
(kvmcore/gdbserver/target.py) and the interactive shell take their commands
from it and from nowhere else, so a command is written once:

    Command(name, help, data, text, params)

* ``data(dump, **args) -> dict``: the work, as plain JSON-able data; this is
  what ``--json`` prints, and an ordinary library call, e.g.
  ``kvmcore.commands.PS.data(kvmcore.open(path))`` or ``ps_data(dump)``.
* ``text(data) -> str``: that data as the CLI prints it, and `monitor` too.
* ``params``: the argument spec, one `Param` per keyword of ``data``: its
  type, default, help and spellings (positional, or ``--pid``-style options).
  The CLI builds its typer arguments from it; `Command.parse` reads the same
  arguments from a command line (``monitor bt 115``, ``monitor read ADDR 32 --phys``).
* ``cmd.run(dump, **cmd.parse(words))``: one command line's words
  (``["bt", "--all"]`` less the name) to its text: what `monitor` does.

How a dump is opened (the dump, vmlinux, --arch, --system-map, --partial)
is the caller's business, not the table's. `serve` and `symfile` are CLI
actions on a dump (serve it to gdb, write a file), not views, so they are
not in the table.

| name    | data          | text          | arguments                          |
|---------|---------------|---------------|------------------------------------|
| analyze | analyze_data  | analyze_text  | --log-lines N                      |
| ps      | ps_data       | ps_text       |                                    |
| dmesg   | dmesg_data    | dmesg_text    |                                    |
| mods    | mods_data     | mods_text     |                                    |
| sys     | sys_data      | sys_text      |                                    |
| bt      | bt_data       | bt_text       | [--pid] PID, --all/-a, --cpu/-c N, |
|         |               |               | --module-dir DIR                   |
| info    | info_data     | info_text     |                                    |
| sym     | sym_data      | sym_text      | WHAT (a symbol name or an address) |
| read    | read_data     | read_text     | ADDRESS [LENGTH] --phys            |
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import crashviews, explore
from .errors import AddressError, KvmcoreError, NotFoundError, NotInDumpError, UsageError
from .kernel import has_timestamps
from .report import build_report
from .report.collect import _dump_section, _headline, _system, cpu_frames, frames_of, log_task
from .report.lines import frame_lines
from .textsafe import printable, printable_tree

if TYPE_CHECKING:
    from .dump import Dump


# -- data -----------------------------------------------------------------
def analyze_data(
    dump: Dump, log_lines: int = 40, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The crash report (kvmcore/schema/report.schema.json); `progress` is
    told each stage's name (the CLI shows a spinner)."""
    return build_report(dump, log_lines=log_lines, progress=progress)


def ps_data(dump: Dump) -> dict[str, Any]:
    result = dump.kernel.task_list
    return {
        "tasks": [t.as_dict() for t in result.tasks],
        "count": len(result.tasks),
        "partial": result.partial,
        "problem": result.problem,
    }


def dmesg_data(dump: Dump) -> dict[str, Any]:
    log = dump.kernel.kernel_log
    return {
        "layout": log.layout,
        "partial": log.partial,
        "problem": log.problem,
        "timestamps": has_timestamps(log),
        "records": [
            {
                "seq": r.seq,
                "timestamp_ns": r.timestamp_ns,
                "level": r.level,
                "facility": r.facility,
                "caller": r.caller,
                "text": r.text,
            }
            for r in log.records
        ],
    }


def mods_data(dump: Dump) -> dict[str, Any]:
    return {"modules": [m.as_dict() for m in dump.kernel.modules()]}


def sys_data(dump: Dump) -> dict[str, Any]:
    out = {"dump": _dump_section(dump)}
    out["dump"]["kaslr_offset_source"] = _kaslr_source(dump)
    out["dump"]["vmcoreinfo_conflicts"] = _vmcoreinfo_conflicts(dump)
    for key, fn in (("system", _system), ("panic", _headline)):
        try:
            out[key] = fn(dump)
        except KvmcoreError as exc:
            out[key] = {"available": False, "reason": exc.message}
    return out


def bt_data(
    dump: Dump,
    pid: int | None = None,
    all_tasks: bool = False,
    cpu: int | None = None,
    module_dir: str | None = None,
) -> dict[str, Any]:
    """Backtraces; `module_dir` (module debug files, as kvmcore.open's) gives
    module frames their file:line. `cpu` alone walks from that CPU's saved
    registers (crash's bt -c); with `pid` it picks the task of that pid on
    that CPU: `pid` 0 is each CPU's own idle task (swapper/N), which crash
    shows as `bt` of that CPU's idle task."""
    if module_dir is not None:
        from .unwind import use_module_dir

        use_module_dir(dump, module_dir)
    kernel = dump.kernel
    if cpu is not None and pid is None:
        return {"tasks": [_cpu_entry(dump, cpu)]}
    if all_tasks:
        chosen = kernel.tasks()
    elif pid is not None and cpu is not None:
        task = next((t for t in kernel.tasks() if t.pid == pid and t.cpu == cpu), None)
        if task is None:
            what = f"CPU {cpu} has no idle task" if pid == 0 else f"no task {pid} on CPU {cpu}"
            raise NotFoundError(what, dump.path)
        chosen = [task]
    elif pid is not None:
        task = kernel.find_task(pid)
        if task is None:
            raise NotFoundError(f"no task with pid {pid}", dump.path)
        chosen = [task]
    else:
        task = kernel.panic_task()
        if task is None:
            if kernel.panic.cpu is not None:  # its task_struct unreadable: its CPU's trace
                return {"tasks": [_cpu_entry(dump, kernel.panic.cpu)]}
            raise NotFoundError("the panicking task is not known; name one with --pid", dump.path)
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


def _cpu_entry(dump: Dump, cpu: int) -> dict[str, Any]:
    """`bt --cpu N`: the trace from CPU N's saved registers, with the task
    that ran there when it can be read, else what the panic's log says of it
    (`source: "log"`), else only its address (rq->curr) or nothing."""
    kernel = dump.kernel
    backtrace = cpu_frames(dump, cpu, 64)  # raises when the dump has no registers for it
    try:
        task = kernel.running_task(cpu)
    except KvmcoreError:
        task = None
    if task is not None:
        entry = task.as_dict()
    else:
        entry = {"pid": None, "comm": None, "cpu": cpu, "address": None}
        try:
            if kernel.panic.cpu == cpu:
                entry.update(log_task(dump) or {})
            if entry["address"] is None and hasattr(kernel, "cpu_task_address"):
                addr = kernel.cpu_task_address(cpu)
                entry["address"] = f"{addr:#x}" if addr else None
        except KvmcoreError:
            pass
        backtrace["warning"] = (
            f"the task that ran on CPU {cpu} cannot be read; the trace is from "
            "the registers the dump saved for the CPU"
        )
    entry["cpu"] = cpu
    entry["backtrace"] = backtrace
    return entry


def info_data(dump: Dump) -> dict[str, Any]:
    """Format, arch, release, KASLR offset: what can be said without walking anything."""
    vi = dump.vmcoreinfo
    data = {
        "path": dump.path,
        "format": dump.mem.describe(),
        "arch": dump.arch.name,
        "os": dump.os,
        "release": vi.osrelease if vi else None,
        "kaslr_offset": f"{dump.kernel_offset:#x}" if dump.os == "linux" else None,
        "kaslr_offset_source": _kaslr_source(dump),
        "cpus_dumped": _cpus_dumped(dump),
        "memory_bytes": sum(r.size for r in dump.phys_ranges()),
        "vmcoreinfo_conflicts": _vmcoreinfo_conflicts(dump),
        "problems": list(dump.mem.problems),
    }
    if data["release"] is None and dump.os in ("linux", "freebsd"):
        # from the kernel's memory; FreeBSD's osrelease needs the kernel's symbols
        with contextlib.suppress(KvmcoreError):
            data["release"] = dump.kernel.release or None
    return data


def _cpus_dumped(dump: Dump) -> int:
    """CPUs whose registers the dump saved (NT_PRSTATUS notes, or Xen's vCPU contexts)."""
    try:
        return len(dump.cpu_states)
    except KvmcoreError:
        return len(dump.mem.prstatus_notes())


def _kaslr_source(dump: Dump) -> str | None:
    """Where the KASLR offset came from, with what was wrong with VMCOREINFO's."""
    if dump.os != "linux" or dump.vmcoreinfo is None:
        return None
    k = dump.kaslr
    return f"{k.source}: {k.note}" if k.note else k.source


def _vmcoreinfo_conflicts(dump: Dump) -> dict[str, list[str]] | None:
    return dict(dump.vmcoreinfo.conflicts) if dump.vmcoreinfo is not None else None


def sym_data(dump: Dump, what: str) -> dict[str, Any]:
    """A symbol's address, or an address's `func+off/size [module]`, loaded
    modules' own symbols included when the module list can be read."""
    try:
        table = dump.kernel.symbol_table()
    except KvmcoreError:
        table = dump.symbols  # no module list: the kernel's own symbols
    if what[:1].isdigit():
        addr = parse_address(what)
        return {"address": f"{addr:#x}", "symbol": table.symbolize(addr), "source": table.source}
    return {"name": what, "address": f"{table.lookup(what):#x}", "source": table.source}


#: the most bytes `read --json` (and gdb's `monitor read`) holds in memory; the
#: CLI's text output streams any length
READ_JSON_MAX = 16 << 20
#: bytes read and printed at a time by read_stream
READ_CHUNK = 64 << 10


def check_read(dump: Dump, address: str, length: int, physical: bool) -> int:
    """The address of a `read`, once the whole range is known to be readable:
    an address wider than the dump's word is refused (not masked), and the
    range is checked against the dump's physical ranges (or translated page
    by page) before a byte is read, so a length past the end of memory fails
    at once instead of after reading all that comes before."""
    addr = parse_address(address)
    if length < 0:
        raise UsageError(f"read: LENGTH must not be negative: {length}")
    mask = dump.arch.address_mask
    if addr > mask:
        raise AddressError(f"address {addr:#x} is wider than {dump.arch.name}'s word", addr)
    if addr + max(length, 1) - 1 > mask:
        raise AddressError(
            f"{length:#x} bytes at {addr:#x} run past the top of the address space", addr
        )
    if physical:
        end, at = addr + length, addr
        for r in dump.phys_ranges():
            if r.start <= at < r.end:
                at = r.end
            if at >= end:
                break
        if at < end:
            raise NotInDumpError(
                f"physical {at:#x} (of {length:#x} bytes at {addr:#x}) is not in the dump", at
            )
    else:
        va, end = addr, addr + length
        while va < end:
            t = dump.translate(va)  # NotMappedError names the first hole
            va += t.page_size - (va & (t.page_size - 1))
    return addr


def read_data(dump: Dump, address: str, length: int = 64, physical: bool = False) -> dict[str, Any]:
    """Bytes at a kernel virtual (or physical) address, with the translation."""
    addr = check_read(dump, address, length, physical)
    if length > READ_JSON_MAX:
        raise UsageError(
            f"read: {length:#x} bytes is more than JSON output holds ({READ_JSON_MAX:#x}); "
            "the text output (no --json) streams any length"
        )
    data = dump.read_phys(addr, length) if physical else dump.read(addr, length)
    out: dict[str, Any] = {
        "address": f"{addr:#x}",
        "hex": data.hex(),
        "physical": None,
        "word_size": dump.word_size,
        "byteorder": dump.byteorder,
    }
    if not physical:
        t = dump.translate(addr)
        out.update(physical=f"{t.pa:#x}", page_size=t.page_size, file_offset=t.file_offset)
    return out


def read_stream(
    dump: Dump, address: str, length: int = 64, physical: bool = False
) -> Iterator[str]:
    """`read`'s text, READ_CHUNK bytes at a time, each piece ending in a newline:
    for the CLI, so a long read never holds the whole hex dump in memory."""
    addr = check_read(dump, address, length, physical)
    for off in range(0, length, READ_CHUNK):
        n = min(READ_CHUNK, length - off)
        raw = dump.read_phys(addr + off, n) if physical else dump.read(addr + off, n)
        yield _hex_lines(raw, addr + off, dump.word_size, dump.byteorder) + "\n"


def parse_address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise UsageError(f"not an address: {text!r}") from None
    if value < 0:
        raise UsageError(f"not an address: {text!r} is negative")
    return value


# -- text -----------------------------------------------------------------
def analyze_text(data: dict[str, Any]) -> str:
    from .report.render import render_text

    return render_text(data)


def info_text(data: dict[str, Any]) -> str:
    rows = dict(data)
    source = rows.pop("kaslr_offset_source", None)
    if source and rows.get("kaslr_offset"):
        rows["kaslr_offset"] = f"{rows['kaslr_offset']} ({source})"
    conflicts = rows.pop("vmcoreinfo_conflicts", None)
    if conflicts:
        rows["VMCOREINFO"] = _conflict_text(conflicts)
    problems = rows.pop("problems", None)
    if problems:
        rows["problems"] = "; ".join(problems)
    return "\n".join(f"{k:>13}: {v}" for k, v in rows.items())


def _conflict_text(conflicts: dict[str, list[str]]) -> str:
    return "conflicting duplicates: " + "; ".join(
        f"{k}={' / '.join(v)}" for k, v in conflicts.items()
    )


def sym_text(data: dict[str, Any]) -> str:
    return data.get("symbol") or data["address"]


def read_text(data: dict[str, Any]) -> str:
    """Words of the dump's width and byte order, 16 bytes a line."""
    raw = bytes.fromhex(data["hex"])
    return _hex_lines(raw, int(data["address"], 16), data["word_size"], data["byteorder"])


def _hex_lines(raw: bytes, addr: int, width: int, byteorder: Any) -> str:
    lines = []
    for off in range(0, len(raw), 16):
        chunk = raw[off : off + 16]
        words = " ".join(
            f"{int.from_bytes(chunk[i : i + width], byteorder):0{width * 2}x}"
            for i in range(0, len(chunk) - width + 1, width)
        )
        lines.append(f"{addr + off:016x}:  {words}")
    return "\n".join(lines)


def ps_text(data: dict[str, Any]) -> str:
    """The table; the dump's strings (comm, state) shown through printable()
    here, not by Command.render (PS.escapes)."""
    # kernels whose threads have ids of their own (FreeBSD td_tid) get a TID column;
    # one kernel's rows all have it or none do
    tids = bool(data["tasks"]) and "tid" in data["tasks"][0]
    lines = [
        "   PID    PPID" + ("     TID" if tids else "") + "  CPU  ST  TASK                COMM"
    ]
    shown: dict[str, str] = {}  # printable() of each name, once: most tasks share a few
    for t in data["tasks"]:
        comm, state = t["comm"], t["state"]
        safe_comm = shown.get(comm)
        if safe_comm is None:
            safe_comm = shown[comm] = printable(comm)
        safe_state = shown.get(state)
        if safe_state is None:
            safe_state = shown[state] = printable(state)
        if t["idle"] or t["tgid"] != t["pid"]:
            safe_comm = f"[{safe_comm}]"
        tid = f" {t['tid']:7d}" if tids else ""
        # %-formatting: one C call a row, where an f-string formats field by
        # field (a third of the table's time at 10,000 rows)
        lines.append(
            "%s%6d %7d%s %4d  %-2s  %-18s  %s"  # noqa: UP031
            % (
                ">" if t["on_cpu"] else " ",
                t["pid"],
                t["ppid"],
                tid,
                t["cpu"],
                safe_state,
                t["address"],
                safe_comm,
            )
        )
    if data.get("partial"):
        lines.append(f"(partial: {printable(str(data['problem']))})")
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
    rows = [
        ("DUMPFILE", f"{d['path']}  [{d['format_description']}]"),
        ("ARCH", d["arch"]),
        ("KASLR OFFSET", _with_source(d["kaslr_offset"], d.get("kaslr_offset_source"))),
        ("SYMBOLS", str(d["symbols"])),
        ("TYPES", str(d["types"])),
    ]
    if s.get("available", True) and "release" in s:
        online = s.get("online_cpus")
        rows += [
            ("NODENAME", s["nodename"]),
            ("RELEASE", s["release"]),
            ("VERSION", s["version"]),
            ("MACHINE", s["machine"]),
            ("CPUS", f"{s['cpus']}" + (f" (online: {online})" if online is not None else "")),
            ("MEMORY", _size(s["memory_bytes"])),
        ]
    if p.get("available", True) and "panic_message" in p:
        task = p.get("task")
        rows += [
            ("PANIC", p["panic_message"] or "-"),
            ("TASK", f"{task['pid']} ({task['comm']})" if task else "-"),
            ("CPU", str(p["cpu"])),
            (
                "UPTIME",
                f"{p['uptime_seconds']} s" if p.get("uptime_seconds") is not None else "unknown",
            ),
            ("TAINT", p["taint"]),
        ]
    if d.get("vmcoreinfo_conflicts"):
        rows.append(("VMCOREINFO", _conflict_text(d["vmcoreinfo_conflicts"])))
    return "\n".join(f"{k:>13}: {v}" for k, v in rows)


def _with_source(offset: str | None, source: str | None) -> str:
    if not offset:
        return "-"
    return f"{offset} ({source})" if source else offset


def bt_text(data: dict[str, Any]) -> str:
    out = []
    for t in data["tasks"]:
        tid = f"  TID: {t['tid']}" if "tid" in t else ""  # FreeBSD's td_tid
        pid = "?" if t["pid"] is None else t["pid"]
        comm = "?" if t["comm"] is None else t["comm"]
        source = "  (from the kernel log)" if t.get("source") == "log" else ""
        out.append(
            f'PID: {pid}{tid}  TASK: {t["address"] or "?"}  CPU: {t["cpu"]}  COMMAND: "{comm}"'
            + source
        )
        out.extend(frame_lines(t["backtrace"]))
        out.append("")
    return "\n".join(out).rstrip("\n")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


# -- the table --------------------------------------------------------------
@dataclass(frozen=True)
class Param:
    """One keyword argument of a command's `data` function."""

    name: str  # the keyword of Command.data
    type: type  # int, str, or bool (a flag: present or not)
    help: str
    default: Any = None
    flags: tuple[str, ...] = ()  # option spellings ("--pid",); () = positional
    required: bool = False
    bare: bool = False  # an option a command line also takes as a bare word
    metavar: str = ""
    rest: bool = False  # a positional that takes the rest of a command line (an expression)

    @property
    def positional(self) -> bool:
        return not self.flags

    def usage(self) -> str:
        meta = self.metavar or self.name.upper()
        if self.positional:
            return meta if self.required else f"[{meta}]"
        spell = "|".join(self.flags)
        if self.type is bool:
            return f"[{spell}]"
        return f"[{meta}]" if self.bare else f"[{spell} {meta}]"

    def convert(self, word: str) -> Any:
        if self.type is int:
            try:
                return int(word, 0)
            except ValueError:
                try:
                    return int(word, 10)  # leading zeros
                except ValueError:
                    raise UsageError(f"{self.name}: not a number: {word!r}") from None
        return word


@dataclass(frozen=True)
class Command:
    """One command: `data` does the work, `text` renders its result."""

    name: str
    help: str
    data: Callable[..., dict[str, Any]]
    text: Callable[[dict[str, Any]], str]
    params: tuple[Param, ...] = ()
    #: its text keeps newlines from the data: a log (dmesg), or views whose
    #: text functions escape the dump's strings themselves (the exploration commands)
    multiline: bool = False
    #: its text function passes every string from the dump through printable()
    #: itself, so render() need not copy the data to escape it (ps: 10,000 rows
    #: of ten values cost more to copy than to print)
    escapes: bool = False

    def param(self, name: str) -> Param:
        return next(p for p in self.params if p.name == name)

    def usage(self) -> str:
        return " ".join([self.name] + [p.usage() for p in self.params])

    def render(self, data: dict[str, Any]) -> str:
        """`text(data)` with every string from the dump made printable (a
        comm, a log line or OSRELEASE can hold terminal escapes); log records
        keep their newlines."""
        if self.escapes:
            return self.text(data)
        return self.text(printable_tree(data, newlines=self.multiline))

    def run(self, dump: Dump, **args: Any) -> str:
        """The command's text, as the CLI prints it."""
        return self.render(self.data(dump, **args))

    def parse(self, words: list[str]) -> dict[str, Any]:
        """Keyword arguments for `data` from a command line's words (after the
        name): options by their spellings (``--pid 5``, ``--pid=5``, ``-a``),
        other words fill the positional (and bare) parameters in order."""
        args: dict[str, Any] = {}
        options = {flag: p for p in self.params for flag in p.flags}
        bare = [p for p in self.params if p.positional or p.bare]
        i = 0
        while i < len(words):
            word = words[i]
            i += 1
            flag, eq, value = word.partition("=")
            if flag in options:
                p = options[flag]
                if p.type is bool:
                    if eq:
                        raise UsageError(f"{flag} takes no value; usage: {self.usage()}")
                    args[p.name] = True
                    continue
                if not eq:
                    if i >= len(words):
                        raise UsageError(f"{flag} needs a value; usage: {self.usage()}")
                    value = words[i]
                    i += 1
                args[p.name] = p.convert(value)
            elif word.startswith("-") and not word[1:2].isdigit():
                raise UsageError(f"unknown option {word!r}; usage: {self.usage()}")
            else:
                free = [p for p in bare if p.name not in args]
                if not free:
                    raise UsageError(f"too many arguments; usage: {self.usage()}")
                if free[0].rest:  # the expression: every word left, options included
                    args[free[0].name] = " ".join(words[i - 1 :])
                    break
                args[free[0].name] = free[0].convert(word)
        missing = [p.name for p in self.params if p.required and p.name not in args]
        if missing:
            raise UsageError(f"missing {', '.join(missing)}; usage: {self.usage()}")
        return args


ADDRESS_HELP = "kernel virtual address"

ANALYZE = Command(
    "analyze",
    "The crash report: panic, backtrace, system, log, tasks, modules.",
    analyze_data,
    analyze_text,
    (Param("log_lines", int, "kernel log lines to show", 40, ("--log-lines",), metavar="N"),),
)
PS = Command(
    "ps",
    "Every process and thread ('>' marks tasks that were on a CPU).",
    ps_data,
    ps_text,
    escapes=True,
)
DMESG = Command("dmesg", "The kernel log.", dmesg_data, dmesg_text, multiline=True)
MODS = Command("mods", "Loaded modules, with taints.", mods_data, mods_text)
SYS = Command("sys", "System and panic summary (as crash's `sys`).", sys_data, sys_text)
BT = Command(
    "bt",
    "Backtrace of the panicking task (or --pid PID, --cpu CPU, --pid 0 --cpu N, or --all).",
    bt_data,
    bt_text,
    (
        Param(
            "pid",
            int,
            "backtrace of this task (with --cpu: the one on that CPU; 0: its idle task)",
            None,
            ("--pid",),
            bare=True,
            metavar="PID",
        ),
        Param("all_tasks", bool, "every task", False, ("--all", "-a")),
        Param(
            "cpu",
            int,
            "backtrace from this CPU's saved registers (as crash's bt -c)",
            None,
            ("--cpu", "-c"),
            metavar="CPU",
        ),
        Param(
            "module_dir",
            str,
            "a directory of module debug files (.ko with DWARF, as a -dbg package's "
            "usr/lib/debug/lib/modules/RELEASE): file:line in module frames",
            None,
            ("--module-dir",),
            metavar="DIR",
        ),
    ),
)
INFO = Command(
    "info",
    "Format, architecture and kernel release: the quickest look at a dump.",
    info_data,
    info_text,
)
SYM = Command(
    "sym",
    "Look up a symbol's address, or symbolize an address (func+off/size [module]).",
    sym_data,
    sym_text,
    (Param("what", str, "a symbol name or an address", required=True, metavar="WHAT"),),
)
READ = Command(
    "read",
    "Hex dump of kernel virtual (or --phys physical) memory, with its translation.",
    read_data,
    read_text,
    (
        Param("address", str, ADDRESS_HELP, required=True, metavar="ADDRESS"),
        Param("length", int, "bytes to read", 64, metavar="LENGTH"),
        Param("physical", bool, "the address is physical", False, ("--phys",)),
    ),
)

# -- exploration (kvmcore.explore): crash's vocabulary over typed objects --------
_TEXT = explore.text_of


def _explore(*args: Any, **kwargs: Any) -> Command:
    """An exploration command: its text function escapes the dump's strings
    itself (repr of C strings, printable() of comms), so its newlines are its own."""
    kwargs["multiline"] = True
    return Command(*args, **kwargs)


P = _explore(
    "p",
    "Print the value of a C expression (symbols, members, casts, &, *, [], +, -).",
    explore.p_data,
    explore.p_text,
    (Param("expression", str, "a C expression", required=True, metavar="EXPR", rest=True),),
)
STRUCT = _explore(
    "struct",
    "A struct's layout (-o: with offsets), or its members' values at ADDRESS.",
    explore.struct_data,
    _TEXT,
    (
        Param(
            "type_name",
            str,
            "the struct's name (task_struct or struct task_struct)",
            required=True,
            metavar="TYPE",
        ),
        Param("address", str, "an address or expression of the struct", None, metavar="ADDRESS"),
        Param("offsets", bool, "show member offsets", False, ("-o", "--offsets")),
    ),
)
UNION = _explore(
    "union",
    "A union's layout (-o: with offsets), or its members' values at ADDRESS.",
    explore.union_data,
    _TEXT,
    STRUCT.params,
)
WHATIS = _explore(
    "whatis",
    "The type of a symbol, or the definition of a type.",
    explore.whatis_data,
    _TEXT,
    (Param("name", str, "a symbol or a type", required=True, metavar="NAME", rest=True),),
)
RD = _explore(
    "rd",
    "Read memory as words (-8/-16/-32/-64 bits), symbols (-s) or a string (-a).",
    explore.rd_data,
    explore.rd_text,
    (
        Param("address", str, "an address or expression", required=True, metavar="ADDRESS"),
        Param("count", int, "how many words", 1, metavar="COUNT"),
        Param("bits8", bool, "8-bit words", False, ("-8",)),
        Param("bits16", bool, "16-bit words", False, ("-16",)),
        Param("bits32", bool, "32-bit words", False, ("-32",)),
        Param("bits64", bool, "64-bit words", False, ("-64",)),
        Param("symbols", bool, "name words that are kernel symbols", False, ("-s",)),
        Param("ascii_only", bool, "the memory as a C string", False, ("-a",)),
        Param("physical", bool, "ADDRESS is physical", False, ("-p", "--phys")),
    ),
)
#: how `list` and `tree` show their entries: the structure holding each node, its fields
ENTRY_PARAMS = (
    Param(
        "member",
        str,
        "STRUCT.MEMBER: the entries' type and their node member",
        None,
        ("-m", "--member"),
        metavar="STRUCT.MEMBER",
    ),
    Param(
        "fields",
        str,
        "members of each entry to show, comma-separated",
        None,
        ("-s", "--show"),
        metavar="FIELDS",
    ),
)
LIST = _explore(
    "list",
    "Walk a list_head list from START (-H: START is the head, not an entry).",
    explore.list_data,
    explore.list_text,
    (
        Param(
            "start", str, "an address or expression of a list_head", required=True, metavar="START"
        ),
        *ENTRY_PARAMS,
        Param("head", bool, "START is the list's head", False, ("-H", "--head")),
    ),
)
TREE = _explore(
    "tree",
    "Walk an rbtree (-t rbtree, in order) or an xarray/radix tree (-t xarray) from ROOT.",
    explore.tree_data,
    explore.list_text,
    (
        Param(
            "root",
            str,
            "an address or expression of the tree's root",
            required=True,
            metavar="ROOT",
        ),
        Param("kind", str, "rbtree or xarray", "rbtree", ("-t", "--type"), metavar="KIND"),
        *ENTRY_PARAMS,
    ),
)
TASK = _explore(
    "task",
    "A task's struct task_struct (the panicking task by default; -R: some fields).",
    explore.task_data,
    _TEXT,
    (
        Param("pid", int, "the task", None, ("--pid",), bare=True, metavar="PID"),
        Param(
            "fields",
            str,
            "members to show, comma-separated",
            None,
            ("-R", "--fields"),
            metavar="FIELDS",
        ),
    ),
)
RUNQ = _explore(
    "runq", "Each CPU's current task and CFS run queue.", explore.runq_data, explore.runq_text
)
VTOP = _explore(
    "vtop",
    "Translate a kernel virtual address (physical address, page size).",
    explore.vtop_data,
    _TEXT,
    (Param("address", str, "an address or expression", required=True, metavar="ADDRESS"),),
)
PTOV = _explore(
    "ptov",
    "The direct-map virtual address of a physical address.",
    explore.ptov_data,
    _TEXT,
    (Param("address", str, "a physical address", required=True, metavar="ADDRESS"),),
)

KMEM = _explore(
    "kmem",
    "Memory: -i the summary /proc/meminfo gives, -s the slab caches (SLUB).",
    crashviews.kmem_data,
    crashviews.kmem_text,
    (
        Param("info", bool, "memory summary (total, free, buffers, cached...)", False, ("-i",)),
        Param("slabs", bool, "slab caches: object size, active and total objects", False, ("-s",)),
    ),
)
_PID = Param(
    "pid",
    int,
    "the task (the panicking task by default)",
    None,
    ("--pid",),
    bare=True,
    metavar="PID",
)
FILES = _explore(
    "files",
    "A task's open files: fd, file, dentry, inode, type, path.",
    crashviews.files_data,
    crashviews.files_text,
    (_PID,),
)
VM = _explore(
    "vm",
    "A task's memory map: each VMA's start, end, flags and file.",
    crashviews.vm_data,
    crashviews.vm_text,
    (_PID,),
)
SIG = _explore(
    "sig",
    "A task's pending and blocked signals and its signal handlers.",
    crashviews.sig_data,
    crashviews.sig_text,
    (_PID,),
)
MOUNT = _explore(
    "mount",
    "The mounts of the initial mount namespace: device, type, mount point.",
    crashviews.mount_data,
    crashviews.mount_text,
)
NET = _explore(
    "net",
    "Network devices of the initial namespace: name, flags, MTU, addresses.",
    crashviews.net_data,
    crashviews.net_text,
)
DEV = _explore(
    "dev",
    "Character and block device majors (chrdevs, major_names).",
    crashviews.dev_data,
    crashviews.dev_text,
)
IRQ = _explore(
    "irq",
    "Interrupts: each irq_desc's chip, actions (name: handler) and count.",
    crashviews.irq_data,
    crashviews.irq_text,
    (Param("irq", int, "only this irq", None, metavar="IRQ"),),
)
TIMER = _explore(
    "timer",
    "Each CPU's timer wheel: pending timers, expiry (jiffies), function.",
    crashviews.timer_data,
    crashviews.timer_text,
)
SEARCH = _explore(
    "search",
    "Find a word (number, symbol or expression) in the dump's RAM, via the direct map.",
    crashviews.search_data,
    crashviews.search_text,
    (
        Param("value", str, "the word to look for", required=True, metavar="VALUE"),
        Param("limit", int, "stop after this many hits", 64, ("-l", "--limit"), metavar="N"),
        Param("start", str, "lowest physical address", None, ("-s", "--start"), metavar="PA"),
        Param("end", str, "highest physical address", None, ("-e", "--end"), metavar="PA"),
    ),
)
LOG = _explore(
    "log",
    "The kernel log (-T: with wall-clock times from the timekeeper, UTC).",
    crashviews.log_data,
    crashviews.log_text,
    (Param("wall_time", bool, "wall-clock timestamps", False, ("-T",)),),
)

#: what foreach runs for each task: commands taking a pid
FOREACH_COMMANDS = ("bt", "task", "files", "vm", "sig")


def _foreach_tasks(dump: Dump, tasks: str) -> list[Any]:
    everyone = [t for t in dump.kernel.tasks() if not t.is_idle]
    if tasks in ("all", "*"):
        return everyone
    chosen = []
    for word in tasks.split(","):
        word = word.strip()
        if word.isdigit():
            task = dump.kernel.find_task(int(word))
            if task is None:
                raise KvmcoreError(f"foreach: no task with pid {word}", dump.path)
            chosen.append(task)
        else:
            named = [t for t in everyone if t.comm == word]
            if not named:
                raise KvmcoreError(f"foreach: no task named {word!r}", dump.path)
            chosen += named
    return chosen


def foreach_data(dump: Dump, tasks: str, command: str) -> dict[str, Any]:
    """Run bt, task, files, vm or sig (with its own arguments) for each task of
    TASKS: `all`, or pids and command names separated by commas (crash's
    `foreach`). A task whose command fails gets its error, the others go on."""
    words = command.split()
    if not words or words[0] not in FOREACH_COMMANDS:
        raise KvmcoreError(f"foreach: COMMAND is one of {', '.join(FOREACH_COMMANDS)}")
    cmd = COMMANDS[words[0]]
    args = cmd.parse(words[1:])
    args.pop("pid", None)
    out = []
    for task in _foreach_tasks(dump, tasks):
        entry: dict[str, Any] = {"pid": task.pid, "comm": task.comm}
        try:
            entry["data"] = cmd.data(dump, pid=task.pid, **args)
            entry["text"] = cmd.render(entry["data"])
        except KvmcoreError as exc:
            entry["error"] = exc.message
        out.append(entry)
    return {"command": words[0], "tasks": out}


def foreach_text(data: dict[str, Any]) -> str:
    out = []
    for t in data["tasks"]:
        if "error" in t:
            out.append(f"PID: {t['pid']}: {data['command']}: error: {t['error']}")
        else:
            out.append(t["text"])
        out.append("")
    return "\n".join(out).rstrip()


FOREACH = _explore(
    "foreach",
    "Run bt/task/files/vm/sig for every task (all) or some (pids or names, comma-separated).",
    foreach_data,
    foreach_text,
    (
        Param(
            "tasks", str, "all, or pids and names, comma-separated", required=True, metavar="TASKS"
        ),
        Param(
            "command",
            str,
            "the command and its options",
            required=True,
            metavar="COMMAND",
            rest=True,
        ),
    ),
)

#: the viewing commands: the CLI takes their vmlinux as a trailing positional
#: (DUMP [VMLINUX]); the exploration commands (EXPLORE) take it as --vmlinux
VIEW: tuple[Command, ...] = (PS, DMESG, MODS, SYS, BT, INFO, SYM)

#: the exploration commands (the CLI builds their subcommands from the table)
EXPLORE: tuple[Command, ...] = (
    P,
    STRUCT,
    UNION,
    WHATIS,
    RD,
    LIST,
    TREE,
    TASK,
    RUNQ,
    VTOP,
    PTOV,
    KMEM,
    FILES,
    VM,
    SIG,
    MOUNT,
    NET,
    DEV,
    IRQ,
    TIMER,
    FOREACH,
    SEARCH,
    LOG,
)

#: every command, by name, in the order `monitor help` lists them
COMMANDS: dict[str, Command] = {
    c.name: c for c in (ANALYZE, PS, DMESG, MODS, SYS, BT, INFO, SYM, READ, *EXPLORE)
}
