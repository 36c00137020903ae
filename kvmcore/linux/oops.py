"""Crash reports in the kernel log: where an oops, BUG or warning report
starts, and which panic messages only say that an oops happened ("Fatal
exception": panic_on_oops, arm64's "Oops: Fatal exception"), so that the
report's first line says what went wrong. Pure functions on log lines; the
panic headline (kvmcore.linux.panic) and crash signatures
(kvmcore.triage.signature) both read them."""

from __future__ import annotations

import re
from collections.abc import Iterable

PANIC_LINE = re.compile(r"Kernel panic - not syncing: ?(.*)")
TIMESTAMP = re.compile(r"^\s*(?:<\d+>)?\[\s*\d+\.\d+\]\s?")
# the first line of a crash report in the log; `kind` is the class it implies
REPORT_STARTS: list[tuple[str, re.Pattern[str]]] = [
    ("soft_lockup", re.compile(r"BUG: soft lockup")),
    ("hard_lockup", re.compile(r"(?:Watchdog detected|NMI watchdog: .*) hard LOCKUP", re.I)),
    ("hung_task", re.compile(r"INFO: task \S+ blocked for more than")),
    ("oom", re.compile(r"invoked oom-killer|Out of memory")),
    ("warning", re.compile(r"^WARNING: CPU: ")),
    (
        "bug",
        re.compile(
            r"^kernel BUG at |^BUG: (?:Bad page|scheduling while atomic)"
            r"|corruption[.:]|^BUG: KASAN|^BUG: KFENCE"
        ),
    ),
    (
        "oops",
        re.compile(
            r"^BUG: (?:kernel NULL pointer dereference|unable to handle)"
            r"|^(?:general protection fault|divide error|invalid opcode|"
            r"stack segment|double fault)|kernel stack overflow"
            r"|^BUG: TASK stack guard page"
            r"|^Unable to handle kernel |^Internal error: |^Oops(?: -|:)"
        ),
    ),
]

# panic messages that only say an oops happened: the log's report says what
OOPS_PANICS = re.compile(
    # arm64's die() panics with "<what>: Fatal exception" (Oops, Oops - BUG, ...)
    r"^(?:[\w -]{1,40}: )?(?:Fatal exception|Fatal exception in interrupt|"
    r"Aiee, killing interrupt handler!|Attempted to kill the idle task!|"
    r"Attempted to kill init!.*|Machine halted\.?)$|^$"
)


def strip_ts(line: str) -> str:
    return TIMESTAMP.sub("", line).rstrip()


def crash_report(log_lines: Iterable[str]) -> tuple[str | None, str | None, int | None]:
    """(kind, title line, index) of the last crash report in the log before the
    last panic line (or in the whole log when it holds no panic line)."""
    lines = [strip_ts(x) for x in log_lines]
    end = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        if PANIC_LINE.search(lines[i]) and "---[ end" not in lines[i]:
            end = i
            break
    for i in range(end - 1, -1, -1):
        kind = report_kind(lines[i])
        if kind is None:
            continue
        # one report can have several title-like lines (kernel BUG at ... then
        # invalid opcode; BUG: kernel NULL pointer ... then Oops:; a corruption
        # check's line, cut here, kernel BUG): the report's first line says most
        j = i
        k = i - 1
        while k >= max(0, j - REPORT_LOOKBACK):
            if "---[ end trace" in lines[k]:
                break
            earlier = report_kind(lines[k])
            if earlier is not None:
                kind, j = earlier, k
            k -= 1
        return kind, lines[j], j
    return None, None, None


#: how many lines before a report's title line another title line of the same
#: report may be (x86: BUG: kernel NULL pointer dereference ... 4 lines ... Oops:; arm64:
#: Unable to handle kernel ... 13 lines of abort info ... Internal error: Oops:)
REPORT_LOOKBACK = 20


def report_kind(line: str) -> str | None:
    for kind, pat in REPORT_STARTS:
        if pat.search(line):
            return kind
    return None
