"""`python -m bench.drgn_worker TASK DUMP VMLINUX`: drgn doing the same work as a
kvmcore command.  TASK: info, ps, dmesg, bt, analyze (all four), seq/rand
(the read benchmark through prog.read), or load (open the dump and load the
vmlinux's debug info, nothing else)."""

from __future__ import annotations

import sys

import drgn
from drgn.helpers.linux.pid import for_each_task
from drgn.helpers.linux.printk import get_printk_records
from drgn.helpers.linux.sched import task_cpu, task_state_to_char

from . import readplan


def open_program(dump: str, vmlinux: str) -> drgn.Program:
    prog = drgn.Program()
    prog.set_core_dump(dump)
    prog.load_debug_info([vmlinux])
    return prog


def info(prog: drgn.Program) -> None:
    uts = prog["init_uts_ns"].name
    print("release:", uts.release.string_().decode())
    print("machine:", uts.machine.string_().decode())


def ps(prog: drgn.Program) -> None:
    print("PID PPID CPU TASK ST COMM")
    for task in for_each_task(prog):
        print(
            task.pid.value_(),
            task.real_parent.pid.value_(),
            task_cpu(task),
            hex(task.value_()),
            task_state_to_char(task),
            task.comm.string_().decode(),
        )


def dmesg(prog: drgn.Program) -> None:
    for rec in get_printk_records(prog):
        print(f"[{rec.timestamp / 1e9:12.6f}] {rec.text.decode(errors='replace')}")


def bt(prog: drgn.Program) -> None:
    thread = prog.crashed_thread()
    print(f"PID: {thread.tid} COMMAND: {thread.object.comm.string_().decode()}")
    print(thread.stack_trace())


def analyze(prog: drgn.Program) -> None:
    info(prog)
    ps(prog)
    dmesg(prog)
    bt(prog)


TASKS = {
    "info": info,
    "ps": ps,
    "dmesg": dmesg,
    "bt": bt,
    "analyze": analyze,
    "load": lambda prog: None,
}


def main(argv: list[str]) -> int:
    task, dump, vmlinux = argv
    prog = open_program(dump, vmlinux)
    if task in ("seq", "rand"):
        direct_map = prog["page_offset_base"].value_()
        readplan.emit(readplan.run(task, prog.read, (drgn.FaultError,), direct_map))
    else:
        TASKS[task](prog)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
