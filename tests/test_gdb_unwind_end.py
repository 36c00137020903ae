"""gdb through `kvmcore serve` with the -dbg vmlinux: the panicking task's
backtrace ends at the syscall entry, as crash's does, instead of wandering
into a dozen garbage frames read from the user pt_regs. The vmlinux's
.debug_frame has no FDE for the entry code; the server lists a small ELF
with the ORC-made rows gdb lacks as a library (kvmcore.gdbserver.unwindlib).
Oracle: gdb's own `bt`, run the way `kvmcore serve` tells the user to."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys

import pytest

import kvmcore
from kvmcore.gdbserver.server import gdb_command_line

FRAME = re.compile(r"^#(\d+)\s+(?:(0x[0-9a-f]+) in )?(\S+) \(", re.M)


@pytest.mark.parametrize("sid,fmt", [("x86_64-kdump", "proc-elf"), ("x86_64-kaslr", "elf")])
def test_gdb_bt_ends_at_the_syscall_entry(samples, sid, fmt):
    s = samples.get_built(sid)
    vmlinux = str(samples.vmlinux(sid))
    with kvmcore.open(str(s.file(fmt)), vmlinux=vmlinux) as dump:
        line = gdb_command_line(
            dump, stdio=True, serve_command=f"{sys.executable} -m kvmcore.gdbserver"
        )
    argv = shlex.split(line)
    argv[1:1] = ["-nx", "-batch", "-ex", "set width 0", "-ex", "set height 0"]
    argv += ["-ex", "bt"]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    out = p.stdout + p.stderr
    frames = FRAME.findall(p.stdout)
    names = [name for _, _, name in frames]
    assert "panic" in names and "do_syscall_64" in names, out
    last = names.index("entry_SYSCALL_64") if "entry_SYSCALL_64" in names else None
    assert last is not None, out
    # at most one user-space frame after it, and no frame gdb cannot name
    assert len(names) - last - 1 <= 1, out
    assert "?? ()" not in p.stdout, out
    assert "Backtrace stopped" not in out, out
