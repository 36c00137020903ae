"""gdb threads from the kernel model's tasks.

Thread ids are the task's pid (tid, as the kernel numbers threads), so gdb's
"Thread 115" is pid 115; the per-CPU idle tasks all have pid 0 and get
IDLE_TID_BASE + cpu, above any pid the kernel hands out (PID_MAX_LIMIT is 4M).
Without a kernel model (an OS kvmcore does not know, or a model that finds
no tasks) each CPU of the dump's PRSTATUS notes is one thread.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KvmcoreError
from ..unwind import recovered_registers, unwind

IDLE_TID_BASE = 1 << 30


@dataclass
class GdbThread:
    tid: int
    pid: int
    comm: str
    cpu: int | None  # the CPU it was running on at the crash, if any
    task: Any = None
    _regs: Callable[[], dict[str, int]] | None = field(default=None, repr=False)
    _cache: dict[str, int] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return f"{self.pid} {self.comm}"

    #: frames kvmcore unwound for gdb (module code gdb has no unwind data for)
    skipped: list[str] = field(default_factory=list)

    @property
    def extra(self) -> str:
        text = f"pid {self.pid} {self.comm}"
        if self.cpu is not None:
            text += f" on CPU {self.cpu}"
        if self.skipped:
            text += (
                f"; {len(self.skipped)} module frame(s) above not shown: "
                + ", ".join(self.skipped)
                + " (see `monitor bt`)"
            )
        return text

    def registers(self) -> dict[str, int]:
        """The task's registers; {} when none can be recovered (all unavailable)."""
        if self._cache is None:
            try:
                self._cache = dict(self._regs()) if self._regs else {}
            except (KvmcoreError, LookupError, ValueError, TypeError):
                self._cache = {}
        return self._cache


class ThreadList:
    """All threads of one dump, in pid order, and which one is current."""

    def __init__(self, threads: list[GdbThread], current: int, source: str) -> None:
        self.threads = threads
        self.by_tid = {t.tid: t for t in threads}
        self.current_tid = current
        self.source = source  # "tasks" or "cpus"

    def get(self, tid: int) -> GdbThread | None:
        if tid in (0, -1):
            return self.by_tid.get(self.current_tid)
        return self.by_tid.get(tid)

    @classmethod
    def from_dump(cls, dump: Any) -> ThreadList:
        try:
            return cls._from_tasks(dump)
        except (KvmcoreError, NotImplementedError):
            return cls._from_cpus(dump)

    @classmethod
    def _from_tasks(cls, dump: Any) -> ThreadList:
        kernel = dump.kernel
        tasks = kernel.tasks()
        if not tasks:
            raise KvmcoreError("the kernel model found no tasks", dump.path)
        cpu_regs = {}
        with contextlib.suppress(KvmcoreError):
            cpu_regs = {c.cpu: c.regs for c in dump.cpu_states}
        threads: list[GdbThread] = []
        used: set[int] = set()
        for task in tasks:
            on_cpu = bool(getattr(task, "on_cpu", False))
            cpu = getattr(task, "cpu", None) if on_cpu else None
            # a per-thread id (Linux pid, FreeBSD td_tid: kvmcore.kernel.TaskModel.tid)
            ident = getattr(task, "tid", task.pid)
            tid = ident if ident > 0 else IDLE_TID_BASE + (getattr(task, "cpu", 0) or 0)
            while tid in used:  # a model quirk must not merge two threads
                tid += IDLE_TID_BASE
            used.add(tid)
            thread = GdbThread(tid, task.pid, str(task.comm), cpu, task, None)
            thread._regs = _task_regs(dump, thread, cpu_regs.get(cpu))
            threads.append(thread)
        threads.sort(key=lambda t: t.tid)
        current = threads[0].tid
        try:
            panic = kernel.panic_task()
            current = next(
                t.tid
                for t in threads
                if t.task is panic
                or getattr(t.task, "address", None) == getattr(panic, "address", 0)
            )
        except (KvmcoreError, StopIteration, NotImplementedError):
            pass
        return cls(threads, current, "tasks")

    @classmethod
    def _from_cpus(cls, dump: Any) -> ThreadList:
        try:
            states = dump.cpu_states
        except KvmcoreError:
            states = []
        threads = [
            GdbThread(s.cpu + 1, s.pid, f"CPU {s.cpu}", s.cpu, None, _fixed(s.regs)) for s in states
        ]
        if not threads:  # gdb needs one thread to talk to
            threads = [GdbThread(1, 0, "no registers in dump", None, None, None)]
        return cls(threads, threads[0].tid, "cpus")


def _fixed(regs: dict[str, int]) -> Callable[[], dict[str, int]]:
    return lambda: regs


def _task_regs(
    dump: Any, thread: GdbThread, cpu_regs: dict[str, int] | None
) -> Callable[[], dict[str, int]]:
    def regs() -> dict[str, int]:
        task = thread.task
        try:
            values: dict[str, int] = task.registers()  # a kvmcore.kernel.TaskModel
        except (KvmcoreError, NotImplementedError):
            if cpu_regs is None:
                raise
            values = cpu_regs  # a running task: its CPU's PRSTATUS
        if thread.cpu is not None:
            values = _past_module_frames(dump, thread, values)
        return values

    return regs


def _kernel_text(dump: Any) -> tuple[int, int] | None:
    try:
        return dump.symbols.lookup("_stext"), dump.symbols.lookup("_etext")
    except KvmcoreError:
        return None


def _module_lines(dump: Any) -> Any:
    from ..unwind.modlines import module_lines

    try:
        return module_lines(dump)
    except KvmcoreError:
        return None


def _past_module_frames(dump: Any, thread: GdbThread, regs: dict[str, int]) -> dict[str, int]:
    """A CPU stopped inside a module (pvpanic's notifier, on QEMU dumps) leaves
    gdb with a frame it cannot unwind without that module's debug file, and
    `bt` ends there. kvmcore's own unwinder (ORC, stack scan) walks such frames,
    so gdb is given the registers of the first frame back in the kernel
    image; the skipped frames are named in the thread's extra info. Frames
    of modules whose debug files the server was given (--module-dir) are
    not skipped: gdb unwinds them with the .ko's .debug_frame."""
    pc_name, sp_name = dump.arch.pc_reg, dump.arch.sp_reg
    text = _kernel_text(dump)
    pc = regs.get(pc_name)
    if text is None or pc is None:
        return regs
    lines = _module_lines(dump)

    def known(addr: int) -> bool:
        """In the kernel image, or in a module gdb has the debug file of
        (kvmcore serve --module-dir: the printed add-symbol-file lines)."""
        return text[0] <= addr < text[1] or (lines is not None and lines.covers(addr))

    if known(pc):
        return regs
    try:
        bt = unwind(dump, regs, max_frames=16, lines=False)
    except (KvmcoreError, NotImplementedError):
        return regs
    skipped: list[str] = []
    for index, frame in enumerate(bt.frames):
        if known(frame.pc):
            if not skipped and not (frame.regs and frame.pc != pc):
                return regs
            thread.skipped = skipped
            if frame.regs:  # entered through a saved pt_regs: all of them are known
                return dict(frame.regs)
            # only pc and sp are known for sure; the callee-saved registers the
            # module code changed are unavailable, except a frame pointer ORC places
            out = recovered_registers(dump, bt.frames[index:])
            out.update({pc_name: frame.pc, sp_name: frame.sp})
            return out
        skipped.append(frame.function or f"{frame.pc:#x}")
    return regs
