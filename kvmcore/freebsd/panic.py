"""The FreeBSD panic: message, CPU, dumping thread, uptime, time.

vpanic() formats the message into a static buffer and points `panicstr` at
it; it then prints "panic: <message>", "cpuid = <n>" and "time = <secs>" to
the console (so to msgbuf) and dumps from doadump(), whose thread id is in
`dumptid` and whose registers are in `dumppcb`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KvmcoreError

if TYPE_CHECKING:
    from .kernel import FreeBSDKernel, FreeBSDThread

PANIC_RE = re.compile(r"^panic: (.*)")
CPUID_RE = re.compile(r"^cpuid = (\d+)")
TIME_RE = re.compile(r"^time = (\d+)")
MAX_PANICSTR = 1024


@dataclass
class FreeBSDPanic:
    """The panic (kvmcore.kernel: message, cpu, task, uptime_ns, taint...)."""

    message: str | None = None
    cpu: int | None = None
    task: FreeBSDThread | None = None
    uptime_ns: int | None = None
    crash_time: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    taint_mask: int | None = None

    @property
    def taint_string(self) -> str:
        return "n/a (FreeBSD)"  # FreeBSD keeps no taint flags

    @property
    def taint_reasons(self) -> list[str]:
        return []


def find_panic(kernel: FreeBSDKernel) -> FreeBSDPanic:
    info = FreeBSDPanic()
    dump = kernel.dump
    try:
        records = kernel.log()
    except KvmcoreError:
        records = []
    # the message: panicstr when set, else the last "panic: " line of msgbuf
    if kernel.has_symbol("panicstr"):
        try:
            ptr = dump.read_ptr(kernel.symbol("panicstr"))
            if ptr:
                info.message = dump.read_cstring(ptr, MAX_PANICSTR).strip() or None
                info.sources["message"] = "panicstr"
        except KvmcoreError:
            pass
    at = None
    for i in range(len(records) - 1, -1, -1):
        m = PANIC_RE.match(records[i].text)
        if m:
            at = i
            if info.message is None:
                info.message = m.group(1).strip()
                info.sources["message"] = "msgbuf"
            break
    # the task: the thread that called doadump (dumptid); its CPU
    try:
        tid = kernel.dumptid()
        if tid:
            info.task = next((t for t in kernel.tasks() if t.tid == tid), None)
            if info.task is not None:
                info.sources["task"] = "dumptid"
                if info.task.on_cpu:
                    info.cpu = info.task.cpu
                    info.sources["cpu"] = "td_oncpu of the dumping thread"
    except KvmcoreError as exc:
        info.sources["task"] = f"unavailable: {exc.message}"
    # the lines vpanic printed after the message
    if at is not None:
        for rec in records[at + 1 : at + 6]:
            m = CPUID_RE.match(rec.text)
            if m and info.cpu is None:
                info.cpu = int(m.group(1))
                info.sources["cpu"] = "msgbuf"
            m = TIME_RE.match(rec.text)
            if m and info.crash_time is None:
                info.crash_time = int(m.group(1))
                info.sources["time"] = "msgbuf"
    if kernel.has_symbol("time_uptime"):
        try:
            info.uptime_ns = (
                dump.read_int(kernel.symbol("time_uptime"), dump.word_size, signed=True)
                * 1_000_000_000
            )
            info.sources["uptime"] = "time_uptime"
        except KvmcoreError:
            pass
    if info.crash_time is None:
        kdh = dump.mem.metadata.get("kerneldumpheader") or {}
        if kdh.get("dumptime"):
            info.crash_time = int(kdh["dumptime"])
            info.sources["time"] = "kerneldumpheader"
    return info
