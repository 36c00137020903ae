"""Command lines of the tools being compared, for one dump."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

PY = sys.executable
KVMCORE = str(Path(PY).with_name("kvmcore"))
CRASH = shutil.which("crash")
GDB = shutil.which("gdb")

# crash commands doing the work of each kvmcore command
CRASH_COMMANDS = {
    "info": ["sys"],
    "ps": ["ps"],
    "dmesg": ["log"],
    "bt": ["bt"],
    "analyze": ["sys", "ps", "log", "bt"],
}


# the exploration group: kvmcore's arguments after the dump for each task; drgn runs
# bench/drgn_explore.py TASK (same work through its helpers). 151 is the crashing task.
EXPLORE_COMMANDS = {
    "p": ["p", "init_task.comm"],
    "struct": ["struct", "task_struct", "-o"],
    "rd": ["rd", "init_task", "64"],
    "list": ["list", "init_task.tasks", "-m", "task_struct.tasks", "-s", "pid,comm"],
    "runq": ["runq"],
    "task": ["task", "--pid", "151"],
    "kmem -i": ["kmem", "-i"],
    "kmem -s": ["kmem", "-s"],
    "files": ["files", "--pid", "151"],
    "vm": ["vm", "--pid", "151"],
    "mount": ["mount"],
    "net": ["net"],
    "irq": ["irq"],
    "log": ["log"],
}


def kvmcore_explore_cmd(task: str, dump: Path) -> list[str]:
    name, *rest = EXPLORE_COMMANDS[task]
    return [KVMCORE, name, str(dump), *rest]


def drgn_explore_cmd(task: str, dump: Path, vmlinux: Path) -> list[str]:
    return [PY, "-m", "bench.drgn_explore", task, str(dump), str(vmlinux)]


def kvmcore_cmd(task: str, dump: Path, vmlinux: Path | None = None) -> list[str]:
    files = [str(dump)] + ([str(vmlinux)] if vmlinux else [])
    if task == "analyze":
        return [KVMCORE, "analyze", *files, "--format", "text"]
    return [KVMCORE, task, *files]


def compile_kvmcore() -> None:
    """Byte-compile kvmcore as a pip-installed wheel has it: this environment
    sets PYTHONDONTWRITEBYTECODE and the editable install writes no .pyc, so
    every run would otherwise compile ~60 ms of kvmcore first."""
    import subprocess

    import kvmcore

    package = Path(kvmcore.__file__).resolve().parent
    # compileall does not follow symlinked directories: arches/ and cli/ by name
    dirs = [package, (package / "arches").resolve(), (package / "cli").resolve()]
    dirs.append(Path(__file__).resolve().parent)  # the workers, kvmcore's and drgn's
    subprocess.run(
        [PY, "-m", "compileall", "-q", *map(str, dirs)],
        check=False,
        capture_output=True,
        timeout=600,
    )


def drgn_cmd(task: str, dump: Path, vmlinux: Path) -> list[str]:
    return [PY, "-m", "bench.drgn_worker", task, str(dump), str(vmlinux)]


def kvmcore_read_cmd(mode: str, dump: Path) -> list[str]:
    return [PY, "-m", "bench.kvmcore_worker", mode, str(dump)]


def crash_cmd(task: str, dump: Path, vmlinux: Path, workdir: Path) -> list[str]:
    cmdfile = workdir / f"crash-{task}.cmd"
    cmdfile.write_text("\n".join(CRASH_COMMANDS[task] + ["quit"]) + "\n")
    return [CRASH or "crash", "-s", "-i", str(cmdfile), str(vmlinux), str(dump)]


def _gdb_dump_memory(setup: list[str], start: int, size: int, out: Path) -> list[str]:
    """gdb in batch mode dumping [start, start+size) to `out`; the dump itself is
    timed inside gdb (its Python) and printed as a BENCH line."""
    cmd = [GDB or "gdb", "-nx", "-batch"]
    for line in setup + [
        "python import time; t0 = time.perf_counter()",
        f"dump binary memory {out} {start:#x} {start + size:#x}",
        'python print("BENCH {\\"loop_seconds\\": %f}" % (time.perf_counter() - t0))',
    ]:
        cmd += ["-ex", line]
    return cmd


def gdb_via_serve_cmd(dump: Path, va: int, size: int, out: Path) -> list[str]:
    return _gdb_dump_memory(
        ["set remotetimeout 120", f"target remote | {KVMCORE} serve --stdio {dump}"], va, size, out
    )


def gdb_core_cmd(dump: Path, pa: int, size: int, out: Path) -> list[str]:
    return _gdb_dump_memory([f"core-file {dump}"], pa, size, out)
