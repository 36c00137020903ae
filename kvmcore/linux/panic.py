"""The panic: message, CPU, task, taint and uptime at the crash."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import KvmcoreError
from .oops import OOPS_PANICS, crash_report

if TYPE_CHECKING:
    from . import LinuxKernel
    from .tasks import Task

# bit -> (letter when set, letter when clear), as the kernel's taint_flags[]
TAINT_FLAGS = [
    ("P", "G"),
    ("F", " "),
    ("S", " "),
    ("R", " "),
    ("M", " "),
    ("B", " "),
    ("U", " "),
    ("D", " "),
    ("A", " "),
    ("W", " "),
    ("C", " "),
    ("I", " "),
    ("O", " "),
    ("E", " "),
    ("L", " "),
    ("K", " "),
    ("X", " "),
    ("T", " "),
    ("N", " "),
]
TAINT_NAMES = [
    "proprietary module",
    "forced module load",
    "CPU out of spec",
    "forced rmmod",
    "machine check",
    "bad page",
    "user request",
    "kernel died (oops)",
    "ACPI table overridden",
    "warning",
    "staging driver",
    "firmware workaround",
    "out-of-tree module",
    "unsigned module",
    "soft lockup",
    "live patch",
    "auxiliary",
    "struct randomization",
    "test",
]

# "---[ end Kernel panic - not syncing: ... ]---" closes the panic: skip it
PANIC_RE = re.compile(r"^(?!---\[ end )Kernel panic - not syncing: (.*)")
OOPS_RE = re.compile(r"^(BUG: .*|Oops: .*|kernel BUG at .*|Unable to handle kernel .*)")
# "CPU: 1 PID: 115 Comm: crasher Not tainted ..."; 6.10+ adds "UID: 0 " before PID,
# and a kernel with a crash kernel loaded "Kdump: loaded " before the taint
# (dump_stack_print_info). A comm may hold spaces: it ends at the taint.
CPU_LINE_RE = re.compile(
    r"CPU: (\d+) (?:UID: \d+ )?PID: (\d+) Comm: (.{0,16}?) (?:Kdump: loaded )?"
    r"(Not tainted|Tainted: ([A-Z ]+))"
)


@dataclass
class PanicInfo:
    #: what went wrong, as one reads it: the panic's message, or the first line
    #: of the oops report when the panic only says an oops happened ("Fatal
    #: exception", as panic_on_oops and arm64's die() word it)
    message: str | None = None
    #: the panic() message itself (None when the log has no panic line)
    panic_string: str | None = None
    cpu: int | None = None
    task: Task | None = None
    taint_mask: int | None = None
    uptime_ns: int | None = None
    crash_time: int | None = None
    sources: dict[str, str] = field(default_factory=dict)
    #: the panicking pid and comm as the panic's log lines name them (the
    #: "CPU: n PID: p Comm: c" line), for when `task` cannot be read
    log_pid: int | None = None
    log_comm: str | None = None

    @property
    def taint_string(self) -> str:
        if self.taint_mask is None:
            return "unknown"
        if self.taint_mask == 0:
            return "Not tainted"
        return (
            "Tainted: "
            + "".join(
                on if self.taint_mask >> i & 1 else off for i, (on, off) in enumerate(TAINT_FLAGS)
            ).rstrip()
        )

    @property
    def taint_reasons(self) -> list[str]:
        mask = self.taint_mask or 0
        return [name for i, name in enumerate(TAINT_NAMES) if mask >> i & 1]


def find_panic(kernel: LinuxKernel) -> PanicInfo:
    info = PanicInfo()
    dump = kernel.dump
    try:
        records = kernel.log()
    except KvmcoreError:
        records = []
    panic_rec = None
    for k in range(len(records) - 1, -1, -1):
        m = PANIC_RE.match(records[k].text)
        if m:
            info.message = info.panic_string = m.group(1).strip()
            info.sources["message"] = "kernel log"
            panic_rec = records[k]
            if OOPS_PANICS.match(info.message):
                _, title, _ = crash_report(r.text for r in records[: k + 1])
                if title:
                    info.message = title
                    info.sources["message"] = (
                        f"kernel log: the oops report the panic ({info.panic_string!r}) ends"
                    )
            break
    if panic_rec is None:
        for rec in reversed(records):
            m = OOPS_RE.search(rec.text)
            if m:
                info.message, panic_rec = m.group(1).strip(), rec
                info.sources["message"] = "kernel log (oops)"
                break
    if panic_rec is not None:
        info.uptime_ns = panic_rec.timestamp_ns
    # The CPU: the kernel's panic_cpu, else the "CPU: n PID: p" line after the panic.
    addr = kernel.symbol("panic_cpu")
    if addr is not None:
        try:
            cpu = dump.read_int(addr, 4, signed=True)
            if cpu >= 0:
                info.cpu = cpu
                info.sources["cpu"] = "panic_cpu"
        except KvmcoreError:
            pass
    pid = None
    log_taint = None
    start = records.index(panic_rec) if panic_rec is not None else max(0, len(records) - 50)
    for rec in records[start : start + 20]:
        m = CPU_LINE_RE.search(rec.text)
        if m:
            if info.cpu is None:
                info.cpu = int(m.group(1))
                info.sources["cpu"] = "kernel log"
            pid = int(m.group(2))
            if int(m.group(1)) == info.cpu:  # the line of the panicking CPU
                info.log_pid, info.log_comm = pid, m.group(3)
            log_taint = 0 if m.group(4) == "Not tainted" else None
            break
    if panic_rec is not None and not panic_rec.caller_id & 0x80000000 and pid is None:
        pid = info.log_pid = panic_rec.caller_id
    # The task: the one running on the panic CPU (its idle task, swapper/N, when
    # the panic came from an interrupt on an idle CPU), else the pid that logged
    # the panic; pid 0 names the panic CPU's idle task, not CPU 0's.
    try:
        if info.cpu is not None:
            task = kernel.running_task(info.cpu)
            if task is not None:
                info.task = task
                info.sources["task"] = f"running on CPU {info.cpu}"
        if info.task is None and pid is not None:
            if pid == 0 and info.cpu is not None:
                info.task = next(
                    (t for t in kernel.tasks() if t.is_idle and t.cpu == info.cpu), None
                )
            else:
                info.task = kernel.find_task(pid)
            if info.task is not None:
                info.sources["task"] = "pid in the panic's log lines"
    except KvmcoreError as exc:
        info.sources["task"] = f"unavailable: {exc.message}"
    if info.task is None and info.log_pid is not None and "task" not in info.sources:
        info.sources["task"] = "pid and comm from the kernel log (the task_struct is unreadable)"
    addr = kernel.symbol("tainted_mask")
    if addr is not None:
        try:
            info.taint_mask = dump.read_ptr(addr)
            info.sources["taint"] = "tainted_mask"
        except KvmcoreError:
            pass
    if info.taint_mask is None and log_taint is not None:
        info.taint_mask = log_taint
        info.sources["taint"] = "kernel log"
    if dump.vmcoreinfo is not None:
        info.crash_time = dump.vmcoreinfo.crashtime
    return info
