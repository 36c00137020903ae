"""Linux tasks: every process and thread, the per-CPU idle tasks, their
state, CPU, and registers (PRSTATUS for running tasks, the context-switch
frame for sleeping ones)."""

from __future__ import annotations

import os
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter
from typing import TYPE_CHECKING, Any

from ..addrspace import BLOCK_MASK  # the loop in C reads memory by these blocks
from ..errors import AddressError, KvmcoreError, WalkError

try:  # the walk's hot loop in C (kvmcore/_listwalk.c), when the install built it
    import kvmcore._listwalk as _listwalk
except ImportError:  # no C compiler at install time: the walk is all Python
    _listwalk = None  # type: ignore[assignment]

if TYPE_CHECKING:
    from ..dump import Dump

#: set (to anything) to walk in Python even where kvmcore._listwalk is built
PURE_PYTHON_ENV = "KVMCORE_PURE_PYTHON"

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


@dataclass(slots=True)
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

    #: the fields of a record (see _load): the Task, then the .next of its
    #: `tasks` link, its `signal`, the .next and .prev of its thread link
    TASK, TASKS, SIGNAL, THREAD_LINK, THREAD_PREV = range(5)

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
        self._span = _Span.of(self, dump.word_size, dump.byteorder)
        self._read = dump.aspace.read  # kernel memory, straight through (a read per task)
        # task address -> its record, (Task, tasks.next, signal, thread link
        # .next and .prev) indexed by TASK, TASKS, SIGNAL, THREAD_LINK,
        # THREAD_PREV; None when its span could not be read (read() says why)
        self._records: dict[int, tuple[Any, ...] | None] = {}
        self._comms: dict[bytes, str] = {}
        self._states: dict[tuple[int, int], str] = {}
        #: for the loop in C: each 2 MiB block's file offset, -1 where it cannot read
        self._c_blocks: dict[int, int] = {}
        self._in_c = self._walker_in_c()

    def _walker_in_c(self) -> Callable[..., tuple[int, int]] | None:
        """walk_list's hot loop in C (kvmcore._listwalk), reading task spans
        from the dump file where the address space says they lie in it whole
        (ELF dumps' direct map); None when the module is not built, is turned
        off (KVMCORE_PURE_PYTHON), or the dump's layers cannot say. It stops at
        anything but a plain step, and the Python loop below takes over."""
        span = self._span
        if _listwalk is None or span is None or os.environ.get(PURE_PYTHON_ENV):
            return None
        file_blocks = self.dump.aspace.file_blocks()
        if file_blocks is None:
            return None
        fd, locate = file_blocks
        blocks = self._c_blocks  # block address -> its file offset, or -1
        walk_spans = _listwalk.walk_spans
        start, length, layout = span.start, span.length, span.layout
        mask = self.dump.aspace.mask
        big = self.dump.byteorder == "big"
        next_field = {
            self.TASKS: _Span.NAMES.index("tasks"),
            self.THREAD_LINK: _Span.NAMES.index("thread_link"),
        }
        records, record = self._records, self._record
        build = _listwalk.build_task_records
        comms, states, tgids, registers = self._comms, self._states, self._tgids, self.registers

        def walk(
            node: int,
            head: int,
            link_off: int,
            link: int,
            limit: int,
            seen: set[int],
            out: list[int],
        ) -> tuple[int, int]:
            field = next_field.get(link)
            if field is None or limit <= 0:
                return node, 0
            found: list[tuple[Any, ...]] = []
            first = len(out)
            try:
                node, steps = walk_spans(
                    fd, blocks, locate, node, head, link_off, start, length, layout, field,
                    mask, big, limit, seen, out, found,
                )  # fmt: skip
            finally:  # what it read is recorded, even if it raised (MemoryError) midway
                # _record's work, in C where the caches know the comm, the
                # state's letter and the parent's tgid; _record where not
                addresses = out[first : first + len(found)]
                build(addresses, found, Task, registers, comms, states, tgids, records, record)
            return node, steps

        return walk

    def task(self, address: int, idle: bool = False) -> Task:
        """The task at `address`: from its one span read when that read
        worked, else read in full (read())."""
        rec = self._records.get(address) or self._load(address)
        if rec is None:
            return self.read(address, idle)
        task: Task = rec[self.TASK]
        task.is_idle = idle
        return task

    def _load(self, address: int) -> tuple[Any, ...] | None:
        """The task at `address` and its list links, from one read of the span
        of task_struct holding the members ps shows and the walk follows
        (~3 KiB of ~10): None when that span is not all in the dump (a
        filtered page, a bad pointer), where read() is the authority."""
        records = self._records
        if address in records:
            return records[address]
        span = self._span
        if span is None:
            return None
        try:
            blob = self._read(address + span.start, span.length)
        except KvmcoreError:
            records[address] = None
            return None
        return self._record(address, span.pick(span.unpack(blob)))

    def _record(self, address: int, fields: tuple[Any, ...]) -> tuple[Any, ...]:
        """The record of the task at `address` from its span's members, in
        _Span.NAMES order (read by _load, or by the walk in C)."""
        (
            pid,
            tgid,
            raw,
            parent,
            state,
            exit_state,
            cpu,
            on_cpu,
            tasks_next,
            signal,
            link_next,
            link_prev,
        ) = fields
        comms = self._comms
        comm = comms.get(raw)
        if comm is None:  # most tasks share a few names (10,000 of "sleep")
            comm = raw.split(b"\0", 1)[0].decode("utf-8", "replace")
            if len(comms) < 4096:
                comms[raw] = comm
        letter = self._states.get((state, exit_state))
        if letter is None:
            letter = self._states[state, exit_state] = state_char(state, exit_state)
        ppid = self._tgids.get(parent) if parent and parent != address else 0
        task = Task(
            address,
            pid,
            tgid,
            self._ppid(parent, address) if ppid is None else ppid,
            comm,
            letter,
            cpu,
            on_cpu != 0,
            False,
            self.registers,
        )
        rec = self._records[address] = (task, tasks_next, signal, link_next, link_prev)
        return rec

    def _ppid(self, parent: int, address: int) -> int:
        """ppid as ps and /proc/PID/stat give it: the *process* (tgid) of
        real_parent, which is a thread when a non-leader thread forked."""
        ppid = self._tgids.get(parent) if parent and parent != address else 0
        if ppid is None:  # a parent's tgid, read once (kthreadd and init parent most tasks)
            try:
                ppid = self.dump.read_u32(parent + self.off_tgid)
            except AddressError:
                ppid = -1
            self._tgids[parent] = ppid
        return ppid

    def next_thread(self, node: int) -> int:
        """The thread link's .next of the task whose link is at `node`."""
        address = node - self.off_thread_link
        rec = self._records.get(address) or self._load(address)
        return self.dump.read_ptr(node) if rec is None else rec[self.THREAD_LINK]

    def read(self, address: int, idle: bool = False) -> Task:
        """The task at `address`, read whole: a task_struct whose pages a
        filtered dump left out reads as what is there, or fails saying which."""
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

        ppid = self._ppid(num(self.off_parent, d.word_size), address)
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

    def walk_list(
        self,
        out: list[int],
        head: int,
        link_off: int,
        seen: set[int],
        budget: StepBudget | None = None,
        link: int | None = None,
        read_head: Callable[[int], int] | None = None,
    ) -> None:
        """Append to `out` the addresses of the structures on the list at `head`
        (bounded, cycle-checked); on a fault, what was walked is in `out`.
        `seen` may be shared by several lists that cannot share a node; `budget`
        bounds the steps of all the walks that share it. Each .next is the
        pointer at the node, or, when the list links tasks by a link the
        records hold (`link`: TASKS or THREAD_LINK), taken from the task's
        record; `read_head(head)` reads the head's (default: the pointer there)."""
        d = self.dump
        budget = budget or StepBudget(MAX_TASKS)
        add, append = seen.add, out.append
        records, load = self._records, self._load
        budget.take(head)
        node = (read_head or d.read_ptr)(head)
        in_c = self._in_c if link is not None else None
        # the blocks the loop in C found it cannot read (-1): no call for those
        blocks, start = self._c_blocks, self._span.start if self._span else 0
        steps = 0
        while steps < MAX_TASKS:
            if in_c is not None and blocks.get((node - link_off + start) & ~BLOCK_MASK) != -1:
                # as many plain steps as it can take; then this loop takes the
                # step it stopped at (the end, a loop, a span it cannot read)
                node, taken = in_c(
                    node, head, link_off, link, min(budget.left, MAX_TASKS - steps), seen, out
                )
                steps += taken
                budget.left -= taken
                if steps >= MAX_TASKS:
                    break
            if node == head:
                return
            if node in seen:
                raise WalkError(f"list at {head:#x} loops back to {node:#x}", d.path)
            add(node)
            entry = node - link_off
            append(entry)
            if budget.left <= 0:
                budget.take(head)  # raises
            budget.left -= 1
            steps += 1
            rec = None if link is None else records.get(entry) or load(entry)
            node = d.read_ptr(node) if rec is None or link is None else rec[link]
        raise WalkError(f"list at {head:#x} has more than {MAX_TASKS} entries", d.path)

    def walk_threads(
        self,
        out: list[int],
        leader: int,
        seen: set[int] | None = None,
        budget: StepBudget | None = None,
    ) -> None:
        """Append to `out` the threads of `leader`'s group. Pass one `seen` set
        for all groups: a thread is in one group only, so a node met again is a
        damaged list."""
        seen = set() if seen is None else seen
        link = self.off_thread_link
        if self.off_signal is not None:
            if budget:
                budget.take(leader)
            rec = self._records.get(leader) or self._load(leader)
            signal = (
                self.dump.read_ptr(leader + self.off_signal) if rec is None else rec[self.SIGNAL]
            )
            head = signal + self.off_thread_head
            self.walk_list(out, head, link, seen, budget, self.THREAD_LINK)
        else:
            out.append(leader)
            self.walk_list(
                out, leader + link, link, seen, budget, self.THREAD_LINK, self.next_thread
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
    records = reader._records
    try:  # keep what was walked before a fault
        reader.walk_list(
            leaders, init_task + reader.off_tasks, reader.off_tasks, set(), budget, reader.TASKS
        )
    except (WalkError, AddressError) as exc:
        problem = (
            f"task list walk stopped after {len(leaders)} thread-group leaders "
            f"(last {leaders[-1]:#x}): {exc.message}"
        )
    # Most groups are one task, whose thread link's .next and .prev are both
    # its group's head (signal->thread_head): in a doubly linked ring that is
    # the whole group, as /proc/PID/task's walk (next_tid) sees it from the
    # leader's own links. The head is not read: that was a second read per
    # task, a quarter of the walk's time at 10,000 tasks. So a head that alone is
    # damaged goes unseen while its leader's links agree; a leader whose links
    # disagree, and every larger group, is walked from the head. The steps
    # are walk_threads' (at the leader, the head, the leader's link).
    by_signal = reader.off_signal is not None
    off_link = reader.off_thread_link
    off_head = reader.off_thread_head if by_signal else 0
    append, seen_add, seen_thread = tasks.append, seen_tasks.add, seen_threads.add
    left = budget.left  # budget.left, kept here across the groups of one (synced around the rest)
    for leader in leaders:
        rec = records.get(leader)
        if rec is not None and by_signal and leader != init_task:
            task, _, signal, link_next, link_prev = rec
            node = leader + off_link
            if (
                link_next == link_prev == signal + off_head != node
                and left >= 3
                and node not in seen_threads
                and leader not in seen_tasks
            ):
                left -= 3
                seen_thread(node)
                seen_add(leader)
                append(task)  # read already, with the list walk
                continue
        budget.left = left
        if leader == init_task:
            members = [init_task]
        else:
            members = []
            try:
                reader.walk_threads(members, leader, seen_threads, budget)
            except (WalkError, AddressError) as exc:
                problem = problem or f"thread list of task {leader:#x} stopped: {exc.message}"
            if leader not in members:
                members.insert(0, leader)
        for addr in members:
            if addr in seen_tasks:
                continue
            seen_add(addr)
            rec = records.get(addr)
            if rec is not None:  # read already, with the list walk (reader.task)
                task = rec[TaskReader.TASK]
                task.is_idle = addr == init_task
                append(task)
                continue
            try:
                append(reader.task(addr, idle=addr == init_task))
            except KvmcoreError as exc:
                problem = problem or f"task at {addr:#x} unreadable: {exc.message}"
        left = budget.left
    budget.left = left
    for addr in idle_tasks:
        if addr and addr not in seen_tasks:
            seen_tasks.add(addr)
            try:
                tasks.append(reader.task(addr, idle=True))
            except KvmcoreError as exc:
                problem = problem or f"idle task at {addr:#x} unreadable: {exc.message}"
    return TaskList(tasks, partial=problem is not None, problem=problem)


class _Span:
    """Where the members a task walk reads lie in a task_struct: one
    struct.Struct over the bytes from the first to the last of them (3,060
    bytes from offset 20 of 6.1 x86_64's 9,792), so a task is one read and one
    unpack. (Two reads that skip the 2 KiB between its first members and the
    rest measured slower: a read's overhead is more than the copy it saves.)"""

    #: the members, in the order pick(unpack(bytes)) gives them
    NAMES = (
        "pid",
        "tgid",
        "comm",
        "parent",
        "state",
        "exit_state",
        "cpu",
        "on_cpu",
        "tasks",
        "signal",
        "thread_link",
        "thread_prev",
    )

    def __init__(
        self,
        start: int,
        length: int,
        unpack: Callable[[bytes], tuple],
        pick: itemgetter,
        layout: tuple[tuple[int, int, int], ...],
    ) -> None:
        self.start = start
        self.length = length
        self.unpack = unpack
        self.pick = pick
        #: the members in NAMES order as kvmcore._listwalk reads them: (offset
        #: in the span, size, kind: 0 unsigned, 1 signed, 2 bytes); size 0 for
        #: a member this kernel lacks, read as 0
        self.layout = layout

    @classmethod
    def of(cls, reader: TaskReader, word: int, byteorder: str) -> _Span | None:
        """The span of `reader`'s offsets; None when they cannot be read so
        (members overlapping, a width struct has no code for)."""
        codes = {1: "B", 2: "H", 4: "I", 8: "Q"}
        ptr = codes.get(word)
        state = codes.get(reader.state_size)
        if ptr is None or state is None:
            return None
        wanted = {
            "pid": (reader.off_pid, "i"),
            "tgid": (reader.off_tgid, "i"),
            "comm": (reader.off_comm, "16s"),
            "parent": (reader.off_parent, ptr),
            "state": (reader.off_state, state),
            "exit_state": (reader.off_exit_state, "I"),
            "cpu": (reader.off_cpu, "I"),
            "on_cpu": (reader.off_on_cpu, "I"),
            "tasks": (reader.off_tasks, ptr),
            "signal": (reader.off_signal, ptr),
            "thread_link": (reader.off_thread_link, ptr),
            "thread_prev": (reader.off_thread_link + word, ptr),
        }
        present = sorted(
            (off, name, code) for name, (off, code) in wanted.items() if off is not None
        )
        prefix = "<" if byteorder == "little" else ">"
        start = end = present[0][0]
        fmt = prefix
        for off, _, code in present:
            if off < end:
                return None
            fmt += f"{off - end}x{code}" if off > end else code
            end = off + struct.calcsize(prefix + code)
        # unpack() gives the members by offset: pick them in NAMES order, 0 for
        # one this kernel lacks (no on_cpu, no signal->thread_head)
        unpack: Callable[[bytes], tuple] = struct.Struct(fmt).unpack
        if len(present) < len(cls.NAMES):
            by_offset = unpack

            def unpack(blob: bytes) -> tuple:
                return by_offset(blob) + (0,)

        at = {name: i for i, (_, name, _) in enumerate(present)}
        pick = itemgetter(*(at.get(name, len(present)) for name in cls.NAMES))
        kinds = {"i": 1, "16s": 2}
        members = {name: (off - start, struct.calcsize(prefix + code), kinds.get(code, 0))
                   for off, name, code in present}  # fmt: skip
        layout = tuple(members.get(name, (0, 0, 0)) for name in cls.NAMES)
        return cls(start, end - start, unpack, pick, layout)
