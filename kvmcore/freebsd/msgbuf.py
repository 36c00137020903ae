"""The FreeBSD message buffer as log records.

msgbuf is a plain byte ring: no sequence numbers, no timestamps, no levels
beyond an optional "<pri>" prefix a line may keep (msgbuf's syslog priority,
when the kernel wrote it with one). So each line is one record, numbered from
0, with timestamp 0; the log says `timestamps = False` and the renderers
print the bare text instead of a "[    0.000000]" prefix.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

PRI_RE = re.compile(r"^<(\d{1,3})>")
LOG_KERN = 0
DEFAULT_LEVEL = 6  # LOG_INFO: what an unprefixed kernel printf is


@dataclass(frozen=True)
class MsgbufRecord:
    """One line of the message buffer (kvmcore.kernel's log record fields)."""

    seq: int
    text: str
    level: int = DEFAULT_LEVEL
    facility: int = LOG_KERN
    timestamp_ns: int = 0
    caller_id: int = 0
    continuation: bool = False

    @property
    def caller(self) -> str:
        return ""  # msgbuf records no caller

    def format(self) -> str:
        return self.text


@dataclass
class MsgbufLog:
    records: list[MsgbufRecord]
    layout: str = "msgbuf"
    partial: bool = False
    problem: str | None = None
    timestamps: bool = False
    #: the whole buffer as text, for callers that want the bytes as written
    text: str = field(default="", repr=False)


def msgbuf_log(text: str) -> MsgbufLog:
    """Split msgbuf text into line records; a "<pri>" prefix gives level and facility."""
    records = []
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for seq, line in enumerate(lines):
        level, facility = DEFAULT_LEVEL, LOG_KERN
        m = PRI_RE.match(line)
        if m:
            pri = int(m.group(1))
            level, facility = pri & 7, pri >> 3
            line = line[m.end() :]
        records.append(MsgbufRecord(seq, line, level, facility))
    return MsgbufLog(records, text=text)
