"""Linux tasks: every process and thread, the per-CPU idle tasks, their
state, CPU, and registers (PRSTATUS for running tasks, the context-switch
frame for sleeping ones)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import AddressError, KvmcoreError, WalkError

if TYPE_CHECKING:
    from ..dump import Dump

MAX_TASKS = 1 << 20  # bound on every list walk below
#: bound on the list steps of one whole walk_tasks(), all lists together: each
#: task is one step on the task list and one on its group's thread list
MAX_WALK_STEPS = 2 * MAX_TASKS + 4096

# fls() of (state | exit_state) & TASK_REPORT indexes this, as the kernel's
# task_index_to_char() does; 0x80 is TASK_REPORT_IDLE.
STATE_CHARS = "RSDTtXZPI"
TASK_UNINTERRUPTIBLE = 0x2
TASK_NOLOAD = 0x400
TASK_IDLE = TASK_UNINTERRUPTIBLE | TASK_NOLOAD
TASK_RTLOCK_WAIT = 0x1000  # PREEMPT_RT: blocked on a sleeping spinlock
TASK_REPORT = 0x7F
TASK_REPORT_IDLE = 0x80
STATE_NAMES = {
    "R": "running",
    "S": "sleeping",
    "D": "uninterruptible",
    "T": "stopped",
    "t": "traced",
    "X": "dead",
    "Z": "zombie",
    "P": "parked",
    "I": "idle",
}


def state_char(state: int, exit_state: int) -> str:
    """The ps letter, as the kernel's __task_state_index(): TASK_IDLE is a mask
    (a freezable idle wait, TASK_IDLE | TASK_FREEZABLE, is still "I"), and an
    RT task waiting on a sleeping spinlock reports as "D"."""
    bits = (state | exit_state) & TASK_REPORT
    if (state & TASK_IDLE) == TASK_IDLE:
        bits = TASK_REPORT_IDLE
    if state & TASK_RTLOCK_WAIT:
        bits = TASK_UNINTERRUPTIBLE
    return STATE_CHARS[bits.bit_length()]


@dataclass
class Task:
    """One task_struct as it was at the crash."""

    address: int
    pid: int
    tgid: int
    ppid: int
    comm: str
    state: str
    cpu: int
    on_cpu: bool
    is_idle: bool = False
    _registers: Callable[[Task], dict[str, int]] | None = field(default=None, repr=False)

    @property
    def tid(self) -> int:
        """Unique per thread: a Linux task's pid is its thread id."""
        return self.pid

    @property
    def is_thread_group_leader(self) -> bool:
        return self.pid == self.tgid

    @property
    def state_name(self) -> str:
        return STATE_NAMES.get(self.state, self.state)

    def registers(self) -> dict[str, int]:
        """PRSTATUS of its CPU when it was running there, else its switch frame."""
        if self._registers is None:
            return {}
        return self._registers(self)

    def as_dict(self) -> dict:
        return {
            "pid": self.pid,
            "tgid": self.tgid,
            "ppid": self.ppid,
            "comm": self.comm,
            "state": self.state,
            "cpu": self.cpu,
            "on_cpu": self.on_cpu,
            "idle": self.is_idle,
            "address": f"{self.address:#x}",
        }


@dataclass
class TaskList:
    tasks: list[Task]
    partial: bool = False
    problem: str | None = None


class TaskReader:
    """Reads task_structs using offsets from the type facade."""

    def __init__(self, dump: Dump, registers: Callable[[Task], dict[str, int]]) -> None:
        self.dump = dump
        t = dump.types
        ts = "struct task_struct"
        self.off_tasks = t.offsetof(ts, "tasks")
        self.off_pid = t.offsetof(ts, "pid")
        self.off_tgid = t.offsetof(ts, "tgid")
        self.off_comm = t.offsetof(ts, "comm")
        self.off_parent = t.offsetof(ts, "real_parent")
        state = "__state" if t.has_member(ts, "__state") else "state"
        self.off_state = t.offsetof(ts, state)
        # `long state` before 5.14, `unsigned int __state` since: read its own width
        try:
            self.state_size = t.sizeof_type(t.member(ts, state)[2])
        except KvmcoreError:
            self.state_size = 4
        self.off_exit_state = t.offsetof(ts, "exit_state")
        self.off_on_cpu = t.offsetof(ts, "on_cpu") if t.has_member(ts, "on_cpu") else None
        if t.has_member(ts, "thread_info.cpu"):
            self.off_cpu = t.offsetof(ts, "thread_info.cpu")
        else:
            self.off_cpu = t.offsetof(ts, "cpu")
        if t.has_member(ts, "thread_node") and t.has_member("struct signal_struct", "thread_head"):
            self.off_signal: int | None = t.offsetof(ts, "signal")
            self.off_thread_head = t.offsetof("struct signal_struct", "thread_head")
            self.off_thread_link = t.offsetof(ts, "thread_node")
        else:
            self.off_signal = None
            self.off_thread_link = t.offsetof(ts, "thread_group")
        self.size = t.sizeof(ts)
        self.registers = registers
        self._tgids: dict[int, int] = {}  # parent task -> its tgid (-1: unreadable)

    def read(self, address: int, idle: bool = False) -> Task:
        d = self.dump
        # makedumpfile -d 1 drops zero-filled pages, which may hold the tail of a task_struct
        filtered: list[tuple[int, int]] = []
        blob = d.read(address, self.size, zero_excluded=True, excluded=filtered)
        # ... but pid and comm are never all zero in a live task (the idle
        # tasks' comm is swapper/N): their pages missing means the task_struct
        # was filtered out (makedumpfile -d 31 can drop its slab pages), and a
        # zero-filled stand-in would be a bogus pid-0 task. Read again (and
        # fail) only when a page of the struct was filtered.
        if filtered:
            d.read(address + self.off_pid, 4)
            d.read(address + self.off_comm, 16)
        bo = d.byteorder

        def num(off: int, size: int, signed: bool = False) -> int:
            return int.from_bytes(blob[off : off + size], bo, signed=signed)

        word = d.word_size
        parent = num(self.off_parent, word)
        # ppid as ps and /proc/PID/stat give it: the *process* (tgid) of
        # real_parent, which is a thread when a non-leader thread forked
        ppid = self._tgids.get(parent) if parent and parent != address else 0
        if ppid is None:  # a parent's tgid, read once (kthreadd and init parent most tasks)
            try:
                ppid = d.read_u32(parent + self.off_tgid)
            except AddressError:
                ppid = -1
            self._tgids[parent] = ppid
        comm = blob[self.off_comm : self.off_comm + 16].split(b"\0", 1)[0]
        return Task(
            address=address,
            pid=num(self.off_pid, 4, True),
            tgid=num(self.off_tgid, 4, True),
            ppid=ppid,
            comm=comm.decode("utf-8", "replace"),
            state=state_char(num(self.off_state, self.state_size), num(self.off_exit_state, 4)),
            cpu=num(self.off_cpu, 4),
            on_cpu=bool(num(self.off_on_cpu, 4)) if self.off_on_cpu is not None else False,
            is_idle=idle,
            _registers=self.registers,
        )

    def list_entries(
        self, head: int, link_off: int, seen: set[int], budget: StepBudget | None = None
    ) -> Iterator[int]:
        """Addresses of the structures on the list at `head` (bounded, cycle-checked).
        `seen` may be shared by several lists that cannot share a node; `budget`
        bounds the steps of all the walks that share it."""
        d = self.dump
        budget = budget or StepBudget(MAX_TASKS)
        budget.take(head)
        node = d.read_ptr(head)
        for _ in range(MAX_TASKS):
            if node == head:
                return
            if node in seen:
                raise WalkError(f"list at {head:#x} loops back to {node:#x}", d.path)
            seen.add(node)
            yield node - link_off
            budget.take(head)
            node = d.read_ptr(node)
        raise WalkError(f"list at {head:#x} has more than {MAX_TASKS} entries", d.path)

    def threads_of(
        self, leader: int, seen: set[int] | None = None, budget: StepBudget | None = None
    ) -> Iterator[int]:
        """The threads of `leader`'s group. Pass one `seen` set for all groups: a
        thread is in one group only, so a node met again is a damaged list."""
        d = self.dump
        seen = set() if seen is None else seen
        if self.off_signal is not None:
            if budget:
                budget.take(leader)
            signal = d.read_ptr(leader + self.off_signal)
            head = signal + self.off_thread_head
            yield from self.list_entries(head, self.off_thread_link, seen, budget)
        else:
            yield leader
            yield from self.list_entries(
                leader + self.off_thread_link, self.off_thread_link, seen, budget
            )


class StepBudget:
    """Pointer reads left for a walk of several lists."""

    def __init__(self, steps: int, path: str | None = None) -> None:
        self.total = self.left = steps
        self.path = path

    def take(self, where: int) -> None:
        if self.left <= 0:
            raise WalkError(
                f"walk of the task lists stopped at {where:#x} after "
                f"{self.total} list steps (damaged lists?)",
                self.path,
            )
        self.left -= 1


def walk_tasks(
    dump: Dump, init_task: int, idle_tasks: list[int], registers: Callable[[Task], dict[str, int]]
) -> TaskList:
    """Every task: init_task's list of thread-group leaders, each group's threads,
    and the idle task of every CPU. A broken list gives a partial result."""
    reader = TaskReader(dump, registers)
    tasks: list[Task] = []
    seen_tasks: set[int] = set()
    problem = None
    leaders = [init_task]
    # one budget for every list, and one seen-set for every thread list: damaged
    # lists (each group's "threads" being the whole task chain) stay linear
    budget = StepBudget(MAX_WALK_STEPS, dump.path)
    seen_threads: set[int] = set()
    try:  # keep what was walked before a fault
        for leader in reader.list_entries(
            init_task + reader.off_tasks, reader.off_tasks, set(), budget
        ):
            leaders.append(leader)
    except (WalkError, AddressError) as exc:
        problem = (
            f"task list walk stopped after {len(leaders)} thread-group leaders "
            f"(last {leaders[-1]:#x}): {exc.message}"
        )
    for leader in leaders:
        if leader == init_task:
            members = [init_task]
        else:
            members = []
            try:
                for member in reader.threads_of(leader, seen_threads, budget):
                    members.append(member)
            except (WalkError, AddressError) as exc:
                problem = problem or f"thread list of task {leader:#x} stopped: {exc.message}"
            if leader not in members:
                members.insert(0, leader)
        for addr in members:
            if addr in seen_tasks:
                continue
            seen_tasks.add(addr)
            try:
                tasks.append(reader.read(addr, idle=addr == init_task))
            except KvmcoreError as exc:
                problem = problem or f"task at {addr:#x} unreadable: {exc.message}"
    for addr in idle_tasks:
        if addr and addr not in seen_tasks:
            seen_tasks.add(addr)
            try:
                tasks.append(reader.read(addr, idle=True))
            except KvmcoreError as exc:
                problem = problem or f"idle task at {addr:#x} unreadable: {exc.message}"
    return TaskList(tasks, partial=problem is not None, problem=problem)
