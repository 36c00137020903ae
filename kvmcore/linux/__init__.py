"""The Linux kernel model: what the kernel knew when it died.

`LinuxKernel(dump)` answers tasks, registers, the log, modules, the panic and
backtraces, each from the dump (with a vmlinux when one is given).
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import AddressError, KvmcoreError, SymbolError
from .modules import Module, read_modules
from .panic import PanicInfo, find_panic
from .printk import KernelLog, LogRecord, read_kernel_log
from .scan import find_idle_tasks, find_init_task
from .switch_frame import switch_frame
from .tasks import Task, TaskList, walk_tasks

if TYPE_CHECKING:
    from ..dump import Dump

MAX_CPUS = 8192


class LinuxKernel:
    """A Linux kernel's state, rebuilt from a dump."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        #: where each derived fact came from (symbol, scan, ...), for the report
        self.sources: dict[str, str] = {}

    # -- symbols -----------------------------------------------------------
    def symbol(self, name: str) -> int | None:
        """Address of `name` from the best symbol source, or VMCOREINFO's SYMBOL()."""
        try:
            addr = self.dump.symbols.get(name)
        except KvmcoreError:
            addr = None
        if addr is None and self.dump.vmcoreinfo is not None:
            addr = self.dump.vmcoreinfo.symbol(name)
        return addr

    def require(self, name: str) -> int:
        addr = self.symbol(name)
        if addr is None:
            raise SymbolError(
                f"symbol {name} is unknown (kallsyms in this kernel may lack data "
                "symbols: pass the vmlinux or a System.map)",
                self.dump.path,
            )
        return addr

    # -- identity ----------------------------------------------------------
    @cached_property
    def utsname(self) -> dict[str, str]:
        info = self.dump.vmcoreinfo
        base = info.symbol("init_uts_ns") if info else None
        if base is None:
            base = self.require("init_uts_ns")
        offset = info.offset("uts_namespace", "name") if info else None
        if offset is None:
            offset = self._uts_name_offset(base)
        raw = self.dump.read(base + offset, 65 * 6)
        fields = ("sysname", "nodename", "release", "version", "machine", "domainname")
        return {
            f: raw[i * 65 : (i + 1) * 65].split(b"\0", 1)[0].decode("utf-8", "replace")
            for i, f in enumerate(fields)
        }

    def _uts_name_offset(self, base: int) -> int:
        """offsetof(struct uts_namespace, name) when VMCOREINFO does not say
        (OFFSET(uts_namespace.name) came in 5.11; before, a 4-byte kref led
        the struct): where the sysname "Linux" is (the initial namespace's
        never changes), else what the types say."""
        head = self.dump.read(base, 16)
        for offset in (0, 4):
            if head[offset : offset + 6] == b"Linux\0":
                return offset
        try:
            return self.dump.types.offsetof("struct uts_namespace", "name")
        except KvmcoreError:
            return 0

    @property
    def release(self) -> str:
        info = self.dump.vmcoreinfo
        if info and info.osrelease:
            return info.osrelease
        return self.utsname["release"]

    # -- CPUs --------------------------------------------------------------
    @cached_property
    def nr_cpus(self) -> int:
        addr = self.symbol("nr_cpu_ids")
        if addr is not None:
            try:
                n = self.dump.read_u32(addr)
                if 0 < n <= MAX_CPUS:
                    return n
            except AddressError:
                pass
        return max(1, len(self.dump.cpu_states))

    def _cpumask(self, name: str) -> list[int] | None:
        addr = self.symbol(name)
        if addr is None:
            return None
        # an array of unsigned longs: CPU n is bit n % bits of word n // bits,
        # whatever the byte order (a big-endian word's low bits are its last bytes)
        word = self.dump.word_size
        nwords = -(-self.nr_cpus // (8 * word))
        try:
            raw = self.dump.read(addr, nwords * word)
        except AddressError:
            return None
        bits = 0
        for i in range(nwords):
            bits |= int.from_bytes(raw[i * word : (i + 1) * word], self.dump.byteorder) << (
                i * 8 * word
            )
        return [c for c in range(self.nr_cpus) if bits >> c & 1]

    @cached_property
    def online_cpus(self) -> list[int] | None:
        """CPUs in cpu_online_mask at the crash (panic takes the others offline)."""
        return self._cpumask("__cpu_online_mask")

    @cached_property
    def per_cpu_offsets(self) -> list[int] | None:
        addr = self.symbol("__per_cpu_offset")
        if addr is None:
            return None
        try:
            return self.dump.read_ptrs(addr, self.nr_cpus)
        except AddressError:
            return None

    def per_cpu(self, name: str, cpu: int) -> int | None:
        """Address of per-CPU variable `name` for `cpu`."""
        base = self.symbol(name)
        offsets = self.per_cpu_offsets
        if base is None or offsets is None or cpu >= len(offsets):
            return None
        return (base + offsets[cpu]) & ((1 << (8 * self.dump.word_size)) - 1)

    @cached_property
    def runqueue_tasks(self) -> dict[int, tuple[int, int]]:
        """cpu -> (curr, idle) task addresses from each CPU's struct rq."""
        out: dict[int, tuple[int, int]] = {}
        try:
            off_curr = self.dump.types.offsetof("struct rq", "curr")
            off_idle = self.dump.types.offsetof("struct rq", "idle")
        except KvmcoreError:
            return out
        for cpu in range(self.nr_cpus):
            rq = self.per_cpu("runqueues", cpu)
            if rq is None:
                break
            try:
                out[cpu] = (self.dump.read_ptr(rq + off_curr), self.dump.read_ptr(rq + off_idle))
            except AddressError:
                continue
        return out

    # -- tasks -------------------------------------------------------------
    @cached_property
    def init_task(self) -> int:
        """init_task from symbols, else from a validated scan of the kernel image."""
        addr = self.symbol("init_task")
        if addr is not None:
            self.sources["init_task"] = "symbol"
            return addr
        addr = find_init_task(self.dump)
        if addr is None:
            raise SymbolError(
                "init_task is unknown and no task_struct named swapper/0 was found "
                "in the kernel image: pass the vmlinux or a System.map",
                self.dump.path,
            )
        self.sources["init_task"] = "kernel image scan"
        return addr

    @cached_property
    def task_list(self) -> TaskList:
        init_task = self.init_task
        idle = [idle for _, idle in self.runqueue_tasks.values()]
        if not idle and self.nr_cpus > 1:
            idle = list(find_idle_tasks(self.dump, self.nr_cpus).values())
            self.sources["idle_tasks"] = "memory scan"
        result = walk_tasks(self.dump, init_task, idle, self.task_registers)
        curr = {c: cur for c, (cur, _) in self.runqueue_tasks.items()}
        for task in result.tasks:  # rq->curr is the authority on what ran where
            if curr and curr.get(task.cpu) == task.address:
                task.on_cpu = True
            elif curr:
                task.on_cpu = False
        return result

    def tasks(self) -> list[Task]:
        return self.task_list.tasks

    def find_task(self, pid: int) -> Task | None:
        for task in self.tasks():
            if task.pid == pid and not (pid == 0 and task.cpu != 0):
                return task
        return None

    @cached_property
    def cpu_registers(self) -> dict[int, Any]:
        """CPU -> the NT_PRSTATUS note saved for it. QEMU writes one note per vCPU,
        in order, with pr_pid = cpu + 1. kdump writes one per CPU that saved its
        registers, with pr_pid = the task running there, so a CPU that saved none
        leaves a gap in the order: those notes are matched by pid, and only the
        pid-0 (idle) ones by order onto the CPUs still without a note."""
        states = self.dump.cpu_states
        if states and all(s.numbered for s in states):
            return {s.cpu: s for s in states}
        # QEMU's pr_pid is cpu + 1, written in the wrong byte order by its
        # s390x target, and not at all (0) by its ppc64 one: with a note for
        # every possible CPU and no pid to match, the order is the CPU number
        if (
            all(s.pid == i + 1 for i, s in enumerate(states))
            or all(s.pid == (i + 1) << 24 for i, s in enumerate(states))
            or (len(states) == self.nr_cpus and all(s.pid == 0 for s in states))
        ):
            return dict(enumerate(states))
        running = {t.pid: t.cpu for t in self.tasks() if t.on_cpu and not t.is_idle}
        panic = self.panic
        if panic.log_pid and panic.cpu is not None:
            # the panicking task may be unreadable (its task_struct filtered
            # out): its pid and CPU are in the panic's log lines
            running.setdefault(panic.log_pid, panic.cpu)
        out: dict[int, Any] = {}
        leftovers = []
        for state in states:
            cpu = running.get(state.pid) if state.pid else None
            if cpu is not None and cpu not in out:
                out[cpu] = state
            else:
                leftovers.append(state)
        free = [c for c in (self.online_cpus or range(self.nr_cpus)) if c not in out]
        out.update(zip(free, leftovers))
        return out

    def cpu_task_address(self, cpu: int) -> int | None:
        """The task_struct address that was running on `cpu` (its rq->curr),
        even when that task_struct cannot be read."""
        entry = self.runqueue_tasks.get(cpu)
        return entry[0] if entry else None

    def task_registers(self, task: Task) -> dict[str, int]:
        if task.on_cpu:
            state = self.cpu_registers.get(task.cpu)
            if state is not None:
                return dict(state.regs)
        return switch_frame(self.dump, task.address)

    def registers_note(self, task: Task) -> str | None:
        """A task that ran on a CPU whose registers the dump lacks gets its
        last context switch's registers instead: say so."""
        if not task.on_cpu or self.cpu_registers.get(task.cpu) is not None:
            return None
        why = self.dump.mem.notes_problem or f"no NT_PRSTATUS note for CPU {task.cpu}"
        return (
            f"CPU {task.cpu}'s registers are missing ({why}); the trace starts at the "
            "task's last context switch, not where it was running"
        )

    def running_task(self, cpu: int) -> Task | None:
        for task in self.tasks():
            if task.on_cpu and task.cpu == cpu:
                return task
        return None

    # -- log, panic, modules ------------------------------------------------
    @cached_property
    def kernel_log(self) -> KernelLog:
        return read_kernel_log(self.dump)

    def log(self) -> list[LogRecord]:
        return self.kernel_log.records

    @cached_property
    def panic(self) -> PanicInfo:
        return find_panic(self)

    def panic_task(self) -> Task | None:
        return self.panic.task

    @cached_property
    def module_list(self) -> list[Module]:
        return read_modules(self)

    def modules(self) -> list[Module]:
        return self.module_list

    def symbol_table(self) -> Any:
        """The dump's symbol table with each loaded module's own kallsyms
        added: an explicit step, so that what has names does not depend on
        which command ran first. Raises when the module list cannot be read."""
        table = self.dump.symbols
        for module in self.modules():
            if module.symbols and module.name not in table.modules:
                table.add_module_symbols(module.name, module.symbols)
        return table


__all__ = ["LinuxKernel", "Task", "LogRecord", "Module", "PanicInfo"]
