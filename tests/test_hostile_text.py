"""Terminal escapes planted in a dump (issue 12 §4.7): a task's comm (patched in
the reader's memory), OSRELEASE (patched in a copy of the committed file) and
a log line must reach the text, markdown and rich reports as visible \\xNN
escapes, never as raw control bytes or console markup."""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
from patching import plant
from rich.console import Console

import kvmcore
from kvmcore.report import build_report
from kvmcore.report.render import (
    md,
    md_code,
    render_markdown,
    render_rich,
    render_text,
    safe_report,
)
from kvmcore.textsafe import printable, printable_tree

COMMITTED = (
    Path(__file__).resolve().parent.parent
    / "sample_dumps"
    / "committed"
    / "x86_64-small"
    / "vmcore.mdf-d31-c"
)
MANIFEST = json.loads((COMMITTED.parent / "manifest.json").read_text())
COMM = b"\x1b]0;pwn\x07[bold]"  # sets the window title; then rich markup
RELEASE = MANIFEST["kernel_release"].encode()
EVIL_RELEASE = b"6.1.0\x1b[2J\x07amd6"  # clears the screen; same length as the real one
assert len(EVIL_RELEASE) == len(RELEASE)


def test_printable():
    assert printable("a\x1b]0;x\x07b") == "a\\x1b]0;x\\x07b"
    assert printable("tab\there") == "tab\there"
    assert printable("two\nlines") == "two\\x0alines"
    assert printable("two\nlines\r", newlines=True) == "two\nlines\\x0d"
    assert printable("csi\u009b2J del\x7f") == "csi\\x9b2J del\\x7f"
    assert printable("rtl\u202eevil") == "rtl\\u202eevil"
    assert printable("plain ünïcode ok") == "plain ünïcode ok"
    assert printable_tree({"k\x1b": ["v\x00", 3, None]}) == {"k\\x1b": ["v\\x00", 3, None]}


def test_markdown_helpers():
    assert md("a|b [x](y)") == "a\\|b \\[x\\](y)"
    assert md_code(["x ```` y"])[0] == "`````"


@pytest.fixture(scope="module")
def hostile(hostile_dump):
    """The report of the hostile dump, with a planted log line."""
    report = build_report(hostile_dump)
    # the planted bytes did reach the report (the renderers must make them safe)
    assert report["headline"]["task"]["comm"] == COMM.decode()
    assert report["headline"]["release"] == EVIL_RELEASE.decode()
    log = report["log"]["lines"]
    log.append("[    9.999999] planted \x1b[31mred\x1b[0m log line")
    return report


@pytest.mark.parametrize("name", ["ps", "sys", "bt", "info", "mods", "dmesg"])
def test_command_texts(hostile_dump, name):
    """Every text view of the command table (CLI and gdb's monitor) shows the
    planted comm and OSRELEASE escaped."""
    from kvmcore.commands import COMMANDS

    out = COMMANDS[name].run(hostile_dump)
    _no_controls(out)
    if name in ("ps", "bt", "sys"):
        assert "\\x1b]0;pwn\\x07[bold]" in out
    if name == "info":  # sys shows the release from memory (utsname), not VMCOREINFO
        assert "6.1.0\\x1b[2J\\x07amd6" in out


@pytest.fixture(scope="module")
def hostile_dump(tmp_path_factory):
    """The committed dump, its OSRELEASE changed in the file and the panicking
    task's comm changed in the reader."""
    copy = tmp_path_factory.mktemp("hostile") / "vmcore"
    shutil.copyfile(COMMITTED, copy)
    data = bytearray(copy.read_bytes())
    at = data.index(b"OSRELEASE=" + RELEASE + b"\n") + len(b"OSRELEASE=")
    data[at : at + len(RELEASE)] = EVIL_RELEASE
    copy.write_bytes(bytes(data))
    locate = kvmcore.open(str(copy))
    panic = MANIFEST["panic"]
    task = next(t for t in locate.kernel.tasks() if t.pid == panic["pid"])
    assert task.comm == panic["comm"]
    pa = locate.translate(task.address + locate.types.offsetof("struct task_struct", "comm")).pa
    # a fresh model, patched before its first read
    return plant(kvmcore.open(str(copy)), {pa: COMM + b"\0"})


def _no_controls(text: str) -> None:
    bad = sorted(
        {
            f"{ord(c):#x}"
            for c in text
            if (ord(c) < 0x20 and c not in "\n\t") or 0x7F <= ord(c) <= 0x9F
        }
    )
    assert not bad, f"raw control characters in the output: {bad}"


def test_text_report(hostile):
    out = render_text(hostile)
    _no_controls(out)
    assert f"task: {MANIFEST['panic']['pid']} (\\x1b]0;pwn\\x07[bold])" in out
    assert "6.1.0\\x1b[2J\\x07amd6" in out
    assert "planted \\x1b[31mred\\x1b[0m log line" in out


def test_renderers_escape_what_they_show_not_every_task(hostile):
    """The renderers escape the report without its list of every task, which
    none of them shows (only --json has it): the hostile comm is in that list
    and in the on-CPU rows, and the rows come out escaped; the report itself
    is left whole."""
    evil = COMM.decode()
    assert any(t["comm"] == evil for t in hostile["tasks"]["list"])
    assert any(t["comm"] == evil for t in hostile["tasks"]["on_cpu"])
    safe = safe_report(hostile)
    assert "list" not in safe["tasks"] and "list" in hostile["tasks"]
    assert all(t["comm"] != evil for t in safe["tasks"]["on_cpu"])
    assert safe["tasks"]["count"] == hostile["tasks"]["count"] == len(hostile["tasks"]["list"])


def test_markdown_report(hostile):
    out = render_markdown(hostile)
    _no_controls(out)
    # markdown-escaped: renders as \x1b]0;pwn\x07[bold]
    assert "(\\\\x1b\\]0;pwn\\\\x07\\[bold\\])" in out
    assert "planted \\x1b[31mred\\x1b[0m log line" in out  # inside a code block: as is


@pytest.mark.parametrize("terminal", [False, True])
def test_rich_report(hostile, terminal):
    buf = io.StringIO()
    render_rich(
        hostile,
        Console(
            file=buf,
            force_terminal=terminal,
            width=240,
            color_system="standard" if terminal else None,
        ),
    )
    out = buf.getvalue()
    if not terminal:
        _no_controls(out)
    assert "\x1b]" not in out and "\x07" not in out and "\x1b[2J" not in out
    assert "\\x1b]0;pwn\\x07[bold]" in out  # the markup shown, not applied
    assert "6.1.0\\x1b[2J\\x07amd6" in out
