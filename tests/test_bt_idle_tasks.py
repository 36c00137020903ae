"""`bt --pid 0 --cpu N`: each CPU's own idle task (swapper/N), as crash shows
`bt` of a per-CPU idle task; `--pid 0` alone stays swapper/0. Oracle: drgn's
idle_task(prog, cpu) and its stack_trace() with the -dbg vmlinux (DWARF/ORC),
on the real x86_64 sample (two vCPUs, whose idle tasks both sleep in
schedule_idle: busyloop_task holds CPU 0, the panicking crasher CPU 1)."""

from __future__ import annotations

import json
import subprocess
import sys

from oracles import drgn_program

PY = sys.executable
SID = "x86_64-kaslr"


def bt_json(*args: str) -> dict:
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "bt", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def test_each_cpus_idle_task(samples):
    from drgn.helpers.linux.sched import idle_task

    s = samples.get_built(SID)
    dump = s.file("elf")
    prog = drgn_program(str(dump), str(samples.vmlinux(SID)))
    ncpus = s.manifest["qemu"]["smp"]
    assert ncpus >= 2
    for cpu in range(ncpus):
        want = idle_task(prog, cpu)
        (task,) = bt_json(str(dump), "--pid", "0", "--cpu", str(cpu))["tasks"]
        assert int(task["address"], 16) == want.value_(), (cpu, task["address"])
        assert (task["pid"], task["comm"], task["cpu"]) == (0, f"swapper/{cpu}", cpu)
        ours = [int(f["pc"], 16) for f in task["backtrace"]["frames"]]
        theirs = [f.pc for f in prog.stack_trace(want) if not f.is_inline]
        assert ours and ours == theirs[: len(ours)], (cpu, [hex(p) for p in ours], theirs)
        names = [f["function"].split("+")[0] for f in task["backtrace"]["frames"]]
        assert "schedule_idle" in names, names
    (task,) = bt_json(str(dump), "--pid", "0")["tasks"]
    assert task["comm"] == "swapper/0"


def test_no_such_cpu_is_one_line_not_found(samples):
    s = samples.get_built(SID)
    cpu = s.manifest["qemu"]["smp"]  # one past the last
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "bt", str(s.file("elf")), "--pid", "0", "--cpu", str(cpu)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 6, p.stdout + p.stderr
    assert p.stderr.count("\n") == 1 and f"CPU {cpu} has no idle task" in p.stderr
