"""A crash signature: what a dump's failure is, stable across KASLR, kernel builds and
machines, so that dumps of one bug fall into one bucket.

A signature has three parts, computed from plain facts (:class:`Facts`: the panic
message, the kernel log's tail, the crashing task's backtrace and the blocked tasks'
backtraces, all of which a report carries):

``kind``
    The failure class, from the panic message first and the log's crash report second
    (:data:`KINDS`, checked in that order): ``sysrq`` (sysrq c), ``soft_lockup``,
    ``hard_lockup``, ``hung_task``, ``oom`` (panic_on_oom), ``warning`` (a WARN with
    panic_on_warn), ``bug`` (BUG(), BUG_ON(), data-corruption checks), ``oops`` (a fault
    in the kernel: NULL pointer, paging request, general protection, divide error, stack
    overflow, invalid opcode) and ``panic`` (a direct ``panic()`` call, or any other).

``message``
    The crash's title line, normalized (:func:`normalize_message`): for an explicit panic
    the panic message; otherwise the first line of the last crash report in the log
    (``BUG: kernel NULL pointer dereference, address: ...``, ``kernel BUG at ...``,
    ``WARNING: CPU: ... at ...``), or the data-corruption line a BUG follows.

``frames``
    The top :data:`TOP_FRAMES` functions of the crashing task's backtrace as symbol
    names without offsets (:func:`normalize_function`), after the panic, oops, printing
    and exception-entry frames (:data:`GENERIC_FRAMES`) are skipped. For a hung task
    the backtrace is the blocked task's (the log's ``INFO: task comm:pid blocked``),
    with the scheduler frames it sleeps in skipped too; khungtaskd's own is the same for
    every hung task.

Normalization (documented by the tests in tests/test_triage_signature.py):

* offsets and sizes of symbols go: ``crashmod_null+0x5/0x20 [crashmod]`` -> ``crashmod_null``
  (the module is kept in the frame's ``module``, not in its name);
* compiler clone suffixes go: ``__handle_sysrq.cold``, ``foo.isra.0``,
  ``bar.constprop.3``, ``baz.part.1`` -> the base name (they change with the compiler);
* in messages, source line numbers become ``N`` (``lib/list_debug.c:30`` ->
  ``lib/list_debug.c:N``), hexadecimal numbers of 8 or more digits (with or without ``0x``) become
  ``ADDR``, other numbers ``N`` (pids, CPUs, seconds, line numbers, small addresses),
  ``comm:pid`` and ``[comm:pid]`` keep the command without its pid, absolute source
  paths keep only their file name (an out-of-tree module's build directory varies), the
  log's timestamp and any trailing spaces go, and the message is cut at 160 characters.

The signature's ``id`` is the first 16 hex digits of the sha256 of
``kind\\nmessage\\nframe1<frame2<...``.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ..linux.oops import OOPS_PANICS as _OOPS_PANICS
from ..linux.oops import TIMESTAMP as _TIMESTAMP
from ..linux.oops import crash_report
from ..linux.oops import strip_ts as _strip_ts

#: how many frames a signature holds
TOP_FRAMES = 5
MESSAGE_MAX = 160

#: frames of the panic, oops, printing and exception machinery: never the cause.
#: Leading frames down to the deepest of these (within the first ENTRY_DEPTH frames)
#: are dropped, and any of them further down is skipped.
GENERIC_FRAMES = frozenset(
    {
        # panic and kdump
        "panic",
        "vpanic",
        "__panic",
        "nmi_panic",
        "check_panic_on_oom",
        "crash_kexec",
        "__crash_kexec",
        "machine_crash_shutdown",
        "native_machine_crash_shutdown",
        "crash_save_cpu",
        "machine_kexec",
        "atomic_notifier_call_chain",
        "notifier_call_chain",
        "raw_notifier_call_chain",
        "pvpanic_panic_notify",
        "panic_smp_self_stop",
        "kmsg_dump",
        "kmsg_dump_reason",
        # stack dumps and printing
        "dump_stack",
        "dump_stack_lvl",
        "show_stack",
        "show_trace_log_lvl",
        "show_regs",
        "__show_regs",
        "dump_header",
        "printk",
        "_printk",
        "vprintk",
        "vprintk_emit",
        "vprintk_default",
        "console_unlock",
        "console_flush_all",
        "dump_backtrace",
        # oops, BUG and WARN
        "die",
        "__die",
        "__die_body",
        "oops_begin",
        "oops_end",
        "die_kernel_fault",
        "__warn",
        "warn_slowpath_fmt",
        "__warn_printk",
        "report_bug",
        "handle_bug",
        "do_trap",
        "do_error_trap",
        "bug_handler",
        "call_break_hook",
        "brk_handler",
        "arm64_notify_die",
        "__stack_chk_fail",
        "check_panic_on_warn",
        # x86 exception entry
        "exc_invalid_op",
        "asm_exc_invalid_op",
        "exc_divide_error",
        "asm_exc_divide_error",
        "exc_general_protection",
        "asm_exc_general_protection",
        "exc_page_fault",
        "asm_exc_page_fault",
        "page_fault_oops",
        "kernelmode_fixup_or_oops",
        "__bad_area_nosemaphore",
        "bad_area_nosemaphore",
        "do_user_addr_fault",
        "handle_page_fault",
        "no_context",
        "exc_double_fault",
        "asm_exc_double_fault",
        "handle_stack_overflow",
        "exc_stack_segment",
        "asm_exc_stack_segment",
        "do_int3",
        "exc_int3",
        "asm_exc_int3",
        "fixup_exception",
        # arm64 exception entry
        "do_mem_abort",
        "el1_abort",
        "el1h_64_sync_handler",
        "el1h_64_sync",
        "__do_kernel_fault",
        "do_page_fault",
        "do_translation_fault",
        "do_bad_area",
        "el1_dbg",
        "do_debug_exception",
        "do_el1_undef",
        "el1_undef",
        "el1_inv",
        # the timer interrupt a soft lockup is seen from
        "watchdog_timer_fn",
        "__hrtimer_run_queues",
        "hrtimer_interrupt",
        "__sysvec_apic_timer_interrupt",
        "sysvec_apic_timer_interrupt",
        "asm_sysvec_apic_timer_interrupt",
        "__irq_exit_rcu",
        "irq_exit_rcu",
        "arch_timer_handler_virt",
        "handle_percpu_devid_irq",
        "generic_handle_domain_irq",
        "gic_handle_irq",
        "call_on_irq_stack",
        "do_interrupt_handler",
        "el1_interrupt",
        "el1h_64_irq_handler",
        "el1h_64_irq",
        # the hard-lockup NMI
        "watchdog_overflow_callback",
        "__perf_event_overflow",
        "perf_event_nmi_handler",
        "nmi_handle",
        "default_do_nmi",
        "exc_nmi",
        "asm_exc_nmi",
        "end_repeat_nmi",
    }
)

#: where a blocked task sleeps: skipped at the top of a hung task's backtrace
SCHEDULER_FRAMES = frozenset(
    {
        "__schedule",
        "schedule",
        "schedule_preempt_disabled",
        "schedule_timeout",
        "io_schedule",
        "io_schedule_timeout",
        "__switch_to",
        "__switch_to_asm",
        "context_switch",
        "preempt_schedule_common",
        "schedule_hrtimeout_range_clock",
        "cpu_switch_to",
        "__cond_resched",
    }
)

#: how deep the panic machinery is looked for at the top of a backtrace
ENTRY_DEPTH = 24

# the panic message alone decides these
_PANIC_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("sysrq", re.compile(r"^sysrq triggered crash")),
    ("soft_lockup", re.compile(r"^softlockup: hung tasks")),
    ("hard_lockup", re.compile(r"^Hard LOCKUP|hard LOCKUP", re.I)),
    ("hung_task", re.compile(r"^hung_task: blocked tasks")),
    ("oom", re.compile(r"^Out of memory|^System is deadlocked on memory")),
    ("warning", re.compile(r"panic_on_warn set")),
]


@dataclass
class Facts:
    """What a signature is computed from (all plain data: a report holds it)."""

    panic_message: str | None
    log_lines: Sequence[str] = ()
    frames: Sequence[str] = ()  # the crashing task's, innermost first
    blocked: Sequence[dict[str, Any]] = ()  # [{"pid", "comm", "frames": [...]}]
    arch: str | None = None


@dataclass
class Signature:
    kind: str
    message: str
    frames: list[str] = field(default_factory=list)
    id: str = ""
    title: str = ""  # the raw (unnormalized) title line

    def __post_init__(self) -> None:
        if not self.id:
            text = "\n".join([self.kind, self.message, "<".join(self.frames)])
            self.id = hashlib.sha256(text.encode()).hexdigest()[:16]

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "message": self.message,
            "frames": list(self.frames),
            "title": self.title,
        }


_OFFSET = re.compile(r"\+0x[0-9a-f]+(?:/0x[0-9a-f]+)?$", re.I)
_MODULE = re.compile(r"\s*\[[^\]]*\]\s*$")
_CLONE = re.compile(r"(?:\.(?:cold|isra|constprop|part|lto_priv|llvm|localalias)(?:\.\d+)?)+$")


def normalize_function(name: str | None) -> str | None:
    """A frame's function as a signature holds it: no offset, size, module or
    compiler clone suffix; None for an unknown frame."""
    if not name:
        return None
    name = _MODULE.sub("", name.strip())
    name = _OFFSET.sub("", name)
    name = _CLONE.sub("", name)
    if not name or name.startswith(("0x", "?")):
        return None
    return name


_SYMOFF = re.compile(r"\b([A-Za-z_][\w.]*)\+0x[0-9a-f]+/0x[0-9a-f]+", re.I)
_PATH = re.compile(r"(?<![\w.])/(?:[\w.+-]+/)+([\w.+-]+)")
_FILE_LINE = re.compile(r"(\.(?:c|h|S|rs)):\d+\b")
_COMM_PID = re.compile(r"(\b[\w./-]*[A-Za-z_][\w./-]*):\d+\b")
_HEX_LONG = re.compile(r"\b(?:0x)?[0-9a-f]{8,}\b", re.I)
_HEX_SHORT = re.compile(r"\b0x[0-9a-f]+\b", re.I)
_NUMBER = re.compile(r"(?<!\w)\d+(?:\.\d+)?")
_SPACES = re.compile(r"\s+")


def normalize_message(text: str) -> str:
    """A crash's title line with what varies between dumps of one bug taken out
    (see the module's docstring for the rules)."""
    text = _TIMESTAMP.sub("", text).strip()
    text = _SYMOFF.sub(lambda m: _CLONE.sub("", m.group(1)), text)
    text = _PATH.sub(lambda m: m.group(1), text)
    text = _FILE_LINE.sub(lambda m: m.group(1) + ":N", text)
    text = _COMM_PID.sub(lambda m: m.group(1) + ":PID", text)
    text = _HEX_LONG.sub("ADDR", text)
    text = _HEX_SHORT.sub("N", text)
    text = _NUMBER.sub("N", text)
    text = _SPACES.sub(" ", text).strip()
    return text[:MESSAGE_MAX]


def classify(panic_message: str | None, log_lines: Sequence[str]) -> tuple[str, str]:
    """(kind, raw title line)."""
    msg = (panic_message or "").strip()
    report_kind, title, _ = crash_report(log_lines)
    for kind, pat in _PANIC_KINDS:
        if pat.search(msg):
            if (
                kind in ("soft_lockup", "hung_task", "warning", "hard_lockup")
                and title
                and report_kind == kind
            ):
                return kind, title
            return kind, msg
    if _OOPS_PANICS.match(msg) or not msg:
        if report_kind is not None and title is not None:
            return report_kind, title
        return ("oops" if msg else "panic"), msg or "(no panic message)"
    return "panic", msg


def pick_frames(functions: Sequence[str | None], *, blocked: bool = False) -> list[str]:
    """The top TOP_FRAMES meaningful frames of a backtrace (innermost first)."""
    names = [normalize_function(f) for f in functions]
    start = 0
    for i, name in enumerate(names[:ENTRY_DEPTH]):
        if name in GENERIC_FRAMES:
            start = i + 1
    out: list[str] = []
    for name in names[start:]:
        if name is None or name in GENERIC_FRAMES:
            continue
        if blocked and not out and name in SCHEDULER_FRAMES:
            continue
        out.append(name)
        if len(out) == TOP_FRAMES:
            break
    return out


_HUNG = re.compile(r"INFO: task (\S+):(\d+) blocked for more than")


def hung_task_pid(log_lines: Sequence[str]) -> int | None:
    for line in reversed(log_lines):
        if m := _HUNG.search(line):
            return int(m.group(2))
    return None


def signature(facts: Facts) -> Signature:
    """The signature of one dump's crash."""
    kind, title = classify(facts.panic_message, facts.log_lines)
    frames = pick_frames(facts.frames)
    if kind == "hung_task" and facts.blocked:
        pid = hung_task_pid(facts.log_lines)
        chosen = next((b for b in facts.blocked if b.get("pid") == pid), None)
        chosen = chosen or facts.blocked[0]
        frames = pick_frames(chosen.get("frames") or [], blocked=True)
    return Signature(
        kind=kind, message=normalize_message(title), frames=frames, title=_strip_ts(title)
    )


def facts_from_report(report: dict[str, Any]) -> Facts:
    """The signature's facts out of a kvmcore report (kvmcore.report.build_report)."""
    headline = report.get("headline") or {}
    log = report.get("log") or {}
    bt = report.get("backtrace") or {}
    tasks = report.get("tasks") or {}
    frames = [f.get("function") for f in bt.get("frames") or []] if bt.get("available") else []
    blocked = []
    for t in tasks.get("uninterruptible") or []:
        tb = t.get("backtrace") or {}
        blocked.append(
            {
                "pid": t.get("pid"),
                "comm": t.get("comm"),
                "frames": [f.get("function") for f in tb.get("frames") or []],
            }
        )
    return Facts(
        # the panic() string itself (the headline's panic_message may be the
        # oops line a "Fatal exception" panic stands for); older reports lack it
        panic_message=headline.get("panic_string", headline.get("panic_message")),
        log_lines=log.get("lines") or [],
        frames=frames,
        blocked=blocked,
        arch=headline.get("arch"),
    )
