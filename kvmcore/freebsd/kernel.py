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

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import KvmcoreError, SymbolError, TypeInfoError, WalkError
from .kva import symbol_value

if TYPE_CHECKING:
    from ..dump import Dump

NOCPU = -1
MAXCOMLEN = 19
MAX_PROCS = 1 << 20
MAX_THREADS_PER_PROC = 1 << 16
MAX_FILES = 1 << 16
TD_STATES = {0: "inactive", 1: "inhibited", 2: "can_run", 3: "runq", 4: "running"}

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
    """One kernel thread (struct thread) and the process it belongs to."""

    pid: int
    tid: int
    comm: str            # td_name, or p_comm when the thread has no name
    proc_comm: str       # p_comm
    name: str            # td_name
    state: str | None    # td_state when types know it
    cpu: int             # td_oncpu, -1 (NOCPU) when not running
    address: int         # struct thread *
    proc: int            # struct proc *
    kernel: "FreeBSDKernel" = field(repr=False, compare=False)

    @property
    def on_cpu(self) -> bool:
        return self.cpu != NOCPU

    def pcb_address(self) -> int:
        return self.kernel.pcb_address(self)

    def registers(self) -> dict[str, int]:
        """Registers saved in this thread's PCB (dumppcb / stoppcbs[cpu] / td_pcb)."""
        return self.kernel.pcb_registers(self.pcb_address())


@dataclass
class KldModule:
    """A loaded kernel linker file (struct linker_file)."""

    id: int
    name: str
    path: str
    address: int
    size: int
    refs: int
    kva: int


class FreeBSDKernel:
    """A FreeBSD kernel in a dump."""

    def __init__(self, dump: "Dump", symbols: Any = None, types: Any = None) -> None:
        self.dump = dump
        self._symbols = symbols
        self._types = types
        self._offsets: dict[str, int] = {}
        if symbols is not None:
            # the full-dump translators find KPML4phys through the backend
            dump.arch.freebsd_symbols = symbols

    # -- symbols and layouts ---------------------------------------------------
    @property
    def symbols(self) -> Any:
        if self._symbols is None:
            self._symbols = self.dump.symbols
        return self._symbols

    @property
    def types(self) -> Any:
        if self._types is None:
            try:
                self._types = self.dump.types
            except ImportError:
                raise TypeInfoError("no type information is available (kvmcore.types is "
                                    "not installed)", self.dump.path) from None
        return self._types

    def has_symbol(self, name: str) -> bool:
        return symbol_value(self.symbols, name) is not None

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
            if p in seen:
                raise WalkError(f"allproc list loops back to proc {p:#x}", self.dump.path)
            if len(out) >= MAX_PROCS:
                raise WalkError(f"allproc list is longer than {MAX_PROCS} entries",
                                self.dump.path)
            seen.add(p)
            out.append(p)
            p = self.dump.read_ptr(p + link)
        return out

    def tasks(self) -> list[FreeBSDThread]:
        """Every thread of every process on allproc, in list order."""
        dump = self.dump
        off_pid, off_comm = self.offset("p_pid"), self.offset("p_comm")
        off_threads, off_plist = self.offset("p_threads"), self.offset("td_plist")
        off_tid, off_name = self.offset("td_tid"), self.offset("td_name")
        off_oncpu = self.offset("td_oncpu")
        off_state = self._optional_offset("struct thread", "td_state")
        out: list[FreeBSDThread] = []
        for p in self.procs():
            pid = dump.read_int(p + off_pid, 4, signed=True)
            comm = dump.read_cstring(p + off_comm, MAXCOMLEN + 1)
            td = dump.read_ptr(p + off_threads)   # TAILQ_FIRST
            seen: set[int] = set()
            while td:
                if td in seen or len(seen) >= MAX_THREADS_PER_PROC:
                    raise WalkError(f"thread list of pid {pid} (proc {p:#x}) loops or runs "
                                    f"past {MAX_THREADS_PER_PROC} entries", dump.path)
                seen.add(td)
                name = dump.read_cstring(td + off_name, MAXCOMLEN + 1)
                state = None
                if off_state is not None:
                    raw = dump.read_int(td + off_state, 4, signed=True)
                    state = TD_STATES.get(raw, str(raw))
                out.append(FreeBSDThread(
                    pid=pid, tid=dump.read_int(td + off_tid, 4, signed=True),
                    comm=name or comm, proc_comm=comm, name=name, state=state,
                    cpu=dump.read_int(td + off_oncpu, 4, signed=True), address=td, proc=p,
                    kernel=self))
                td = dump.read_ptr(td + off_plist)  # tqe_next
        return out

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
        try:
            types = self.types
        except KvmcoreError:
            types = None
        return self.dump.arch.freebsd_pcb_registers(self.dump.read, pcb, types)

    # -- message buffer --------------------------------------------------------
    def log(self) -> str:
        """The kernel message buffer, oldest byte first (msgbufp's ring)."""
        dump = self.dump
        if not self.has_symbol("msgbufp"):
            raw = getattr(dump.mem, "msgbuf", None)
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
    def kld_modules(self) -> list[KldModule]:
        """linker_files (TAILQ of struct linker_file); layouts need types."""
        dump, types = self.dump, self.types
        t = "struct linker_file"
        link = types.offsetof(t, "link")
        offs = {m: types.offsetof(t, m) for m in ("filename", "pathname", "id", "address",
                                                  "size", "refs")}
        out: list[KldModule] = []
        lf = dump.read_ptr(self.symbol("linker_files"))
        seen: set[int] = set()
        while lf:
            if lf in seen or len(seen) >= MAX_FILES:
                raise WalkError(f"linker_files list loops at {lf:#x}", dump.path)
            seen.add(lf)

            def string(member: str) -> str:
                p = dump.read_ptr(lf + offs[member])
                return dump.read_cstring(p, 1024) if p else ""

            out.append(KldModule(
                id=dump.read_int(lf + offs["id"], 4, signed=True), name=string("filename"),
                path=string("pathname"), address=dump.read_ptr(lf + offs["address"]),
                size=dump.read_ptr(lf + offs["size"]),
                refs=dump.read_int(lf + offs["refs"], 4, signed=True), kva=lf))
            lf = dump.read_ptr(lf + link)
        return out
