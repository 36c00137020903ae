"""What every OS personality (`dump.kernel`) provides to the report, the CLI
commands and the gdb server: kvmcore.linux.LinuxKernel and
kvmcore.freebsd.FreeBSDKernel both satisfy `KernelModel`.

The report layer reads only these attributes; anything OS-specific stays in
the personality. Backtraces are not the model's: the unwinders sit above it
(kvmcore.unwind.backtrace(dump, task), or dump.backtrace(task)). Field
meanings that differ between kernels:

- `Task.pid` is the id `ps` shows (Linux: the thread's pid; FreeBSD: the
  process's p_pid). `Task.tid` is unique per thread (Linux: pid; FreeBSD:
  td_tid, the ids kgdb shows); gdb thread ids use it.
- `LogRecord.timestamp_ns` is None-free: records of a log without timestamps
  (FreeBSD's msgbuf) carry 0 and their log says `timestamps = False`.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class TaskModel(Protocol):
    """One thread of execution as the report shows it."""

    address: int
    pid: int
    tgid: int
    ppid: int
    comm: str
    state: str  # one letter of R S D T t X Z P I
    cpu: int
    on_cpu: bool
    is_idle: bool

    @property
    def tid(self) -> int: ...

    def registers(self) -> dict[str, int]: ...

    def as_dict(self) -> dict[str, object]: ...  # JSON-ready, for the report


@runtime_checkable
class ModuleModel(Protocol):
    """A loaded kernel module (Linux module, FreeBSD KLD)."""

    name: str
    base: int
    size: int
    taints: int
    sections: dict[str, int]

    def as_dict(self) -> dict[str, object]: ...  # JSON-ready, for the report


@runtime_checkable
class KernelModel(Protocol):
    """A kernel's state rebuilt from a dump."""

    dump: Any
    #: how derived facts were found (symbol, scan, ...), for the report
    sources: dict[str, str]

    @property
    def task_list(self) -> Any: ...  # .tasks, .partial, .problem

    def tasks(self) -> list[Any]: ...

    def find_task(self, pid: int) -> Any: ...

    def running_task(self, cpu: int) -> Any: ...

    def panic_task(self) -> Any: ...

    @property
    def kernel_log(self) -> Any: ...  # .records, .layout, .partial, .problem

    def log(self) -> list[Any]: ...

    def modules(self) -> list[Any]: ...

    @property
    def panic(self) -> Any: ...  # message, cpu, task, uptime_ns, taint_string, ...

    @property
    def utsname(self) -> dict[str, str]: ...  # sysname nodename release version machine

    @property
    def release(self) -> str: ...

    @property
    def nr_cpus(self) -> int: ...

    @property
    def online_cpus(self) -> list[int] | None: ...

    def registers_note(self, task: Any) -> str | None:
        """Why `task.registers()` are not what the task ran with, when they
        are not (a running task whose CPU saved no registers), else None."""
        ...

    def symbol_table(self) -> Any:
        """The kernel's symbol table with every loaded module's own symbols
        added (an explicit step: it reads the module list)."""
        ...


def has_timestamps(log: Any) -> bool:
    """Whether a kernel log's records carry real timestamps (FreeBSD's msgbuf has none)."""
    return bool(getattr(log, "timestamps", True))


__all__ = ["KernelModel", "TaskModel", "ModuleModel", "has_timestamps"]
