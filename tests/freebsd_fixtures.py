"""Synthetic FreeBSD crash dumps, written exactly as the FreeBSD kernel lays them out.

SYNTHETIC FIXTURE: no real FreeBSD dump can be made on this machine (no
FreeBSD guest, no bhyve/QEMU FreeBSD image), so this module builds one from the
formats' documented layouts instead:

- minidumps as sys/amd64/amd64/minidump_machdep.c (versions 1, 2, 3) and
  sys/arm64/arm64/minidump_machdep.c (versions 1, 2) write them: header page,
  msgbuf, dump_avail page (amd64 v3, arm64 v2), bitmap, kernel map (amd64 v1:
  4K PTEs; v2+: one page of PDEs per GB, a 1 GB page expanded into 512 fake
  2 MB PDEs; arm64: one page of L3 entries per 2 MB, blocks expanded into fake
  L3 pages), then the pages in bit order;
- full dumps as sys/kern/kern_dump.c writes them: an ELF64 ET_CORE with
  OSABI standalone, no notes, one PT_LOAD per dump_avail chunk, data from
  round_page(headers); optionally behind a 512-byte big-endian
  `struct kerneldumpheader` (sys/sys/kerneldump.h, parity word) and gzip or
  zstd compressed like savecore's vmcore.N.gz / vmcore.N.zst.

The machine behind them is modelled here: physical pages with known patterns,
real x86-64 / AArch64 page tables mapping them at chosen kernel addresses with
4K and 2 MB pages, the direct map, and kernel data (allproc, threads, PCBs,
msgbuf, linker_files) laid out at offsets given by kgdb's helper variables.
Every fact a test asserts comes from this model, not from the code under test.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass, field

PAGE = 4096
NBPDR = 1 << 21
NBPDP = 1 << 30

# amd64 layout constants (sys/amd64/include/vmparam.h over the years)
AMD64_KERNBASE = 0xFFFFFFFF80000000
AMD64 = {
    # version: (header kernbase = VM_MIN_KERNEL_ADDRESS, DMAP_MIN, DMAP_MAX)
    1: (0xFFFFFFFF80000000, 0xFFFFFF0000000000, 0xFFFFFF8000000000),  # FreeBSD 7
    2: (0xFFFFFF0000000000, 0xFFFFFE0000000000, 0xFFFFFF0000000000),  # FreeBSD 9
    3: (0xFFFFFE0000000000, 0xFFFFF80000000000, 0xFFFFFC0000000000),  # FreeBSD 13+
}
PG_V, PG_RW, PG_PS = 0x1, 0x2, 0x80

# arm64 (sys/arm64/include/vmparam.h, pte.h)
ARM64_KERNBASE = 0xFFFF000000000000
ARM64_DMAP_MIN = 0xFFFFA00000000000
ARM64_RAM = 0x40000000
ATTR_AF = 1 << 10
ATTR_SH_IS = 3 << 8
ATTR_DEFAULT = ATTR_AF | ATTR_SH_IS
L0_TABLE = L1_TABLE = L2_TABLE = 3
L2_BLOCK = 1
L3_PAGE = 3


def pattern(pa: int) -> bytes:
    """The known contents of a data page: its own physical address, repeated."""
    stamp = b"FBSD%012x" % pa
    return stamp * (PAGE // len(stamp))


class PhysMem:
    """Physical memory of the modelled machine: sparse pages, zero elsewhere."""

    def __init__(self, avail: list[tuple[int, int]]) -> None:
        self.avail = avail
        self.pages: dict[int, bytearray] = {}

    def page(self, pa: int) -> bytearray:
        base = pa & ~(PAGE - 1)
        if not any(s <= base < e for s, e in self.avail):
            raise ValueError(f"{base:#x} is outside RAM")
        return self.pages.setdefault(base, bytearray(PAGE))

    def write(self, pa: int, data: bytes) -> None:
        while data:
            n = min(len(data), PAGE - (pa & (PAGE - 1)))
            pg = self.page(pa)
            pg[pa & (PAGE - 1) : (pa & (PAGE - 1)) + n] = data[:n]
            pa += n
            data = data[n:]

    def read(self, pa: int, n: int) -> bytes:
        out = b""
        while n:
            k = min(n, PAGE - (pa & (PAGE - 1)))
            pg = self.pages.get(pa & ~(PAGE - 1), bytes(PAGE))
            out += bytes(pg[pa & (PAGE - 1) : (pa & (PAGE - 1)) + k])
            pa += k
            n -= k
        return out

    def u64(self, pa: int) -> int:
        return struct.unpack("<Q", self.read(pa, 8))[0]

    def put64(self, pa: int, value: int) -> None:
        self.write(pa, struct.pack("<Q", value))

    def frame(self, pa: int) -> bytes:
        return self.read(pa, PAGE)


@dataclass
class Machine:
    """A modelled machine: RAM, page tables, kernel layout, and what the tests expect."""

    arch: str
    mem: PhysMem
    root: int  # PML4 / TTBR1 L0 physical address
    kva_end: int  # end of the kernel map to dump
    dmap_phys: int = 0  # arm64: pa at DMAP_MIN
    dump_added: set[int] = field(default_factory=set)  # dump_add_page() pages
    #: kva -> pa of every page whose pattern a test reads back, with its page size
    kva_pages: dict[int, tuple[int, int]] = field(default_factory=dict)
    dmap_pages: list[int] = field(default_factory=list)  # pa read through the DMAP only
    symbols: dict[str, int] = field(default_factory=dict)
    helper_symbols: set[str] = field(default_factory=set)
    expect: dict = field(default_factory=dict)
    msgbuf_text: bytes = b""
    #: kernel functions planted for backtraces: name -> (address, size)
    functions: dict[str, tuple[int, int]] = field(default_factory=dict)
    #: registers planted where regs_for() does not tell them: (tid, where) -> regs
    planted: dict = field(default_factory=dict)
    _next_table: int = 0
    _heap: int = 0

    # -- page tables -------------------------------------------------------------
    def alloc_table(self) -> int:
        pa = self._next_table
        self._next_table += PAGE
        self.mem.page(pa)
        return pa

    def _amd64_walk(self, va: int, depth_stop: int) -> int:
        """Table physical address at depth `depth_stop` (1 PDPT, 2 PD, 3 PT), creating."""
        table = self.root
        for depth, shift in enumerate((39, 30, 21)):
            if depth == depth_stop:
                break
            slot = table + ((va >> shift) & 511) * 8
            entry = self.mem.u64(slot)
            if not entry & PG_V:
                new = self.alloc_table()
                self.mem.put64(slot, new | PG_V | PG_RW)
                entry = new | PG_V
            table = entry & 0x000FFFFFFFFFF000
        return table

    def _arm64_walk(self, va: int, depth_stop: int) -> int:
        table = self.root
        for depth, shift in enumerate((39, 30, 21)):
            if depth == depth_stop:
                break
            slot = table + ((va >> shift) & 511) * 8
            entry = self.mem.u64(slot)
            if entry & 3 != 3:
                new = self.alloc_table()
                self.mem.put64(slot, new | 3)
                entry = new | 3
            table = entry & 0x0000FFFFFFFFF000
        return table

    def map_4k(self, va: int, pa: int) -> None:
        if self.arch == "amd64":
            pt = self._amd64_walk(va, 3)
            self.mem.put64(pt + ((va >> 12) & 511) * 8, pa | PG_V | PG_RW)
        else:
            l3 = self._arm64_walk(va, 3)
            self.mem.put64(l3 + ((va >> 12) & 511) * 8, pa | ATTR_DEFAULT | L3_PAGE)

    def map_2m(self, va: int, pa: int) -> None:
        if self.arch == "amd64":
            pd = self._amd64_walk(va, 2)
            self.mem.put64(pd + ((va >> 21) & 511) * 8, pa | PG_V | PG_RW | PG_PS)
        else:
            l2 = self._arm64_walk(va, 2)
            self.mem.put64(l2 + ((va >> 21) & 511) * 8, pa | ATTR_DEFAULT | L2_BLOCK)

    def translate(self, va: int) -> int | None:
        """The model's own walk (for the writers): pa of `va` or None."""
        table = self.root
        for shift in (39, 30, 21, 12):
            entry = self.mem.u64(table + ((va >> shift) & 511) * 8)
            if self.arch == "amd64":
                if not entry & PG_V:
                    return None
                if shift in (30, 21) and entry & PG_PS or shift == 12:
                    base = entry & 0x000FFFFFFFFFF000 & ~((1 << shift) - 1)
                    return base | (va & ((1 << shift) - 1))
                table = entry & 0x000FFFFFFFFFF000
            else:
                kind = entry & 3
                if kind == 0 or kind == 2 or (shift == 12 and kind != 3):
                    return None
                if shift == 12 or kind == 1:
                    base = entry & 0x0000FFFFFFFFF000 & ~((1 << shift) - 1)
                    return base | (va & ((1 << shift) - 1))
                table = entry & 0x0000FFFFFFFFF000
        return None

    # -- kernel virtual writes (through the model's page tables) ---------------
    def kwrite(self, va: int, data: bytes) -> None:
        while data:
            n = min(len(data), PAGE - (va & (PAGE - 1)))
            pa = self.translate(va)
            assert pa is not None, hex(va)
            self.mem.write(pa, data[:n])
            va += n
            data = data[n:]

    def kread(self, va: int, n: int) -> bytes:
        pa = self.translate(va)
        assert pa is not None
        return self.mem.read(pa, n)


# -- machines -----------------------------------------------------------------------
AMD64_AVAIL = [(0x0, 0x9F000), (0x100000, 0x1000000)]  # 636 KiB + 15 MiB, like a PC
ARM64_AVAIL = [(ARM64_RAM, ARM64_RAM + 0x1000000)]


def amd64_machine() -> Machine:
    """A 16 MB amd64: kernel image at KERNBASE+2M..+6M on 2 MB pages (pa = va -
    KERNBASE, as FreeBSD loads it), kmem on scattered 4K pages at KERNBASE+6M,
    page tables from pa 0x20000, DMAP-only pages at 0xa00000+."""
    m = Machine("amd64", PhysMem(AMD64_AVAIL), root=0, kva_end=AMD64_KERNBASE + 4 * NBPDR)
    m._next_table = 0x20000
    m.root = m.alloc_table()
    for i in range(2):  # kernel text/data: two 2 MB pages
        va = AMD64_KERNBASE + NBPDR * (1 + i)
        m.map_2m(va, va - AMD64_KERNBASE)
    for va, pa in (
        (AMD64_KERNBASE + 0x200000, 0x200000),
        (AMD64_KERNBASE + 0x3FF000 + 0x123, 0x3FF000),  # inside the first large page
        (AMD64_KERNBASE + 0x5FE000, 0x5FE000),
    ):
        m.kva_pages[va & ~(PAGE - 1)] = (pa, NBPDR)
    kmem = AMD64_KERNBASE + 0x600000
    frames = [0x900000 + i * 0x3000 for i in range(12)]  # not contiguous
    for i, pa in enumerate(frames):
        m.map_4k(kmem + i * PAGE, pa)
    for i in (0, 1, 2):  # three pattern pages, the rest is kernel data
        m.kva_pages[kmem + i * PAGE] = (frames[i], PAGE)
    m._heap = kmem + 3 * PAGE
    m.dmap_pages = [0xA00000, 0xA05000, 0x50000]  # dump_add_page() only
    m.dump_added.update(m.dmap_pages)
    _fill_patterns(m)
    return m


def arm64_machine() -> Machine:
    """A 16 MB arm64 at pa 0x40000000: kernel at VM_MIN_KERNEL_ADDRESS on 2 MB
    L2 blocks, kmem on 4K L3 pages after it, the DMAP from dmap_phys_base."""
    m = Machine(
        "arm64",
        PhysMem(ARM64_AVAIL),
        root=0,
        kva_end=ARM64_KERNBASE + 4 * NBPDR,
        dmap_phys=ARM64_RAM,
    )
    m._next_table = ARM64_RAM + 0x20000
    m.root = m.alloc_table()
    for i in range(2):
        m.map_2m(ARM64_KERNBASE + NBPDR * (1 + i), ARM64_RAM + NBPDR * (1 + i))
    for off in (0x200000, 0x3FF000, 0x5FE000):
        m.kva_pages[ARM64_KERNBASE + off] = (ARM64_RAM + off, NBPDR)
    kmem = ARM64_KERNBASE + 0x600000
    frames = [ARM64_RAM + 0x900000 + i * 0x3000 for i in range(12)]
    for i, pa in enumerate(frames):
        m.map_4k(kmem + i * PAGE, pa)
    for i in (0, 1, 2):
        m.kva_pages[kmem + i * PAGE] = (frames[i], PAGE)
    m._heap = kmem + 3 * PAGE
    m.dmap_pages = [ARM64_RAM + 0xA00000, ARM64_RAM + 0xA05000]
    m.dump_added.update(m.dmap_pages)
    _fill_patterns(m)
    return m


def _fill_patterns(m: Machine) -> None:
    for pa, _size in m.kva_pages.values():
        m.mem.write(pa & ~(PAGE - 1), pattern(pa & ~(PAGE - 1)))
    for pa in m.dmap_pages:
        m.mem.write(pa, pattern(pa))


# -- kernel data: procs, threads, PCBs, msgbuf, linker files ---------------------------
#: struct layouts of the model kernel (any offsets work: they reach the reader
#: through kgdb's helper variables or through the types hook, never hard-coded)
PROC = {
    "p_list": 0x0,
    "p_threads": 0x10,
    "p_hash": 0x20,
    "p_pptr": 0x30,
    "p_pid": 0xBC,
    "p_comm": 0x3C4,
    "size": 0x420,
}
THREAD = {
    "td_plist": 0x10,
    "td_tid": 0x98,
    "td_state": 0xA0,
    "td_oncpu": 0x134,
    "td_name": 0x2A0,
    "td_pcb": 0x3F0,
    "size": 0x480,
}
MSGBUF = {
    "msg_ptr": 0,
    "msg_magic": 8,
    "msg_size": 12,
    "msg_wseq": 16,
    "msg_rseq": 20,
    "msg_cksum": 24,
    "msg_seqmod": 28,
    "size": 0x40,
}
# struct linker_file as sys/sys/linker.h lays it out on LP64 (KOBJ_FIELDS = one
# ops pointer; int refs, userrefs, flags; TAILQ_ENTRY link; filename, pathname,
# int id, address, size): the layout kvmcore assumes when no types are given
LINKER_FILE = {
    "refs": 0x8,
    "link": 0x18,
    "filename": 0x28,
    "pathname": 0x30,
    "id": 0x38,
    "address": 0x40,
    "size": 0x48,
    "struct_size": 0x80,
}
AMD64_PCB = ("r15", "r14", "r13", "r12", "rbp", "rsp", "rbx", "rip")  # pcb.h, offsets 0..56
ARM64_PCB_X = tuple(f"x{i}" for i in range(19, 31))  # pcb_x[12]: x19..x30
MAXCPU = 4
PCB_SIZE = 0x100

PROCS = [  # pid, comm, parent pid (None: no parent), [(tid, name, oncpu, state)]
    (0, "kernel", None, [(100000, "swapper", -1, 1), (100001, "thread taskq", -1, 1)]),
    (1, "init", 0, [(100002, "init", -1, 1)]),
    (11, "idle", 0, [(100003, "idle: cpu1", 1, 4)]),
    (42, "panicker", 1, [(100042, "panicker", 0, 4)]),
]
DUMPTID = 100042
MODULES = [
    (1, "kernel", "/boot/kernel/kernel", 0x200000, 3),
    (2, "zfs.ko", "/boot/kernel/zfs.ko", 0x5A000, 1),
    (3, "if_vtnet.ko", "/boot/kernel/if_vtnet.ko", 0x9000, 1),
]

# what the kernel says about itself (kern_mib.c / vers.c strings, kern_shutdown.c)
PANIC_MESSAGE = "page fault while in kernel mode: synthetic kvmcore fixture"
OSRELEASE = "14.0-RELEASE"
VERSION = (
    f"FreeBSD {OSRELEASE} #0 releng/14.0-n265380-f9716eee8ab4: Fri Nov 10 05:57:23 "
    "UTC 2023\n    root@releng1.nyi.freebsd.org:/usr/obj/usr/src/amd64.amd64/sys/GENERIC\n"
)
HOSTNAME = "fixture.example.org"
MP_NCPUS = 2
TIME_UPTIME = 4321
PANIC_TIME = 1700000123
#: the dumping thread's call chain, innermost first: (function, offset of the
#: return address / pc inside it); functions are 0x100 apart from TEXT_OFFSET
CALL_CHAIN = [
    ("doadump", 0x20),
    ("kern_reboot", 0x31),
    ("vpanic", 0x42),
    ("panic", 0x53),
    ("sys_crash_test", 0x64),
    ("syscallenter", 0x75),
]
TEXT_OFFSET = 0x300000  # from KERNBASE, inside the kernel's 2 MB pages
FUNC_SIZE = 0x100


def regs_for(arch: str, tid: int, where: str) -> dict[str, int]:
    """The distinct register values planted for thread `tid` (where: pcb/dumppcb/stoppcb)."""
    names = AMD64_PCB if arch == "amd64" else ARM64_PCB_X + ("sp",)
    tag = {"pcb": 0x1, "dumppcb": 0xD, "stoppcb": 0x5}[where]
    return {name: 0xFFFF_F000_0000_0000 | tag << 36 | tid << 8 | i for i, name in enumerate(names)}


def pcb_bytes(arch: str, regs: dict[str, int]) -> bytes:
    if arch == "amd64":
        body = struct.pack("<8Q", *(regs[n] for n in AMD64_PCB))
    else:  # pcb_x[12] then pcb_sp at 96
        body = struct.pack("<13Q", *(regs[n] for n in ARM64_PCB_X + ("sp",)))
    return body + bytes(PCB_SIZE - len(body))


def build_kernel(m: Machine, helpers: bool = True, panicstr: bool = True) -> None:
    """Lay out allproc, threads, PCBs, msgbuf and linker_files in kernel memory.

    Globals sit in the kernel image (2 MB pages), objects on the 4K heap. With
    `helpers`, kgdb's helper variables (proc_off_*, thread_off_*, pcb_size) are
    planted and named in the symbol map; without, only types can tell layouts.
    Without `panicstr`, the panic message is only in msgbuf's "panic: " line.
    """
    arch = m.arch
    base = (AMD64_KERNBASE if arch == "amd64" else ARM64_KERNBASE) + 0x201000
    cursor = [base]

    def glob(name: str, size: int) -> int:
        va = cursor[0]
        cursor[0] += (size + 15) & ~15
        m.symbols[name] = va
        return va

    def obj(size: int) -> int:
        va = (m._heap + 15) & ~15
        if (va >> 12) != ((va + size - 1) >> 12):
            va = (va + PAGE - 1) & ~(PAGE - 1)
        m._heap = va + size
        return va

    q = lambda v: struct.pack("<Q", v & 0xFFFFFFFFFFFFFFFF)  # noqa: E731
    i32 = lambda v: struct.pack("<i", v)  # noqa: E731

    allproc = glob("allproc", 8)
    procs, threads = [], []
    kernbase = AMD64_KERNBASE if arch == "amd64" else ARM64_KERNBASE
    # the dumping thread's kernel stack: one page, a frame-record chain in it
    stack = obj(PAGE)
    functions = {}
    for i, (fname, _) in enumerate(CALL_CHAIN):
        functions[fname] = kernbase + TEXT_OFFSET + i * FUNC_SIZE
        m.symbols[fname] = functions[fname]
    m.functions = {name: (addr, FUNC_SIZE) for name, addr in functions.items()}
    sp = stack + 0xD00
    records = [stack + 0xD40 + 0x40 * i for i in range(len(CALL_CHAIN) - 1)]
    for i, rec in enumerate(records):  # {saved frame pointer, return address}
        nxt = records[i + 1] if i + 1 < len(records) else 0
        fname, off = CALL_CHAIN[i + 1]
        m.kwrite(rec, struct.pack("<QQ", nxt, functions[fname] + off))
    pc = functions[CALL_CHAIN[0][0]] + CALL_CHAIN[0][1]
    if arch == "amd64":
        stack_regs = {"rip": pc, "rsp": sp, "rbp": records[0]}
    else:  # pcb_x[x30] is the pc kgdb uses; x29 the frame pointer
        stack_regs = {"x30": pc, "sp": sp, "x29": records[0]}
    m.planted = {(DUMPTID, "dumppcb"): {**regs_for(arch, DUMPTID, "dumppcb"), **stack_regs}}
    m.expect["backtrace"] = [name for name, _ in CALL_CHAIN]

    proc_of: dict[int, int] = {}
    for pid, comm, _parent, tds in PROCS:
        p = obj(PROC["size"])
        proc_of[pid] = p
        m.kwrite(p + PROC["p_pid"], i32(pid))
        m.kwrite(p + PROC["p_comm"], comm.encode().ljust(20, b"\0"))
        tvas = []
        for tid, name, oncpu, state in tds:
            td = obj(THREAD["size"])
            pcb = obj(PCB_SIZE)
            m.kwrite(pcb, pcb_bytes(arch, regs_for(arch, tid, "pcb")))
            m.kwrite(td + THREAD["td_tid"], i32(tid))
            m.kwrite(td + THREAD["td_name"], name.encode().ljust(20, b"\0"))
            m.kwrite(td + THREAD["td_oncpu"], i32(oncpu))
            m.kwrite(td + THREAD["td_state"], i32(state))
            m.kwrite(td + THREAD["td_pcb"], q(pcb))
            tvas.append(td)
            threads.append((pid, tid, name, comm, oncpu, state, td))
        # TAILQ p_threads: tqh_first, tqh_last; td_plist: tqe_next, tqe_prev
        m.kwrite(p + PROC["p_threads"], q(tvas[0]) + q(tvas[-1] + THREAD["td_plist"]))
        for a, b in zip(tvas, tvas[1:] + [0]):
            m.kwrite(a + THREAD["td_plist"], q(b))
        procs.append(p)
    for pid, _comm, parent, _tds in PROCS:
        m.kwrite(proc_of[pid] + PROC["p_pptr"], q(proc_of[parent] if parent is not None else 0))
    # LIST allproc: lh_first; p_list: le_next, le_prev
    m.kwrite(allproc, q(procs[0]))
    for a, b in zip(procs, procs[1:] + [0]):
        m.kwrite(a + PROC["p_list"], q(b))

    m.kwrite(glob("dumptid", 4), i32(DUMPTID))
    m.kwrite(glob("dumppcb", PCB_SIZE), pcb_bytes(arch, m.planted[(DUMPTID, "dumppcb")]))
    stoppcbs = glob("stoppcbs", PCB_SIZE * MAXCPU)
    for cpu in range(MAXCPU):
        tid = next((t[1] for t in threads if t[4] == cpu), 0)
        m.kwrite(stoppcbs + cpu * PCB_SIZE, pcb_bytes(arch, regs_for(arch, tid, "stoppcb")))
    m.kwrite(glob("stopped_cpus", 8), q(0b1110))  # every CPU but the panicking one
    m.kwrite(glob("mp_maxid", 4), i32(MAXCPU - 1))
    m.kwrite(glob("mp_ncpus", 4), i32(MP_NCPUS))
    m.kwrite(glob("time_uptime", 8), q(TIME_UPTIME))
    for name, value in (
        ("version", VERSION),
        ("osrelease", OSRELEASE),
        ("ostype", "FreeBSD"),
        ("hostname", HOSTNAME),
    ):
        raw = value.encode() + b"\0"
        m.kwrite(glob(name, len(raw)), raw)
    # vpanic(): vsnprintf into a static buffer, panicstr = that buffer
    panicbuf = glob("panic_buf", 256)
    m.kwrite(panicbuf, PANIC_MESSAGE.encode() + b"\0")
    if panicstr:
        m.kwrite(glob("panicstr", 8), q(panicbuf))
    m.expect["panic"] = {
        "message": PANIC_MESSAGE,
        "tid": DUMPTID,
        "pid": 42,
        "comm": "panicker",
        "cpu": 0,
        "time": PANIC_TIME,
        "source": "panicstr" if panicstr else "msgbuf",
    }
    m.expect["uts"] = {
        "release": OSRELEASE,
        "nodename": HOSTNAME,
        "sysname": "FreeBSD",
        "version": VERSION.split("\n")[0],
        "machine": "amd64" if arch == "amd64" else "arm64",
    }
    m.expect["ncpus"] = MP_NCPUS

    # message buffer: a wrapped ring (wseq past the end, rseq = wseq - size),
    # ending with what vpanic() prints before doadump()
    text = b"".join(b"<6>line %03d of the synthetic FreeBSD kernel log\n" % i for i in range(90))
    text += (
        b"\n\nFatal trap 12: page fault while in kernel mode\ncpuid = 0; apic id = 00\n"
        b"panic: " + PANIC_MESSAGE.encode() + b"\ncpuid = 0\ntime = %d\n"
        b"KDB: stack backtrace:\nUptime: %ds\nDumping 16 out of 16 MB:..100%%\n"
        % (PANIC_TIME, TIME_UPTIME)
    )
    size = 2048
    wseq = len(text)
    ring = bytearray(size)
    for i, ch in enumerate(text):
        ring[i % size] = ch
    msgptr = glob("msgbuf_area", size)
    m.kwrite(msgptr, bytes(ring))
    mbuf = obj(MSGBUF["size"])
    m.kwrite(mbuf, q(msgptr) + struct.pack("<6I", 0x063062, size, wseq, wseq - size, 0, size * 16))
    m.kwrite(glob("msgbufp", 8), q(mbuf))
    m.msgbuf_text = text[-size:]
    m.expect["msgbuf_ring"] = bytes(ring)

    # linker_files: TAILQ of struct linker_file
    head = glob("linker_files", 16)
    lfs = []
    for lid, fname, pname, size_, refs in MODULES:
        lf = obj(LINKER_FILE["struct_size"])
        fn, pn = obj(32), obj(32)
        m.kwrite(fn, fname.encode() + b"\0")
        m.kwrite(pn, pname.encode() + b"\0")
        m.kwrite(lf + LINKER_FILE["filename"], q(fn))
        m.kwrite(lf + LINKER_FILE["pathname"], q(pn))
        m.kwrite(lf + LINKER_FILE["id"], i32(lid))
        m.kwrite(lf + LINKER_FILE["refs"], i32(refs))
        addr = (AMD64_KERNBASE if arch == "amd64" else ARM64_KERNBASE) + 0x200000 * lid
        m.kwrite(lf + LINKER_FILE["address"], q(addr))
        m.kwrite(lf + LINKER_FILE["size"], q(size_))
        lfs.append((lf, addr))
    m.kwrite(head, q(lfs[0][0]) + q(lfs[-1][0] + LINKER_FILE["link"]))
    for (a, _), (b, _) in zip(lfs, lfs[1:] + [(0, 0)]):
        m.kwrite(a + LINKER_FILE["link"], q(b))

    if helpers:
        values = {
            "proc_off_p_pid": PROC["p_pid"],
            "proc_off_p_comm": PROC["p_comm"],
            "proc_off_p_list": PROC["p_list"],
            "proc_off_p_threads": PROC["p_threads"],
            "proc_off_p_hash": PROC["p_hash"],
            "thread_off_td_tid": THREAD["td_tid"],
            "thread_off_td_name": THREAD["td_name"],
            "thread_off_td_oncpu": THREAD["td_oncpu"],
            "thread_off_td_pcb": THREAD["td_pcb"],
            "thread_off_td_plist": THREAD["td_plist"],
            "pcb_size": PCB_SIZE,
        }
        for name, value in values.items():
            m.kwrite(glob(name, 4), i32(value))
            m.helper_symbols.add(name)
    if arch == "amd64":
        # KPML4phys: a u64 holding the PML4's pa (full-dump bootstrap); kernbase is absolute
        m.kwrite(glob("KPML4phys", 8), q(m.root))
        m.symbols["kernbase"] = AMD64_KERNBASE
    m.expect["threads"] = [
        {
            "pid": pid,
            "tid": tid,
            "name": name,
            "comm": comm,
            "cpu": oncpu,
            "state": state,
            "address": td,
            "regs": m.planted[(tid, "dumppcb")]
            if tid == DUMPTID
            else regs_for(arch, tid, "stoppcb" if oncpu >= 0 else "pcb"),
            "ppid": next(0 if par is None else par for p_, _c, par, _t in PROCS if p_ == pid),
        }
        for pid, tid, name, comm, oncpu, state, td in threads
    ]
    m.expect["modules"] = [
        {"id": lid, "name": fname, "path": pname, "size": size_, "refs": refs, "address": addr}
        for (lid, fname, pname, size_, refs), (_, addr) in zip(MODULES, lfs)
    ]


class ModelTypes:
    """The model kernel's struct layouts, through the offsetof/sizeof interface of
    kvmcore's types facade (what DWARF from kernel.debug would give)."""

    def __init__(self, arch: str) -> None:
        def members(layout: dict, size_key: str = "size") -> tuple[dict, int]:
            return {k: v for k, v in layout.items() if k != size_key}, layout[size_key]

        if arch == "amd64":
            pcb = {f"pcb_{n}": 8 * i for i, n in enumerate(AMD64_PCB)}
        else:
            pcb = {"pcb_x": 0, "pcb_sp": 96}
        self.structs = {
            "struct proc": members(PROC),
            "struct thread": members(THREAD),
            "struct msgbuf": members(MSGBUF),
            "struct linker_file": members(LINKER_FILE, "struct_size"),
            "struct pcb": (pcb, PCB_SIZE),
        }

    def offsetof(self, type_name: str, member: str) -> int:
        from kvmcore.errors import TypeInfoError

        fields = self.structs.get(type_name, ({}, 0))[0]
        if member not in fields:
            raise TypeInfoError(f"{type_name} has no member {member!r} (model types)")
        return fields[member]

    def sizeof(self, type_name: str) -> int:
        from kvmcore.errors import TypeInfoError

        if type_name not in self.structs:
            raise TypeInfoError(f"no type {type_name!r} (model types)")
        return self.structs[type_name][1]


# -- writers: minidumps --------------------------------------------------------------
def _round(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)


def _dumpable(m: Machine, pa: int) -> bool:
    return any(s <= pa < e for s, e in m.mem.avail)


def _bit_ids(m: Machine, with_avail: bool) -> tuple[int, callable]:
    """(number of bits, pa -> bit): dump_avail-relative with_avail, else pa >> 12."""
    if not with_avail:
        top = max(e for _, e in m.mem.avail)
        return -(-top // PAGE), lambda pa: pa // PAGE

    def bit(pa: int) -> int:
        adj = 0
        for s, e in m.mem.avail:
            if pa >= e:
                adj += -(-e // PAGE) - s // PAGE
            else:
                return pa // PAGE - s // PAGE + adj
        raise ValueError(hex(pa))

    return sum(-(-e // PAGE) - s // PAGE for s, e in m.mem.avail), bit


def _bitmap(m: Machine, pages: set[int], with_avail: bool) -> tuple[bytes, list[int]]:
    nbits, bit = _bit_ids(m, with_avail)
    # BITSET_SIZE: whole longs, then round_page for the header field
    raw = bytearray(_round(-(-nbits // 64) * 8))
    for pa in pages:
        b = bit(pa)
        raw[b // 8] |= 1 << (b % 8)
    order = sorted(pages, key=bit)
    return bytes(raw), order


def _amd64_dumped_pages(m: Machine, version: int) -> set[int]:
    """The vm_page_dump bitset cpu_minidumpsys() builds (v2+ walk; v1 walks PTEs)."""
    kernbase = AMD64[version][0]
    pages = {pa for pa in m.dump_added if _dumpable(m, pa)}
    va = kernbase
    while va < m.kva_end:
        pml4e = m.mem.u64(m.root + ((va >> 39) & 511) * 8)
        pdpe = (
            m.mem.u64((pml4e & 0x000FFFFFFFFFF000) + ((va >> 30) & 511) * 8) if pml4e & PG_V else 0
        )
        if not pdpe & PG_V:
            va = (va & ~(NBPDP - 1)) + NBPDP
            continue
        pd = pdpe & 0x000FFFFFFFFFF000
        for n in range((va >> 21) & 511, 512):
            pde = m.mem.u64(pd + n * 8)
            if pde & PG_V:
                if pde & PG_PS:
                    base = pde & 0x000FFFFFFFE00000
                    pages.update(p for p in range(base, base + NBPDR, PAGE) if _dumpable(m, p))
                else:
                    pt = pde & 0x000FFFFFFFFFF000
                    pages.add(pt)
                    for k in range(512):
                        pte = m.mem.u64(pt + k * 8)
                        if pte & PG_V and _dumpable(m, pte & 0x000FFFFFFFFFF000):
                            pages.add(pte & 0x000FFFFFFFFFF000)
        va = (va & ~(NBPDP - 1)) + NBPDP
    return pages


def _amd64_pmap(m: Machine, version: int) -> bytes:
    kernbase = AMD64[version][0]
    out = bytearray()
    if version == 1:  # one 4K PTE per page from kernbase (2 MB pages expanded)
        for va in range(kernbase, m.kva_end, PAGE):
            pa = m.translate(va)
            out += struct.pack("<Q", 0 if pa is None else pa | PG_V | PG_RW)
        return bytes(out)
    va = kernbase
    while va < m.kva_end:  # one page per GB: the PD page, or a zero / fake page
        pml4e = m.mem.u64(m.root + ((va >> 39) & 511) * 8)
        pdpe = (
            m.mem.u64((pml4e & 0x000FFFFFFFFFF000) + ((va >> 30) & 511) * 8) if pml4e & PG_V else 0
        )
        if not pdpe & PG_V:
            out += bytes(PAGE)
        elif pdpe & PG_PS:
            out += b"".join(struct.pack("<Q", pdpe + j * NBPDR) for j in range(512))
        else:
            out += m.mem.frame(pdpe & 0x000FFFFFFFFFF000)
        va += NBPDP
    return bytes(out)


def _arm64_pmap_and_pages(m: Machine) -> tuple[bytes, set[int]]:
    """One page of L3 entries per 2 MB from kernbase; blocks become fake L3 pages."""
    out = bytearray()
    pages = {pa for pa in m.dump_added if _dumpable(m, pa)}
    for va in range(ARM64_KERNBASE, m.kva_end, NBPDR):
        l2 = m._arm64_walk(va, 2)
        l2e = m.mem.u64(l2 + ((va >> 21) & 511) * 8)
        if l2e & 3 == L2_BLOCK:
            base = l2e & 0x0000FFFFFFE00000
            out += b"".join(
                struct.pack("<Q", (base + i * PAGE) | ATTR_DEFAULT | L3_PAGE) for i in range(512)
            )
            pages.update(p for p in range(base, base + NBPDR, PAGE) if _dumpable(m, p))
        elif l2e & 3 == L2_TABLE:
            table = l2e & 0x0000FFFFFFFFF000
            out += m.mem.frame(table)
            pages.add(table)
            for i in range(512):
                e = m.mem.u64(table + i * 8)
                if e & 3 == L3_PAGE:
                    pages.add(e & 0x0000FFFFFFFFF000)
        else:
            out += bytes(PAGE)
    return bytes(out), pages


def write_minidump(
    m: Machine, path: str, version: int, truncate_pages: int = 0, extra_claimed: int = 0
) -> dict:
    """Write `m` as a minidump of `version`; return the facts a test checks.

    `truncate_pages` drops that many trailing pages from the file;
    `extra_claimed` sets bits for pages the file does not hold (a lying bitmap).
    """
    msgbuf = m.expect.get("msgbuf_ring", b"")
    if m.arch == "amd64":
        kernbase, dmapbase, dmapend = AMD64[version]
        with_avail = version >= 3
        pages = _amd64_dumped_pages(m, version)
        pmap = _amd64_pmap(m, version)
    else:
        kernbase, dmapbase = ARM64_KERNBASE, ARM64_DMAP_MIN
        dmapend = dmapbase + 0x1000000
        with_avail = version >= 2
        pmap, pages = _arm64_pmap_and_pages(m)
    bitmap, order = _bitmap(m, pages, with_avail)
    if extra_claimed:
        nbits, bit = _bit_ids(m, with_avail)
        free = [pa for s, e in m.mem.avail for pa in range(s, e, PAGE) if pa not in pages]
        raw = bytearray(bitmap)
        for pa in free[-extra_claimed:]:
            b = bit(pa)
            raw[b // 8] |= 1 << (b % 8)
        bitmap = bytes(raw)
    availsize = PAGE if with_avail else 0
    magic = b"minidump FreeBSD/" + (b"amd64" if m.arch == "amd64" else b"arm64")
    hdr = magic.ljust(24, b"\0") + struct.pack("<4I", version, len(msgbuf), len(bitmap), len(pmap))
    if m.arch == "amd64":
        hdr += struct.pack("<3Q", kernbase, dmapbase, dmapend)
        if version >= 3:
            hdr += struct.pack("<I", availsize)
    else:
        hdr += struct.pack("<4Q", kernbase, m.dmap_phys, dmapbase, dmapend)
        if version >= 2:
            hdr += struct.pack("<I", availsize)
    parts = [hdr.ljust(PAGE, b"\0"), msgbuf.ljust(_round(len(msgbuf)), b"\0")]
    if with_avail:
        avail = b"".join(struct.pack("<QQ", s, e) for s, e in m.mem.avail)
        parts.append(avail.ljust(PAGE, b"\0"))
    parts += [bitmap, pmap.ljust(_round(len(pmap)), b"\0")]
    parts += [m.mem.frame(pa) for pa in order]
    if truncate_pages:
        parts = parts[:-truncate_pages]
    with open(path, "wb") as f:
        for part in parts:
            f.write(part)
    return {"pages": order, "kernbase": kernbase, "dmapbase": dmapbase, "dmapend": dmapend}


# -- writers: full dumps ---------------------------------------------------------------
def elf_full_dump(m: Machine) -> bytes:
    """kern_dump.c dumpsys_generic(): ELF64 ET_CORE, OSABI standalone, no notes,
    one PT_LOAD (PF_R, align PAGE) per dump_avail chunk, data from round_page(headers)."""
    machine = 62 if m.arch == "amd64" else 183
    phnum = len(m.mem.avail)
    ident = b"\x7fELF" + bytes([2, 1, 1, 255]) + bytes(8)
    ehdr = ident + struct.pack("<HHIQQQIHHHHHH", 4, machine, 1, 0, 64, 0, 0, 64, 56, phnum, 0, 0, 0)
    offset = _round(64 + 56 * phnum)
    phdrs = b""
    for s, e in m.mem.avail:
        phdrs += struct.pack("<IIQQQQQQ", 1, 4, offset, s, s, e - s, e - s, PAGE)
        offset += e - s
    out = bytearray((ehdr + phdrs).ljust(_round(64 + 56 * phnum), b"\0"))
    for s, e in m.mem.avail:
        for pa in range(s, e, PAGE):
            out += m.mem.frame(pa)
    return bytes(out)


def kerneldumpheader(
    arch: str, dumplength: int, compression: int = 0, magic: bytes = b"FreeBSD Kernel Dump"
) -> bytes:
    """struct kerneldumpheader v4: big-endian, parity makes the 128 words XOR to 0."""
    archver = {"amd64": 2, "aarch64": 1}[arch]
    raw = bytearray(512)
    raw[0:20] = magic.ljust(20, b"\0")
    raw[20:32] = arch.encode().ljust(12, b"\0")
    struct.pack_into(">IIQQII", raw, 32, 4, archver, dumplength, 1700000000, 0, 512)
    raw[64:128] = b"fixture.example.org".ljust(64, b"\0")
    raw[128:320] = b"FreeBSD 14.0-RELEASE synthetic fixture\n".ljust(192, b"\0")
    raw[320:495] = b"synthetic panic for kvmcore tests".ljust(175, b"\0")
    raw[495] = compression
    struct.pack_into(">Q", raw, 496, dumplength)
    parity = 0
    for (word,) in struct.iter_unpack(">I", bytes(raw)):
        parity ^= word
    struct.pack_into(">I", raw, 508, parity)
    return bytes(raw)


def write_full_dump(
    m: Machine, path: str, header: bool = False, compression: str | None = None
) -> None:
    """Write the ELF full dump: plain, behind a kerneldumpheader (leading and
    trailing, as on the dump device), and/or gzip / zstd compressed."""
    payload = elf_full_dump(m)
    if compression == "gzip":
        payload = gzip.compress(payload, compresslevel=1)
    elif compression == "zstd":
        import cramjam

        payload = bytes(cramjam.zstd.compress(payload))
    if header:
        kdh = kerneldumpheader(
            "amd64" if m.arch == "amd64" else "aarch64",
            len(payload),
            {None: 0, "gzip": 1, "zstd": 2}[compression],
        )
        payload = kdh + payload + kdh
    with open(path, "wb") as f:
        f.write(payload)


def add_pml4_cycle(m: Machine, va: int) -> None:
    """Make the PML4 entry covering `va` point back at the PML4 itself, and the
    self-referencing entry its own PDPT: a walk from `va` revisits the root."""
    m.mem.put64(m.root + ((va >> 39) & 511) * 8, m.root | PG_V | PG_RW)


# -- the kernel's symbol file -----------------------------------------------------------
def write_kernel_symbols(m: Machine, path: str) -> None:
    """Write the model kernel's symbols as an ELF symbol file (what `kernel` /
    `kernel.debug` is to kvmcore without DWARF): functions with their sizes,
    data symbols as objects, through kvmcore's own ELF symbol-file writer.
    No build id and no VMCOREINFO: FreeBSD has neither, and the fixture kernel
    is not relocated (no KASLR)."""
    from kvmcore.symbols.elfsym import write_symbol_file
    from kvmcore.symbols.table import Symbol, SymbolTable

    syms = [Symbol(name, addr, size, "T") for name, (addr, size) in m.functions.items()]
    syms += [
        Symbol(name, addr, 0, "D") for name, addr in m.symbols.items() if name not in m.functions
    ]
    write_symbol_file(
        SymbolTable(syms, "fixture", 0, 8, path), path, "x86_64" if m.arch == "amd64" else "aarch64"
    )


# -- i386, arm, riscv and powerpc64 minidumps ---------------------------------------------
# Generated from the documented layouts (no real FreeBSD dump can be made here):
# sys/<arch>/include/minidump.h for the headers, sys/<arch>/<arch>/minidump_machdep*.c
# for the sections, libkvm's kvm_<arch>.h / kvm_minidump_<arch>*.c for the entry formats.
#
# flavour -> (magic, machine hint, RAM, kernbase, direct map (base, end, phys) or None)
MINI_FLAVOURS = {
    "i386": (
        b"minidump FreeBSD/i386",
        "i386",
        [(0x0, 0x9F000), (0x100000, 0x1000000)],
        0xC0000000,
        None,
    ),
    "i386-pae": (
        b"minidump FreeBSD/i386",
        "i386",
        [(0x0, 0x9F000), (0x100000, 0x1000000)],
        0xC0000000,
        None,
    ),
    "arm": (b"minidump FreeBSD/arm", "arm", [(0x40000000, 0x41000000)], 0xC0000000, None),
    "riscv": (
        b"minidump FreeBSD/riscv",
        "riscv64",
        [(0x80000000, 0x81000000)],
        0xFFFFFFC000000000,
        (0xFFFFFFD000000000, 0xFFFFFFD001000000, 0x80000000),
    ),
    "powerpc64": (
        b"minidump FreeBSD/powerpc64",
        "powerpc64",
        [(0x0, 0x1000000)],
        0xE000000000000000,
        (0xC000000000000000, 0xC000000001000000, 0),
    ),
    "powerpc64le": (
        b"minidump FreeBSD/powerpc64",
        "ppc64le",
        [(0x0, 0x1000000)],
        0xE000000000000000,
        (0xC000000000000000, 0xC000000001000000, 0),
    ),
}
KVA_SPAN = 0x800000  # the dumped kernel map: kernbase .. kernbase + 8 MB
I386_PG = 0x1 | 0x2 | 0x20 | 0x40  # PG_V | PG_RW | PG_A | PG_M
ARM_L2_S, ARM_L2_S_XN, ARM_L2_L = 0x2, 0x3, 0x1  # small page, small page + XN, 64K page
ARM_AP = 0x30  # AP[1:0] bits 5:4
RISCV_PTE = 0x1 | 0x2 | 0x4 | 0x40 | 0x80  # V | R | W | A | D
RISCV_PBMT_NC = 1 << 61  # Svpbmt "non-cacheable": not address bits
PPC_KERNBASE = 0x100100  # the kernel's link address (vmparam.h)
PPC_HPT_GROUPS = 2048  # the smallest HPT: 256 KB
PPC_SEG = 1 << 28


@dataclass
class MiniModel:
    """A modelled machine for one minidump flavour: RAM with pattern pages and
    the kernel map the writer records, kva -> pa per 4K page."""

    flavour: str
    mem: PhysMem
    kernbase: int
    kva_pages: dict[int, int] = field(default_factory=dict)  # kva -> pa, pattern pages
    invalid_kva: list[int] = field(default_factory=list)  # inside the map, entry invalid
    dmap_pages: list[int] = field(default_factory=list)  # pa read through the direct map
    image_pages: dict[int, int] = field(default_factory=dict)  # powerpc64 link address -> pa
    dmap: tuple[int, int, int] | None = None
    machine: str = ""
    large_pages: set[int] = field(default_factory=set)  # kva of arm 64K-page runs
    extra_dumped: set[int] = field(default_factory=set)  # dumped pages, no pattern
    expect: dict = field(default_factory=dict)


def mini_machine(flavour: str) -> MiniModel:
    """kernbase + 1 MB: a 32 KB run on contiguous frames (a superpage as the writer
    expands it); + 4 MB: four 4K pages on scattered frames; entries at + 2 MB and
    + 4 MB + 16K are invalid; arm adds a 64 KB large page at + 6 MB; riscv and
    powerpc64 have pages read through the direct map, powerpc64 an image page
    read by its link address."""
    magic, machine, avail, kernbase, dmap = MINI_FLAVOURS[flavour]
    ram = avail[-1][0]
    m = MiniModel(flavour, PhysMem(avail), kernbase, dmap=dmap, machine=machine)
    for i in range(8):
        m.kva_pages[kernbase + 0x100000 + i * PAGE] = ram + 0x100000 + i * PAGE
    for i, off in enumerate((0x900000, 0x903000, 0x907000, 0x90C000)):
        m.kva_pages[kernbase + 0x400000 + i * PAGE] = ram + off
    m.invalid_kva = [kernbase + 0x200000, kernbase + 0x404000]
    if flavour == "arm":
        for i in range(16):
            m.kva_pages[kernbase + 0x600000 + i * PAGE] = ram + 0xA00000 + i * PAGE
        m.large_pages.add(kernbase + 0x600000)
    if dmap:
        m.dmap_pages = [ram + 0xB00000, ram + 0xB05000]
    if flavour.startswith("powerpc64"):
        # a second segment of the VM area, and an image page at its link address
        m.kva_pages[kernbase + PPC_SEG + 0x3000] = ram + 0xC00000
        m.image_pages[PPC_KERNBASE - 0x100 + 0x2000] = 0x102000
    for pa in (*m.kva_pages.values(), *m.dmap_pages, *m.image_pages.values()):
        m.mem.write(pa, pattern(pa))
    m.extra_dumped = {ram + 0xD00000}
    m.mem.write(ram + 0xD00000, b"\xa5" * PAGE)
    return m


def _mini_pmap(m: MiniModel) -> bytes:
    """The kernel-map section as each writer lays it out."""
    f = m.flavour
    out = bytearray()
    if f.startswith("powerpc64"):
        return _ppc_hpt(m)
    for va in range(m.kernbase, m.kernbase + KVA_SPAN, PAGE):
        pa = m.kva_pages.get(va)
        if f == "i386":
            out += struct.pack("<I", 0 if pa is None else pa | I386_PG)
        elif f == "i386-pae":
            out += struct.pack("<Q", 0 if pa is None else pa | I386_PG | (1 << 63))  # NX
        elif f == "arm":
            base = max((b for b in m.large_pages if b <= va < b + 0x10000), default=None)
            if base is not None:  # a large page: its entry is replicated 16 times
                entry = (m.kva_pages[base] & 0xFFFF0000) | ARM_AP | ARM_L2_L
            elif pa is None:
                entry = 0
            else:
                entry = pa | ARM_AP | (ARM_L2_S_XN if (va >> 12) & 1 else ARM_L2_S)
            out += struct.pack("<I", entry)
        else:  # riscv: an L3 PTE per page; one carries Svpbmt bits above the PPN
            entry = 0 if pa is None else (pa >> 12) << 10 | RISCV_PTE
            if pa is not None and va == m.kernbase + 0x400000 + PAGE:
                entry |= RISCV_PBMT_NC
            out += struct.pack("<Q", entry)
    return bytes(out)


def ppc_kernel_vsid(esid: int) -> int:
    """sys/powerpc/aim/slb.c KERNEL_VSID."""
    return ((((esid << 8) | (esid >> 28)) * 0x13BB) & ((1 << 36) - 1)) | (1 << 36)


def _ppc_hpt(m: MiniModel) -> bytes:
    """The hashed page table as the MMU defines it (Power ISA v2.07B 5.7.7): one
    PTE per kernel VM page, in its primary group unless that is full; decoys fill
    one page's primary group (so it goes to the secondary), and a user-VSID
    entry and a 16 MB direct-map entry sit among them (neither is a VM page)."""
    groups = PPC_HPT_GROUPS
    table = [[0, 0] for _ in range(groups * 8)]
    hmask = groups - 1

    def hash_of(vsid: int, index: int, secondary: bool) -> int:
        h = (vsid & ((1 << 39) - 1)) ^ index
        return (~h & ((1 << 39) - 1) if secondary else h) & hmask

    def insert(va: int, pa: int, force_secondary: bool = False) -> None:
        vsid = ppc_kernel_vsid(va >> 28)
        index = (va & (PPC_SEG - 1)) >> 12
        for secondary in (False, True):
            if secondary is False and force_secondary:
                group = hash_of(vsid, index, False)
                for ptex in range(group * 8, group * 8 + 8):  # decoys: user VSIDs
                    if not table[ptex][0] & 1:
                        table[ptex] = [(0x123456 + ptex) << 12 | 1, 0x5000 | 0x2]
                continue
            group = hash_of(vsid, index, secondary)
            for ptex in range(group * 8, group * 8 + 8):
                if not table[ptex][0] & 1:
                    hi = vsid << 12 | (index >> 11) << 7 | (2 if secondary else 0) | 1
                    table[ptex] = [hi, pa | 0x10 | 0x2]  # M (coherent), BW (RW)
                    return
        raise AssertionError("HPT groups full")

    scattered = m.kernbase + 0x400000 + 2 * PAGE
    for va, pa in sorted(m.kva_pages.items()):
        insert(va, pa, force_secondary=va == scattered)
    # a 16 MB direct-map page (a DMAP segment with hw_direct_map): not a VM page
    dvsid = ppc_kernel_vsid(m.dmap[0] >> 28)
    group = ((dvsid & ((1 << 39) - 1)) ^ 0) & hmask
    slot = next(x for x in range(group * 8, group * 8 + 8) if not table[x][0] & 1)
    table[slot] = [dvsid << 12 | 0x4 | 1, 0x0 | 0x10 | 0x2]
    m.expect["secondary_kva"] = scattered
    return b"".join(struct.pack(">QQ", hi, lo) for hi, lo in table)


def write_mini_minidump(m: MiniModel, path: str, version: int, truncate_pages: int = 0) -> dict:
    """Write `m` as a minidump of its flavour and `version` (1, or 2 with dump_avail)."""
    magic, machine, avail, kernbase, dmap = MINI_FLAVOURS[m.flavour]
    f = m.flavour
    big = f == "powerpc64"
    e = ">" if big else "<"
    with_avail = version >= 2
    msgbuf = b"fixture msgbuf for " + f.encode() + b"\n"
    pages = set(m.kva_pages.values()) | set(m.dmap_pages) | set(m.image_pages.values())
    pages |= m.extra_dumped
    bitmap, order = _bitmap(m, pages, with_avail)
    if big:  # the bitmap is an array of big-endian longs
        bitmap = b"".join(bitmap[i : i + 8][::-1] for i in range(0, len(bitmap), 8))
    pmap = _mini_pmap(m)
    availsize = PAGE if with_avail else 0
    if f.startswith("powerpc64"):
        dmapbase, dmapend, _ = dmap
        hdr = magic.ljust(32, b"\0") + b"mmu_phyp".ljust(32, b"\0")
        hdr += struct.pack(
            e + "4I4Qi4x2Q",
            version,
            len(msgbuf),
            len(bitmap),
            len(pmap),
            kernbase,
            kernbase + 4 * PPC_SEG - 1,
            dmapbase,
            dmapend,
            1,
            dmapbase + PPC_KERNBASE,
            dmapbase + 0x800000,
        )
        if with_avail:
            hdr += struct.pack(e + "I", availsize)
    else:
        hdr = magic.ljust(24, b"\0") + struct.pack(
            e + "4I", version, len(msgbuf), len(bitmap), len(pmap)
        )
        if f.startswith("i386"):
            hdr += struct.pack("<2I", kernbase, int(f == "i386-pae"))
        elif f == "arm":
            hdr += struct.pack("<3I", kernbase, 7, 2)  # __ARM_ARCH 7, MMU format v6
        else:
            dmapbase, dmapend, dmapphys = dmap
            hdr += struct.pack("<4Q", kernbase, dmapphys, dmapbase, dmapend)
        if with_avail:
            hdr += struct.pack("<I", availsize)
    parts = [hdr.ljust(PAGE, b"\0"), msgbuf.ljust(_round(len(msgbuf)), b"\0")]
    if with_avail:
        parts.append(b"".join(struct.pack(e + "QQ", s, t) for s, t in avail).ljust(PAGE, b"\0"))
    parts += [bitmap, pmap.ljust(_round(len(pmap)), b"\0")]
    parts += [m.mem.frame(pa) for pa in order]
    if truncate_pages:
        parts = parts[:-truncate_pages]
    with open(path, "wb") as fh:
        for part in parts:
            fh.write(part)
    return {"pages": order, "msgbuf": msgbuf, "kernbase": kernbase}
