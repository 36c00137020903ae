"""The FreeBSD kernel model: processes and threads, their saved registers,
the message buffer, loaded kernel linker files.

Struct layouts come, as in kgdb, from the helper variables the kernel exports
for debuggers (`proc_off_p_pid`, `thread_off_td_tid`, ..., `pcb_size`: const
ints in kern_proc.c, read from dump memory at their symbol addresses); when a
kernel lacks them, from types (`dump.types.offsetof('struct proc', 'p_pid')`),
which raise TypeInfoError when no type source knows them either.

Symbols: `dump.symbols` by default; pass `symbols=` (a dict name -> address,
or a SymbolTable) to use another map, e.g. for synthetic fixtures. `types=`
likewise overrides `dump.types`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from typing import TYPE_CHECKING, Any

from ..errors import AddressError, KvmcoreError, SymbolError, WalkError
from .kva import symbol_value
from .msgbuf import MsgbufLog, MsgbufRecord, msgbuf_log
from .panic import FreeBSDPanic, find_panic
from .pcb import Layouts, pcb_registers

if TYPE_CHECKING:
    from ..dump import Dump

NOCPU = -1
MAXCOMLEN = 19
MAX_PROCS = 1 << 20
MAX_THREADS_PER_PROC = 1 << 16
MAX_FILES = 1 << 16
TD_STATES = {0: "inactive", 1: "inhibited", 2: "can_run", 3: "runq", 4: "running"}
MAX_CPUS = 1 << 16
# struct linker_file on LP64 when no types know it (see _linker_file_layout)
LINKER_FILE_LP64 = {
    "refs": 0x8,
    "link": 0x18,
    "filename": 0x28,
    "pathname": 0x30,
    "id": 0x38,
    "address": 0x40,
    "size": 0x48,
}

# (helper variable, struct, member)
LAYOUT = {
    "p_pid": ("proc_off_p_pid", "struct proc", "p_pid"),
    "p_comm": ("proc_off_p_comm", "struct proc", "p_comm"),
    "p_list": ("proc_off_p_list", "struct proc", "p_list"),
    "p_threads": ("proc_off_p_threads", "struct proc", "p_threads"),
    "td_tid": ("thread_off_td_tid", "struct thread", "td_tid"),
    "td_name": ("thread_off_td_name", "struct thread", "td_name"),
    "td_oncpu": ("thread_off_td_oncpu", "struct thread", "td_oncpu"),
    "td_pcb": ("thread_off_td_pcb", "struct thread", "td_pcb"),
    "td_plist": ("thread_off_td_plist", "struct thread", "td_plist"),
}


@dataclass
class FreeBSDThread:
    """One kernel thread (struct thread) and the process it belongs to.

    Ids: `pid` is the process's p_pid (what ps shows), `tid` the thread's
    td_tid, unique per thread (what kgdb shows and gdb thread ids use);
    `tgid` repeats p_pid so that the report's Linux-shaped fields hold."""

    pid: int
    tid: int
    comm: str  # td_name, or p_comm when the thread has no name
    proc_comm: str  # p_comm
    name: str  # td_name
    td_state: str | None  # td_state by name (TD_STATES) when types know its offset
    state: str  # one ps letter (see state_letter)
    cpu: int  # td_oncpu, -1 (NOCPU) when not running
    address: int  # struct thread *
    proc: int  # struct proc *
    kernel: FreeBSDKernel = field(repr=False, compare=False)
    ppid: int = -1  # p_pptr->p_pid when types know p_pptr, else -1 (unknown)

    @property
    def tgid(self) -> int:
        return self.pid

    @property
    def on_cpu(self) -> bool:
        return self.cpu != NOCPU

    @property
    def is_idle(self) -> bool:
        """The per-CPU idle threads belong to the "idle" process."""
        return self.proc_comm == "idle"

    def pcb_address(self) -> int:
        return self.kernel.pcb_address(self)

    def registers(self) -> dict[str, int]:
        """Registers saved in this thread's PCB (dumppcb / stoppcbs[cpu] / td_pcb)."""
        return self.kernel.pcb_registers(self.pcb_address())

    def as_dict(self) -> dict[str, object]:
        return {
            "pid": self.pid,
            "tgid": self.tgid,
            "ppid": self.ppid,
            "tid": self.tid,
            "comm": self.comm,
            "proc_comm": self.proc_comm,
            "state": self.state,
            "cpu": self.cpu,
            "on_cpu": self.on_cpu,
            "idle": self.is_idle,
            "address": f"{self.address:#x}",
        }


# td_inhibitors bits (sys/sys/proc.h) -> ps letter, most telling first
TDI_LETTERS = ((0x01, "T"), (0x08, "D"), (0x10, "I"), (0x02, "S"), (0x04, "S"))


def state_letter(td_state: int | None, inhibitors: int | None, on_cpu: bool) -> str:
    """A Linux-style state letter: TDS_RUNNING/RUNQ/CAN_RUN -> R; TDS_INHIBITED
    by td_inhibitors: suspended T, blocked on a lock D, interrupt-thread wait
    I, sleeping or swapped S; TDS_INACTIVE (being created or torn down) X.
    Without td_state (no types: kgdb's helper variables do not cover it) a
    thread on a CPU is R, any other S."""
    if td_state is None:
        return "R" if on_cpu else "S"
    if td_state in (2, 3, 4):
        return "R"
    if td_state == 0:
        return "X"
    for bit, letter in TDI_LETTERS:
        if inhibitors and inhibitors & bit:
            return letter
    return "S"


@dataclass
class KldModule:
    """A loaded kernel linker file (struct linker_file)."""

    id: int
    name: str
    path: str
    address: int
    size: int
    refs: int
    kva: int  # struct linker_file *

    # the report's module interface (kvmcore.kernel.ModuleModel)
    taints = 0
    taint_flags = ""

    @property
    def base(self) -> int:
        return self.address

    @property
    def sections(self) -> dict[str, int]:
        return {}

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "base": f"{self.address:#x}",
            "size": self.size,
            "taints": "",
            "address": f"{self.kva:#x}",
            "id": self.id,
            "path": self.path,
            "refs": self.refs,
        }


@dataclass
class ThreadWalk:
    """The thread list (kvmcore.kernel: task_list); partial after a fault."""

    tasks: list[FreeBSDThread]
    partial: bool = False
    problem: str | None = None


class FreeBSDKernel:
    """A FreeBSD kernel in a dump."""

    def __init__(self, dump: Dump, symbols: Any = None, types: Layouts | None = None) -> None:
        self.dump = dump
        self._symbols = symbols
        self._types = types
        self._offsets: dict[str, int] = {}
        #: how derived facts were found, for the report
        self.sources: dict[str, str] = {}

    # -- symbols and layouts ---------------------------------------------------
    @property
    def symbols(self) -> Any:
        if self._symbols is None:
            try:
                self._symbols = self.dump.symbols
            except KvmcoreError as exc:
                if self.dump.vmlinux:
                    raise
                # the Linux fallbacks (kallsyms via VMCOREINFO) cannot apply here
                raise SymbolError(
                    "FreeBSD dumps need the kernel's symbols: give the kernel "
                    "file (kernel or kernel.debug) after the dump",
                    self.dump.path,
                ) from exc
        return self._symbols

    @property
    def types(self) -> Layouts:
        if self._types is None:
            self._types = self.dump.types
        return self._types

    def has_symbol(self, name: str) -> bool:
        """Whether `name` is known; False when no symbols are available at all."""
        try:
            return symbol_value(self.symbols, name) is not None
        except SymbolError:
            return False

    def symbol(self, name: str) -> int:
        value = symbol_value(self.symbols, name)
        if value is None:
            raise SymbolError(f"FreeBSD kernel symbol {name!r} is unknown", self.dump.path)
        return value

    def offset(self, key: str) -> int:
        """Field offset from kgdb's helper variable, else from types."""
        if key not in self._offsets:
            helper, type_name, member = LAYOUT[key]
            addr = symbol_value(self.symbols, helper)
            if addr is not None:
                self._offsets[key] = self.dump.read_int(addr, 4, signed=True)
            else:
                self._offsets[key] = self.types.offsetof(type_name, member)
        return self._offsets[key]

    def pcb_size(self) -> int:
        addr = symbol_value(self.symbols, "pcb_size")
        if addr is not None:
            return self.dump.read_int(addr, 4, signed=True)
        return self.types.sizeof("struct pcb")

    def _optional_offset(self, type_name: str, member: str) -> int | None:
        try:
            return self.types.offsetof(type_name, member)
        except KvmcoreError:
            return None

    # -- processes and threads -------------------------------------------------
    def procs(self) -> list[int]:
        """struct proc addresses on allproc (LIST: lh_first, then p_list.le_next)."""
        out: list[int] = []
        seen: set[int] = set()
        p = self.dump.read_ptr(self.symbol("allproc"))
        link = self.offset("p_list")
        while p:
            if p in seen or len(out) >= MAX_PROCS:
                exc = WalkError(
                    f"allproc list loops back to proc {p:#x}"
                    if p in seen
                    else f"allproc list is longer than {MAX_PROCS} entries",
                    self.dump.path,
                )
                exc.partial = out
                raise exc
            seen.add(p)
            out.append(p)
            try:
                p = self.dump.read_ptr(p + link)
            except AddressError as exc:
                exc.partial = out
                raise
        return out

    def walk_threads(self) -> ThreadWalk:
        """Every thread of every process on allproc, in list order; a broken
        list keeps what was read before the fault (partial, with the problem)."""
        dump = self.dump
        off_pid, off_comm = self.offset("p_pid"), self.offset("p_comm")
        off_threads, off_plist = self.offset("p_threads"), self.offset("td_plist")
        off_tid, off_name = self.offset("td_tid"), self.offset("td_name")
        off_oncpu = self.offset("td_oncpu")
        off_state = self._optional_offset("struct thread", "td_state")
        off_inhib = self._optional_offset("struct thread", "td_inhibitors")
        off_pptr = self._optional_offset("struct proc", "p_pptr")
        out: list[FreeBSDThread] = []
        problem = None
        try:
            procs = self.procs()
        except (WalkError, AddressError) as exc:
            procs, problem = getattr(exc, "partial", []), f"allproc walk stopped: {exc.message}"
        for p in procs:
            try:
                pid = dump.read_int(p + off_pid, 4, signed=True)
                comm = dump.read_cstring(p + off_comm, MAXCOMLEN + 1)
                ppid = -1
                if off_pptr is not None:
                    parent = dump.read_ptr(p + off_pptr)
                    ppid = dump.read_int(parent + off_pid, 4, signed=True) if parent else 0
                td = dump.read_ptr(p + off_threads)  # TAILQ_FIRST
                seen: set[int] = set()
                while td:
                    if td in seen or len(seen) >= MAX_THREADS_PER_PROC:
                        raise WalkError(
                            f"thread list of pid {pid} (proc {p:#x}) loops or "
                            f"runs past {MAX_THREADS_PER_PROC} entries",
                            dump.path,
                        )
                    seen.add(td)
                    name = dump.read_cstring(td + off_name, MAXCOMLEN + 1)
                    cpu = dump.read_int(td + off_oncpu, 4, signed=True)
                    raw = inhib = None
                    if off_state is not None:
                        raw = dump.read_int(td + off_state, 4, signed=True)
                    if off_inhib is not None:
                        inhib = dump.read_int(td + off_inhib, 4, signed=True)
                    out.append(
                        FreeBSDThread(
                            pid=pid,
                            tid=dump.read_int(td + off_tid, 4, signed=True),
                            comm=name or comm,
                            proc_comm=comm,
                            name=name,
                            td_state=None if raw is None else TD_STATES.get(raw, str(raw)),
                            state=state_letter(raw, inhib, cpu != NOCPU),
                            cpu=cpu,
                            address=td,
                            proc=p,
                            kernel=self,
                            ppid=ppid,
                        )
                    )
                    td = dump.read_ptr(td + off_plist)  # tqe_next
            except (WalkError, AddressError) as exc:
                problem = problem or f"proc {p:#x}: {exc.message}"
        return ThreadWalk(out, partial=problem is not None, problem=problem)

    def tasks(self) -> list[FreeBSDThread]:
        """Every thread of every process on allproc, in list order."""
        return self.task_list.tasks

    @cached_property
    def task_list(self) -> ThreadWalk:
        return self.walk_threads()

    def find_task(self, pid: int) -> FreeBSDThread | None:
        """The thread with td_tid `pid`, else the first thread of process `pid`
        (one on a CPU preferred)."""
        threads = self.tasks()
        for t in threads:
            if t.tid == pid:
                return t
        members = [t for t in threads if t.pid == pid]
        return next((t for t in members if t.on_cpu), members[0] if members else None)

    def running_task(self, cpu: int) -> FreeBSDThread | None:
        for t in self.tasks():
            if t.on_cpu and t.cpu == cpu:
                return t
        return None

    def panic_task(self) -> FreeBSDThread | None:
        return self.panic.task

    # -- panic, identity, CPUs, backtraces (kvmcore.kernel.KernelModel) ---------
    @cached_property
    def panic(self) -> FreeBSDPanic:
        return find_panic(self)

    def _string_symbol(self, name: str, limit: int = 1024) -> str | None:
        """A char[] kernel variable (version, osrelease, ...), or None."""
        if not self.has_symbol(name):
            return None
        try:
            return self.dump.read_cstring(self.symbol(name), limit)
        except KvmcoreError:
            return None

    @cached_property
    def utsname(self) -> dict[str, str]:
        """uname(1)'s fields from the kernel's `ostype`, `hostname`, `osrelease`
        and `version` strings (kern_mib.c / vers.c), machine from the arch;
        a full dump's kerneldumpheader fills in hostname and version."""
        kdh = self.dump.mem.metadata.get("kerneldumpheader") or {}
        version = self._string_symbol("version") or kdh.get("versionstring") or ""
        release = self._string_symbol("osrelease")
        if not release:  # "FreeBSD 14.0-RELEASE #0 ...": the word after the OS name
            words = version.split()
            release = words[1] if len(words) > 1 else ""
        return {
            "sysname": self._string_symbol("ostype") or "FreeBSD",
            "nodename": self._string_symbol("hostname") or kdh.get("hostname") or "",
            "release": release,
            "version": version.strip().split("\n", 1)[0].strip(),
            "machine": self.dump.arch.freebsd_machine or self.dump.arch.name,
            "domainname": "",
        }

    @property
    def release(self) -> str:
        return self.utsname["release"]

    @cached_property
    def nr_cpus(self) -> int:
        """mp_ncpus, else mp_maxid + 1, else 1."""
        for name, add in (("mp_ncpus", 0), ("mp_maxid", 1)):
            if self.has_symbol(name):
                try:
                    n = self.dump.read_int(self.symbol(name), 4, signed=True) + add
                except KvmcoreError:
                    continue
                if 0 < n <= MAX_CPUS:
                    return n
        return 1

    @property
    def online_cpus(self) -> list[int] | None:
        return None  # not read (all_cpus minus halted ones); unknown

    def registers_note(self, task: Any) -> str | None:
        """FreeBSD threads' registers always come from a PCB (dumppcb, stoppcbs)."""
        return None

    def symbol_table(self) -> Any:
        """The kernel's symbols (KLD symbols are not read)."""
        return self.symbols

    def dumptid(self) -> int | None:
        addr = symbol_value(self.symbols, "dumptid")
        return None if addr is None else self.dump.read_int(addr, 4, signed=True)

    def cpu_stopped(self, cpu: int) -> bool:
        """kgdb uses stoppcbs[cpu] only for CPUs in stopped_cpus (a cpuset of longs)."""
        addr = symbol_value(self.symbols, "stopped_cpus")
        if addr is None:
            return True
        word = self.dump.read_ptr(addr + (cpu // 64) * 8)
        return bool(word >> (cpu % 64) & 1)

    def pcb_address(self, thread: FreeBSDThread) -> int:
        if thread.tid == self.dumptid():
            return self.symbol("dumppcb")
        if thread.on_cpu and self.has_symbol("stoppcbs") and self.cpu_stopped(thread.cpu):
            return self.symbol("stoppcbs") + thread.cpu * self.pcb_size()
        return self.dump.read_ptr(thread.address + self.offset("td_pcb"))

    def pcb_registers(self, pcb: int) -> dict[str, int]:
        types: Layouts | None
        try:
            types = self.types
        except KvmcoreError:
            types = None
        return pcb_registers(self.dump.arch.name, self.dump.read, pcb, types, self.dump.path)

    # -- message buffer --------------------------------------------------------
    @cached_property
    def kernel_log(self) -> MsgbufLog:
        """The message buffer as line records (no timestamps: see freebsd.msgbuf)."""
        return msgbuf_log(self.msgbuf_text())

    def log(self) -> list[MsgbufRecord]:
        return self.kernel_log.records

    def msgbuf_text(self) -> str:
        """The kernel message buffer, oldest byte first (msgbufp's ring)."""
        dump = self.dump
        if not self.has_symbol("msgbufp"):
            # a minidump carries the buffer itself (FreeBSDMinidump.msgbuf)
            raw: Callable[[], bytes] | None = getattr(dump.mem, "msgbuf", None)
            if raw is None:
                raise SymbolError("FreeBSD kernel symbol 'msgbufp' is unknown", dump.path)
            return raw().replace(b"\0", b"").decode("utf-8", "replace")
        mbp = dump.read_ptr(self.symbol("msgbufp"))
        bufx = self._optional_offset("struct msgbuf", "msg_bufx")
        if bufx is not None:  # FreeBSD < 7: msg_bufx (write) / msg_bufr (read) indices
            ptr = dump.read_ptr(mbp + self.types.offsetof("struct msgbuf", "msg_ptr"))
            size = dump.read_u32(mbp + self.types.offsetof("struct msgbuf", "msg_size"))
            wpos = dump.read_u32(mbp + bufx)
            rpos = dump.read_u32(mbp + self.types.offsetof("struct msgbuf", "msg_bufr"))
            count = (wpos - rpos) % size if size else 0
            start = rpos
        else:

            def off(member: str, default: int) -> int:
                value = self._optional_offset("struct msgbuf", member)
                return default if value is None else value

            ptr = dump.read_ptr(mbp + off("msg_ptr", 0))
            size = dump.read_u32(mbp + off("msg_size", 12))
            wseq = dump.read_u32(mbp + off("msg_wseq", 16))
            rseq = dump.read_u32(mbp + off("msg_rseq", 20))
            seqmod = dump.read_u32(mbp + off("msg_seqmod", 28))
            count = (wseq - rseq) % seqmod if seqmod else wseq - rseq
            count = min(max(count, 0), size)
            start = (wseq - count) % size if size else 0
        if not size or size > 1 << 28:
            raise WalkError(f"msgbuf at {mbp:#x} has implausible size {size}", dump.path)
        ring = dump.read(ptr, size)
        text = bytes(ring[(start + i) % size] for i in range(count)) if count else b""
        return text.replace(b"\0", b"").decode("utf-8", "replace")

    # -- kernel linker files ---------------------------------------------------
    def _linker_file_layout(self) -> dict[str, int]:
        """struct linker_file offsets from types; without types, the layout of
        sys/sys/linker.h since FreeBSD 8 on LP64 (KOBJ_FIELDS = one ops pointer,
        then int refs, userrefs, flags, TAILQ_ENTRY link, char *filename,
        *pathname, int id, caddr_t address, size_t size), as kgdb has no helper
        variables for it."""
        members = ("link", "filename", "pathname", "id", "address", "size", "refs")
        try:
            return {m: self.types.offsetof("struct linker_file", m) for m in members}
        except KvmcoreError:
            if self.dump.word_size != 8:
                raise
            self.sources["linker_file layout"] = "sys/sys/linker.h LP64 default"
            return dict(LINKER_FILE_LP64)

    def modules(self) -> list[KldModule]:
        """Loaded KLDs (kldstat), without the kernel's own linker file (id 1),
        which is the kernel, not a module, as vmlinux is not in lsmod."""
        return [m for m in self.kld_modules_cached if m.id != 1 and m.name != "kernel"]

    @cached_property
    def kld_modules_cached(self) -> list[KldModule]:
        return self.kld_modules()

    def kld_modules(self) -> list[KldModule]:
        """linker_files (TAILQ of struct linker_file); layouts need types."""
        dump = self.dump
        offs = self._linker_file_layout()
        link = offs["link"]
        out: list[KldModule] = []
        lf = dump.read_ptr(self.symbol("linker_files"))
        seen: set[int] = set()
        while lf:
            if lf in seen or len(seen) >= MAX_FILES:
                raise WalkError(f"linker_files list loops at {lf:#x}", dump.path)
            seen.add(lf)

            def string(member: str, lf: int = lf) -> str:
                p = dump.read_ptr(lf + offs[member])
                return dump.read_cstring(p, 1024) if p else ""

            out.append(
                KldModule(
                    id=dump.read_int(lf + offs["id"], 4, signed=True),
                    name=string("filename"),
                    path=string("pathname"),
                    address=dump.read_ptr(lf + offs["address"]),
                    size=dump.read_ptr(lf + offs["size"]),
                    refs=dump.read_int(lf + offs["refs"], 4, signed=True),
                    kva=lf,
                )
            )
            lf = dump.read_ptr(lf + link)
        return out
