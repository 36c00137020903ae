"""Which NT_PRSTATUS note belongs to which CPU, and the panic's CPU line, on
the real dumps: QEMU numbers its notes by vCPU (pr_pid = cpu + 1), a real
kdump by the task that was running (pr_pid = its pid)."""

from __future__ import annotations

import pytest

import kvmcore
from kvmcore.errors import UnsupportedError
from kvmcore.linux.panic import CPU_LINE_RE


@pytest.mark.parametrize(
    "sid,fmt",
    [
        ("x86_64-kdump", "proc-elf"),
        ("x86_64-kdump", "mdf-d31-l"),
        ("x86_64-kaslr", "elf"),
        ("arm64-kaslr", "elf"),
    ],
)
def test_panic_cpu_gets_its_own_note(samples, sid, fmt):
    s = samples.get_built(sid)
    m = s.manifest
    kernel = kvmcore.open(str(s.file(fmt))).kernel
    note = kernel.cpu_registers[m["panic"]["cpu"]]
    if m["kind"] == "kdump":
        assert note.pid == m["panic"]["pid"]  # crash_save_cpu() writes current->pid
    else:
        assert note.pid == m["panic"]["cpu"] + 1  # QEMU: one note per vCPU, pid = index + 1
    task = kernel.find_task(m["panic"]["pid"])
    assert task.registers() == note.regs


@pytest.mark.fast
def test_cpu_line_old_and_new_formats():
    """The "CPU: n PID: p Comm: c" line dump_stack() prints; 6.10 added "UID: u"."""
    for line, cpu, pid in (
        ("CPU: 1 PID: 115 Comm: crasher Not tainted 6.1.0-56-amd64 #1", 1, 115),
        ("CPU: 3 UID: 0 PID: 42 Comm: sh Tainted: G        W  6.12.0 #1", 3, 42),
    ):
        m = CPU_LINE_RE.search(line)
        assert m and (int(m.group(1)), int(m.group(2))) == (cpu, pid)


def test_impossible_va_bits_is_a_clear_error(samples):
    dump = kvmcore.open(str(samples.get_built("arm64-kaslr").file("elf")))
    dump.vmcoreinfo.entries["NUMBER(VA_BITS)"] = "99"  # in memory only
    with pytest.raises(UnsupportedError, match="impossible VA_BITS 99"):
        dump.linear_map_address(0)
