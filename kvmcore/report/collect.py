"""Collect the crash report as plain data (the --json document).

Each section is computed on its own: a section that fails is marked
unavailable with the reason, and the rest of the report still comes out.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import __version__
from ..errors import KvmcoreError, UnsupportedError
from ..unwind import Backtrace, unwind

if TYPE_CHECKING:
    from ..dump import Dump

SCHEMA_VERSION = 1


def _section(fn: Callable[[], dict[str, Any]], problems: list[str], name: str) -> dict[str, Any]:
    try:
        out = fn()
        out.setdefault("available", True)
        return out
    except KvmcoreError as exc:
        reason = exc.message
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        reason = f"internal error: {type(exc).__name__}: {exc}"
    problems.append(f"{name}: {reason}")
    return {"available": False, "reason": reason}


def frames_of(dump: Dump, task: Any, max_frames: int = 48) -> dict[str, Any]:
    bt = dump.backtrace(task, max_frames=max_frames)
    return _frames_data(bt, dump.kernel.registers_note(task))


def cpu_frames(dump: Dump, cpu: int, max_frames: int = 48) -> dict[str, Any]:
    """The backtrace from the registers the dump saved for `cpu` (its
    NT_PRSTATUS), as crash's `bt -c CPU`: it needs no task_struct, so it
    works when the task that ran there cannot be read."""
    states = getattr(dump.kernel, "cpu_registers", None)
    if states is None:
        raise UnsupportedError(f"{dump.os}: backtraces by CPU are not supported", dump.path)
    state = states.get(cpu)
    if state is None:
        why = dump.mem.notes_problem or "no NT_PRSTATUS note matches it"
        raise KvmcoreError(f"the dump holds no registers of CPU {cpu} ({why})", dump.path)
    return _frames_data(unwind(dump, dict(state.regs), max_frames=max_frames), None)


def _source_of(f: Any) -> dict[str, Any]:
    """A frame's file, line and inlined functions, when DWARF gave them."""
    out: dict[str, Any] = {}
    if f.file:
        out["file"], out["line"] = f.file, f.line
    if f.inlined:
        out["inlined"] = [
            {"function": i.function, "file": i.file, "line": i.line} for i in f.inlined
        ]
    return out


def _frames_data(bt: Backtrace, warning: str | None) -> dict[str, Any]:
    frames = [
        {
            "index": f.index,
            "pc": f"{f.pc:#x}",
            "sp": f"{f.sp:#x}" if f.sp else None,
            "function": f.function,
            "module": f.module,
            "guessed": f.guessed,
            "kind": f.kind,
            **_source_of(f),
        }
        for f in bt.frames
    ]
    return {
        "available": True,
        "frames": frames,
        "stopped": bt.error,
        "notes": list(bt.notes),
        "warning": warning,
    }


def log_task(dump: Dump) -> dict[str, Any] | None:
    """The panicking task as the panic's log lines name it, when its
    task_struct cannot be read: pid, comm, its address when the panic CPU's
    runqueue says, and `source: "log"`."""
    panic = dump.kernel.panic
    pid = getattr(panic, "log_pid", None)
    if panic.task is not None or pid is None:
        return None
    out: dict[str, Any] = {"pid": pid, "comm": panic.log_comm or "?", "source": "log"}
    where = getattr(dump.kernel, "cpu_task_address", None)
    addr = where(panic.cpu) if where is not None and panic.cpu is not None else None
    if addr:
        out["address"] = f"{addr:#x}"
    return out


def build_report(
    dump: Dump, log_lines: int = 40, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """The whole crash report of `dump` as JSON-ready data."""
    note = progress or (lambda _stage: None)
    problems: list[str] = []
    kernel = dump.kernel
    report: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "kvmcore_version": __version__}

    note("reading the dump")
    report["dump"] = _dump_section(dump)
    problems.extend(f"dump: {p}" for p in dump.mem.problems)
    note("reading the kernel log")
    report["log"] = _section(lambda: _log_section(kernel, log_lines), problems, "log")
    note("walking tasks")
    tasks_section = _section(lambda: _tasks_section(dump), problems, "tasks")
    note("finding the panic")
    report["headline"] = _section(lambda: _headline(dump), problems, "headline")
    report["backtrace"] = _section(lambda: _panic_backtrace(dump), problems, "backtrace")
    note("describing the system")
    report["system"] = _section(lambda: _system(dump), problems, "system")
    report["tasks"] = tasks_section
    note("listing modules")
    report["modules"] = _section(
        lambda: {"list": [m.as_dict() for m in kernel.modules()]}, problems, "modules"
    )
    report["dump"]["derived"] = dict(getattr(kernel, "sources", {}))
    report["problems"] = problems
    return report


def _dump_section(dump: Dump) -> dict[str, Any]:
    mem = dump.mem
    info = dump.vmcoreinfo
    out: dict[str, Any] = {
        "path": os.path.abspath(dump.path),
        "size": os.path.getsize(dump.path),
        "format": mem.format_name,
        "format_description": mem.describe(),
        "arch": dump.arch.name,
        "os": dump.os,
        "kaslr_offset": f"{dump.kernel_offset:#x}" if info else None,
        "vmlinux": dump.vmlinux,
        "dump_level": mem.metadata.get("dump_level"),
        "excluded_pages": _excluded_pages(mem.metadata),
        "vmcoreinfo": info is not None,
        "vmcoreinfo_source": mem.metadata.get("vmcoreinfo_source"),
    }
    try:
        out["symbols"] = dump.symbols.source
    except KvmcoreError as exc:
        out["symbols"] = f"unavailable: {exc.message}"
    try:
        out["types"] = dump.types.source_of(
            "struct thread" if dump.os == "freebsd" else "struct task_struct"
        )
    except KvmcoreError as exc:
        out["types"] = f"unavailable: {exc.message}"
    return out


def _excluded_pages(meta: dict[str, Any]) -> int | None:
    """RAM pages a filtered kdump file left out, when its bitmaps say."""
    ram, dumped = meta.get("ram_pages"), meta.get("dumped_pages")
    return ram - dumped if isinstance(ram, int) and isinstance(dumped, int) else None


def _headline(dump: Dump) -> dict[str, Any]:
    kernel = dump.kernel
    panic = kernel.panic
    task = panic.task
    return {
        "panic_message": panic.message,
        "panic_string": getattr(panic, "panic_string", panic.message),
        "task": {"pid": task.pid, "comm": task.comm, "address": f"{task.address:#x}"}
        if task
        else log_task(dump),
        "cpu": panic.cpu,
        "release": kernel.release,
        "arch": dump.arch.name,
        "uptime_seconds": round(panic.uptime_ns / 1e9, 6) if panic.uptime_ns is not None else None,
        "taint": panic.taint_string,
        "taint_reasons": panic.taint_reasons,
        "crash_time": panic.crash_time,
        "sources": panic.sources,
    }


def _panic_backtrace(dump: Dump) -> dict[str, Any]:
    panic = dump.kernel.panic
    if panic.task is not None:
        return frames_of(dump, panic.task)
    if panic.cpu is None:
        return {"available": False, "reason": "the panicking task and CPU are not known"}
    # the task_struct is unreadable, but the CPU's saved registers and the
    # stack pages are not: crash's `bt -c CPU`
    out = cpu_frames(dump, panic.cpu)
    out["warning"] = (
        f"the panicking task cannot be read; this is CPU {panic.cpu}'s trace "
        "from the registers the dump saved for it"
    )
    return out


def _system(dump: Dump) -> dict[str, Any]:
    kernel = dump.kernel
    uts = kernel.utsname
    ranges = dump.phys_ranges()
    return {
        "nodename": uts["nodename"],
        "release": uts["release"],
        "version": uts["version"],
        "machine": uts["machine"],
        "cpus": kernel.nr_cpus,
        "online_cpus": kernel.online_cpus,
        "dumped_cpus": len(dump.cpu_states),
        "memory_bytes": sum(r.size for r in ranges),
    }


def _log_section(kernel: Any, lines: int) -> dict[str, Any]:
    log = kernel.kernel_log
    out = []
    for rec in log.records:
        out.extend(rec.format().split("\n"))
    start = max(0, len(out) - lines) if lines > 0 else len(out)
    # Reach back to the panic's first line when the tail would cut it off.
    panic_at = next(
        (
            i
            for i in range(len(out) - 1, -1, -1)
            if ("Kernel panic - not syncing" in out[i] and "---[ end" not in out[i])
            or (log.layout == "msgbuf" and out[i].startswith("panic: "))
        ),
        None,
    )
    if lines > 0 and panic_at is not None and len(out) - panic_at <= 4 * lines:
        start = min(start, panic_at)
    return {
        "total_records": len(log.records),
        "layout": log.layout,
        "partial": log.partial,
        "problem": log.problem,
        "lines": out[start:],
    }


def _tasks_section(dump: Dump) -> dict[str, Any]:
    kernel = dump.kernel
    result = kernel.task_list
    tasks = result.tasks
    states = Counter(t.state for t in tasks)
    on_cpu: list[dict[str, object]] = []
    blocked: list[dict[str, object]] = []
    for task in tasks:
        if task.on_cpu or task.state == "D":
            entry = task.as_dict()
            try:
                entry["backtrace"] = frames_of(dump, task, 32)
            except KvmcoreError as exc:
                entry["backtrace"] = {"available": False, "reason": exc.message}
            (on_cpu if task.on_cpu else blocked).append(entry)
    return {
        "count": len(tasks),
        "partial": result.partial,
        "problem": result.problem,
        "by_state": dict(sorted(states.items())),
        "on_cpu": on_cpu,
        "uninterruptible": blocked,
        "list": [t.as_dict() for t in tasks],
    }
