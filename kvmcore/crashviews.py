"""More of crash's vocabulary over typed objects (issue 15 item 2): `kmem -i`,
`kmem -s`, `files`, `vm`, `sig`, `mount`, `net`, `dev`, `irq`, `timer`,
`search` and `log -T`. As in kvmcore.explore, each is a `data(dump, ...) ->
dict` and a `text(data) -> str`, registered in kvmcore.commands; each reads the
kernel's own structures the way the kernel (or /proc) computes the same view,
from BTF alone or with a vmlinux, and every walk is bounded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .errors import KvmcoreError, TypeInfoError, WalkError
from .explore import _address_arg
from .objects import (
    Object,
    _find_member,
    container_of,
    hlist_for_each_entry,
    list_for_each_entry,
    mt_for_each,
    per_cpu_ptr,
    rbtree_for_each_entry,
    xa_for_each,
)
from .textsafe import printable

if TYPE_CHECKING:
    from .dump import Dump

_NO_DATA_SYMBOLS = "(kallsyms may lack data symbols: give the vmlinux or --system-map)"
MAX_FDS = 1 << 16
MAX_PATH_DEPTH = 256
MAX_SEARCH_HITS = 1 << 12
SEARCH_CHUNK = 1 << 20


# -- helpers -------------------------------------------------------------------------
def _has_member(dump: Dump, type_name: str, member: str) -> bool:
    try:
        return _find_member(dump.types.type(type_name).strip(), member) is not None
    except TypeInfoError:
        return False


def _ptr(dump: Dump, type_name: str, address: int) -> Object:
    """The `type_name` struct at `address` (an lvalue)."""
    return Object(dump, dump.types.type(type_name), address=address)


def _task(dump: Dump, pid: int | None) -> Any:
    kernel = dump.kernel
    task = kernel.panic_task() if pid is None else kernel.find_task(pid)
    if task is None:
        raise KvmcoreError(
            f"no task with pid {pid}" if pid is not None else "the panicking task is not known",
            dump.path,
        )
    return task


def _task_obj(dump: Dump, task: Any) -> Object:
    return _ptr(dump, "struct task_struct", task.address)


def _enum_value(dump: Dump, enum: str, name: str) -> int | None:
    try:
        return dump.types.type(enum).strip().enumerators.get(name)
    except TypeInfoError:
        return None


def _symbol_name(dump: Dump, address: int) -> str | None:
    """The name of the function at `address` (without offset), or None."""
    if not address:
        return None
    hit = dump.symbols.nearest(address)
    if hit is None:
        return None
    sym, offset = hit
    return sym.name if offset == 0 else f"{sym.name}+{offset:#x}"


def _page_size(dump: Dump) -> int:
    info = dump.vmcoreinfo
    size = info.get("PAGESIZE") if info is not None else None
    return int(size) if size else 4096


def _header(task: Any) -> str:
    return f'PID: {task.pid:<7} TASK: {task.address:#x}  COMMAND: "{printable(task.comm)}"'


# -- paths -----------------------------------------------------------------------------
def _dname(dump: Dump, dentry: Object) -> str | None:
    """A pseudo filesystem's name for a dentry (its d_op->d_dname), as
    /proc/PID/fd shows it: pipe:[ino], socket:[ino], anon_inode:name."""
    d_op = int(dentry.d_op)
    if not d_op:
        return None
    fn = dump.read_ptr(d_op + dump.types.offsetof("struct dentry_operations", "d_dname"))
    if not fn:
        return None
    name = _symbol_name(dump, fn) or ""
    ino = int(dentry.d_inode.i_ino) if int(dentry.d_inode) else 0
    if name == "anon_inodefs_dname":
        return f"anon_inode:{dentry.d_name.name.string(256)}"
    prefix = {"pipefs_dname": "pipe", "sockfs_dname": "socket"}.get(name)
    if prefix is None:
        prefix = dentry.d_sb.s_type.name.string(64)
    return f"{prefix}:[{ino}]"


def d_path(dump: Dump, vfsmount: int, dentry_address: int) -> str:
    """The path of a dentry on a mount (fs/d_path.c's prepend_path), up to the
    root of the mount tree; a pseudo filesystem's name for its dentries."""
    dentry = _ptr(dump, "struct dentry", dentry_address)
    pseudo = _dname(dump, dentry)
    if pseudo is not None:
        return pseudo
    mount = container_of(vfsmount, "struct mount", "mnt", dump).deref()
    parts: list[str] = []
    for _ in range(MAX_PATH_DEPTH):
        parent_dentry = int(dentry.d_parent)
        if dentry.address == int(mount.mnt.mnt_root) or dentry.address == parent_dentry:
            parent = int(mount.mnt_parent)
            if parent == mount.address or not parent:
                break
            dentry = mount.mnt_mountpoint.deref()
            mount = _ptr(dump, "struct mount", parent)
            continue
        parts.append(dentry.d_name.name.string(256))
        dentry = _ptr(dump, "struct dentry", parent_dentry)
    else:
        raise WalkError(f"path of dentry {dentry_address:#x} is deeper than {MAX_PATH_DEPTH}")
    return "/" + "/".join(reversed(parts))


_S_IFMT = {
    0o140000: "SOCK",
    0o120000: "LNK",
    0o100000: "REG",
    0o060000: "BLK",
    0o040000: "DIR",
    0o020000: "CHR",
    0o010000: "FIFO",
}


def _file_entry(dump: Dump, file_address: int) -> dict[str, Any]:
    f = _ptr(dump, "struct file", file_address)
    dentry = int(f.f_path.dentry)
    inode = int(f.f_inode)
    mode = int(_ptr(dump, "struct inode", inode).i_mode) if inode else 0
    try:
        path = d_path(dump, int(f.f_path.mnt), dentry)
    except KvmcoreError as exc:
        path = f"<unreadable: {exc.message}>"
    return {
        "file": f"{file_address:#x}",
        "dentry": f"{dentry:#x}",
        "inode": f"{inode:#x}",
        "type": _S_IFMT.get(mode & 0o170000, "?"),
        "path": path,
    }


# -- files --------------------------------------------------------------------------------
def files_data(dump: Dump, pid: int | None = None) -> dict[str, Any]:
    """A task's open files (crash's `files`): its fdtable, each file's path."""
    task = _task(dump, pid)
    obj = _task_obj(dump, task)
    out: dict[str, Any] = {"pid": task.pid, "comm": task.comm, "task": f"{task.address:#x}"}
    files = int(obj.files)
    if not files:
        return {**out, "root": None, "cwd": None, "fds": []}
    fdt = obj.files.fdt
    max_fds = int(fdt.max_fds)
    if not 0 <= max_fds <= MAX_FDS:
        raise WalkError(f"fdtable of pid {task.pid} has {max_fds} fds", dump.path)
    ptrs = dump.read_ptrs(int(fdt.fd), max_fds) if max_fds else []
    fds = []
    for fd, f in enumerate(ptrs):
        if f:
            fds.append({"fd": fd, **_file_entry(dump, f)})
    fs = obj.fs
    root = cwd = None
    if int(fs):
        try:
            root = d_path(dump, int(fs.root.mnt), int(fs.root.dentry))
            cwd = d_path(dump, int(fs.pwd.mnt), int(fs.pwd.dentry))
        except KvmcoreError:
            pass
    return {**out, "root": root, "cwd": cwd, "fds": fds}


def files_text(data: dict[str, Any]) -> str:
    lines = [
        f'PID: {data["pid"]:<7} TASK: {data["task"]}  COMMAND: "{printable(data["comm"])}"',
        f"ROOT: {printable(data['root'] or '-')}    CWD: {printable(data['cwd'] or '-')}",
        " FD  FILE                DENTRY              INODE               TYPE  PATH",
    ]
    for f in data["fds"]:
        lines.append(
            f"{f['fd']:3d}  {f['file']:18s}  {f['dentry']:18s}  {f['inode']:18s}  "
            f"{f['type']:4s}  {printable(f['path'])}"
        )
    return "\n".join(lines)


# -- vm -------------------------------------------------------------------------------------
def _vmas(dump: Dump, mm: Object) -> list[int]:
    if _has_member(dump, "struct mm_struct", "mm_mt"):
        return [entry for _first, _last, entry in mt_for_each(mm.mm_mt)]
    out: list[int] = []  # before 6.1: the mmap list of vm_next
    vma = int(mm.mmap)
    seen: set[int] = set()
    while vma:
        if vma in seen or len(seen) > 1 << 20:
            raise WalkError(f"VMA list of mm {mm.address:#x} loops", dump.path)
        seen.add(vma)
        out.append(vma)
        vma = int(_ptr(dump, "struct vm_area_struct", vma).vm_next)
    return out


def vm_data(dump: Dump, pid: int | None = None) -> dict[str, Any]:
    """A task's memory map (crash's `vm`): each VMA's start, end, flags, file."""
    task = _task(dump, pid)
    obj = _task_obj(dump, task)
    out: dict[str, Any] = {"pid": task.pid, "comm": task.comm, "task": f"{task.address:#x}"}
    mm_address = int(obj.mm)
    if not mm_address:
        return {**out, "mm": None, "pgd": None, "vmas": []}
    mm = _ptr(dump, "struct mm_struct", mm_address)
    vmas = []
    for address in _vmas(dump, mm):
        vma = _ptr(dump, "struct vm_area_struct", address)
        file = int(vma.vm_file)
        path = None
        if file:
            try:
                f = _ptr(dump, "struct file", file)
                path = d_path(dump, int(f.f_path.mnt), int(f.f_path.dentry))
            except KvmcoreError as exc:
                path = f"<unreadable: {exc.message}>"
        vmas.append(
            {
                "vma": f"{address:#x}",
                "start": int(vma.vm_start),
                "end": int(vma.vm_end),
                "flags": int(vma.vm_flags),
                "file": path,
            }
        )
    return {
        **out,
        "mm": f"{mm_address:#x}",
        "pgd": f"{int(mm.pgd):#x}",
        "total_vm": int(mm.total_vm),
        "vmas": vmas,
    }


def vm_text(data: dict[str, Any]) -> str:
    lines = [f'PID: {data["pid"]:<7} TASK: {data["task"]}  COMMAND: "{printable(data["comm"])}"']
    if data["mm"] is None:
        return "\n".join(lines + ["(no user address space: a kernel thread)"])
    lines.append(f"   MM: {data['mm']}  PGD: {data['pgd']}  TOTAL_VM: {data['total_vm'] * 4}k")
    lines.append("      VMA           START          END      FLAGS  FILE")
    for v in data["vmas"]:
        lines.append(
            f"{v['vma']:>18s} {v['start']:12x} {v['end']:12x} {v['flags']:8x}  "
            f"{printable(v['file'] or '')}"
        )
    return "\n".join(lines)


# -- sig --------------------------------------------------------------------------------------
SIGNALS = [
    "SIGHUP", "SIGINT", "SIGQUIT", "SIGILL", "SIGTRAP", "SIGABRT", "SIGBUS", "SIGFPE",
    "SIGKILL", "SIGUSR1", "SIGSEGV", "SIGUSR2", "SIGPIPE", "SIGALRM", "SIGTERM", "SIGSTKFLT",
    "SIGCHLD", "SIGCONT", "SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU", "SIGURG", "SIGXCPU",
    "SIGXFSZ", "SIGVTALRM", "SIGPROF", "SIGWINCH", "SIGIO", "SIGPWR", "SIGSYS",
]  # fmt: skip


def _signame(n: int) -> str:
    if 1 <= n <= len(SIGNALS):
        return SIGNALS[n - 1]
    if n == 32:
        return "SIGRTMIN"
    return f"SIGRTMIN+{n - 32}" if n > 32 else f"SIG{n}"


def _sigset(obj: Object) -> int:
    words = obj.sig
    n = words.type.strip().length or 1
    word_bits = words[0].sizeof() * 8
    return sum(int(words[i]) << (i * word_bits) for i in range(n))


def _signals_in(mask: int) -> list[str]:
    return [_signame(i + 1) for i in range(mask.bit_length()) if mask >> i & 1]


def sig_data(dump: Dump, pid: int | None = None) -> dict[str, Any]:
    """A task's signal state (crash's `sig`): pending (the thread's and the
    process's), blocked, and each signal's handler."""
    task = _task(dump, pid)
    obj = _task_obj(dump, task)
    pending = _sigset(obj.pending.signal)
    shared = _sigset(obj.signal.shared_pending.signal) if int(obj.signal) else 0
    blocked = _sigset(obj.blocked)
    handlers = []
    if int(obj.sighand):
        actions = obj.sighand.action
        for i in range(actions.type.strip().length or 0):
            sa = actions[i].sa
            handler = int(sa.sa_handler)
            handlers.append(
                {
                    "signal": i + 1,
                    "name": _signame(i + 1),
                    "handler": handler,
                    "disposition": {0: "SIG_DFL", 1: "SIG_IGN"}.get(handler, "handler"),
                    "flags": int(sa.sa_flags),
                    "mask": _sigset(sa.sa_mask),
                }
            )
    return {
        "pid": task.pid,
        "comm": task.comm,
        "task": f"{task.address:#x}",
        "pending": pending,
        "shared_pending": shared,
        "blocked": blocked,
        "pending_signals": _signals_in(pending | shared),
        "blocked_signals": _signals_in(blocked),
        "handlers": handlers,
    }


def sig_text(data: dict[str, Any]) -> str:
    lines = [
        f'PID: {data["pid"]:<7} TASK: {data["task"]}  COMMAND: "{printable(data["comm"])}"',
        f"  PENDING: {data['pending']:016x} SHARED: {data['shared_pending']:016x}  "
        + " ".join(data["pending_signals"]),
        f"  BLOCKED: {data['blocked']:016x}  " + " ".join(data["blocked_signals"]),
        "  SIG  NAME        HANDLER             FLAGS     MASK",
    ]
    for h in data["handlers"]:
        handler = h["disposition"] if h["disposition"] != "handler" else f"{h['handler']:#x}"
        lines.append(
            f"  {h['signal']:3d}  {h['name']:10s}  {handler:18s}  {h['flags']:08x}  {h['mask']:x}"
        )
    return "\n".join(lines)


def _mnt_offset(dump: Dump) -> int:
    return dump.types.offsetof("struct mount", "mnt")


# -- mount --------------------------------------------------------------------------------------
def mount_data(dump: Dump) -> dict[str, Any]:
    """The mounts of the initial mount namespace (crash's `mount`): device,
    filesystem type, mount point, as /proc/mounts lists them."""
    init = dump.object("init_task")
    ns = init.nsproxy.mnt_ns.deref()
    if _has_member(dump, "struct mnt_namespace", "list"):
        mounts = list_for_each_entry("struct mount", ns.list.address_of(), "mnt_list")
    else:  # 6.8+: an rbtree ordered by mount id
        mounts = rbtree_for_each_entry("struct mount", ns.mounts.address_of(), "mnt_node")
    out = []
    for m in mounts:
        mount = m.deref()
        sb = mount.mnt.mnt_sb
        try:
            where = d_path(
                dump, int(mount.address or 0) + _mnt_offset(dump), int(mount.mnt.mnt_root)
            )
        except KvmcoreError as exc:
            where = f"<unreadable: {exc.message}>"
        out.append(
            {
                "mount": f"{mount.address:#x}",
                "superblock": f"{int(sb):#x}",
                "device": mount.mnt_devname.string(256) if int(mount.mnt_devname) else "none",
                "type": sb.s_type.name.string(64),
                "dir": where,
            }
        )
    return {"namespace": f"{ns.address:#x}", "mounts": out}


def mount_text(data: dict[str, Any]) -> str:
    lines = ["     MOUNT           SUPERBLK      TYPE        DEVNAME      DIRNAME"]
    for m in data["mounts"]:
        lines.append(
            f"{m['mount']:18s} {m['superblock']:18s} {printable(m['type']):10s}  "
            f"{printable(m['device']):11s}  {printable(m['dir'])}"
        )
    return "\n".join(lines)


# -- net -------------------------------------------------------------------------------------------
_IFF = ["UP", "BROADCAST", "DEBUG", "LOOPBACK", "POINTOPOINT", "NOTRAILERS", "RUNNING",
        "NOARP", "PROMISC", "ALLMULTI", "MASTER", "SLAVE", "MULTICAST", "PORTSEL",
        "AUTOMEDIA", "DYNAMIC"]  # fmt: skip


def net_data(dump: Dump) -> dict[str, Any]:
    """The network devices of the initial network namespace (crash's `net`):
    name, flags, MTU, hardware address and IPv4 addresses."""
    net = dump.object("init_net")
    devices = []
    for d in list_for_each_entry("struct net_device", net.dev_base_head.address_of(), "dev_list"):
        dev = d.deref()
        addr_len = int(dev.addr_len)
        dev_addr = dev.dev_addr
        raw_addr = (
            dump.read(int(dev_addr), min(addr_len, 32))
            if dev_addr.type.strip().kind == "ptr"
            else dump.read(dev_addr.address, min(addr_len, 32))  # type: ignore[arg-type]
        )
        addrs = []
        in_dev = int(dev.ip_ptr)
        if in_dev:
            ifa = int(_ptr(dump, "struct in_device", in_dev).ifa_list)
            seen: set[int] = set()
            while ifa:
                if ifa in seen or len(seen) > 4096:
                    raise WalkError(f"address list of {dev.name.string()} loops", dump.path)
                seen.add(ifa)
                a = _ptr(dump, "struct in_ifaddr", ifa)
                local = dump.read(a.ifa_local.address, 4)  # type: ignore[arg-type]
                addrs.append(
                    {
                        "family": "inet",
                        "address": ".".join(str(b) for b in local),
                        "prefixlen": int(a.ifa_prefixlen),
                        "label": a.ifa_label.string(),
                    }
                )
                ifa = int(a.ifa_next)
        flags = int(dev.flags)
        devices.append(
            {
                "net_device": f"{dev.address:#x}",
                "name": dev.name.string(),
                "ifindex": int(dev.ifindex),
                "flags": flags,
                "flag_names": [n for i, n in enumerate(_IFF) if flags >> i & 1],
                "mtu": int(dev.mtu),
                "hwaddr": ":".join(f"{b:02x}" for b in raw_addr),
                "addresses": addrs,
            }
        )
    return {"net": f"{net.address:#x}", "devices": devices}


def net_text(data: dict[str, Any]) -> str:
    lines = ["   NET_DEVICE       NAME    IP ADDRESS(ES)        MTU    HWADDR             FLAGS"]
    for d in data["devices"]:
        ips = ", ".join(f"{a['address']}/{a['prefixlen']}" for a in d["addresses"]) or "-"
        lines.append(
            f"{d['net_device']:18s} {printable(d['name']):7s} {ips:20s} {d['mtu']:6d}  "
            f"{d['hwaddr']:17s}  {'|'.join(d['flag_names'])}"
        )
    return "\n".join(lines)


# -- dev ----------------------------------------------------------------------------------------
MAJOR_HASH_SIZE = 255  # CHRDEV_MAJOR_HASH_SIZE, BLKDEV_MAJOR_HASH_SIZE


def _chain(dump: Dump, type_name: str, first: int) -> list[Object]:
    out = []
    seen: set[int] = set()
    while first:
        if first in seen or len(seen) > 1 << 16:
            raise WalkError(f"{type_name} chain at {first:#x} loops", dump.path)
        seen.add(first)
        obj = _ptr(dump, type_name, first)
        out.append(obj)
        first = int(obj.next)
    return out


def dev_data(dump: Dump) -> dict[str, Any]:
    """Character and block device majors (crash's `dev`): the chrdevs and
    major_names hash tables, as /proc/devices lists them."""
    out: dict[str, Any] = {"character": [], "block": []}
    chrdevs = dump.resolve_symbol("chrdevs")
    if chrdevs is None:
        raise KvmcoreError(
            f"dev: no chrdevs symbol {_NO_DATA_SYMBOLS}",
            dump.path,
        )
    for head in dump.read_ptrs(chrdevs, MAJOR_HASH_SIZE):
        for cd in _chain(dump, "struct char_device_struct", head):
            out["character"].append(
                {
                    "major": int(cd.major),
                    "baseminor": int(cd.baseminor),
                    "minorct": int(cd.minorct),
                    "name": cd.name.string(),
                    "cdev": f"{int(cd.cdev):#x}",
                }
            )
    names = dump.resolve_symbol("major_names")
    if names is not None:
        for head in dump.read_ptrs(names, MAJOR_HASH_SIZE):
            for bd in _chain(dump, "struct blk_major_name", head):
                out["block"].append({"major": int(bd.major), "name": bd.name.string()})
    out["character"].sort(key=lambda d: (d["major"], d["baseminor"]))
    out["block"].sort(key=lambda d: d["major"])
    return out


def dev_text(data: dict[str, Any]) -> str:
    lines = ["CHRDEV    NAME                 CDEV                BASEMINOR  MINORS"]
    for d in data["character"]:
        lines.append(
            f"  {d['major']:4d}    {printable(d['name']):20s} {d['cdev']:18s}  "
            f"{d['baseminor']:9d}  {d['minorct']}"
        )
    lines += ["", "BLKDEV    NAME"]
    lines += [f"  {d['major']:4d}    {printable(d['name'])}" for d in data["block"]]
    return "\n".join(lines)


# -- irq ----------------------------------------------------------------------------------------
def _irq_descs(dump: Dump) -> list[tuple[int, int]]:
    sparse = dump.resolve_symbol("sparse_irqs")
    if sparse is not None:  # 6.5+: a maple tree
        tree = _ptr(dump, "struct maple_tree", sparse)
        return [(first, entry) for first, _last, entry in mt_for_each(tree)]
    tree_address = dump.resolve_symbol("irq_desc_tree")
    if tree_address is not None:  # a radix tree, which is an xarray since 4.20
        return list(xa_for_each(_ptr(dump, "struct xarray", tree_address)))
    raise KvmcoreError(
        "irq: no sparse_irqs or irq_desc_tree symbol (a kernel without SPARSE_IRQ, or "
        "kallsyms without data symbols: give the vmlinux or --system-map)"
    )


def irq_data(dump: Dump, irq: int | None = None) -> dict[str, Any]:
    """Each interrupt's irq_desc (crash's `irq`): its chip, its actions'
    names and handlers, and its count over the CPUs."""
    out = []
    ncpus = dump.kernel.nr_cpus
    for number, desc_address in _irq_descs(dump):
        if irq is not None and number != irq:
            continue
        desc = _ptr(dump, "struct irq_desc", desc_address)
        chip = int(desc.irq_data.chip)
        chip_name = None
        if chip:
            name = int(_ptr(dump, "struct irq_chip", chip).name)
            chip_name = dump.read_cstring(name, 64) if name else None
        actions = []
        first = int(desc.action)
        seen: set[int] = set()
        while first:
            if first in seen or len(seen) > 256:
                raise WalkError(f"actions of irq {number} loop", dump.path)
            seen.add(first)
            a = _ptr(dump, "struct irqaction", first)
            handler = int(a.handler)
            thread_fn = int(a.thread_fn)
            actions.append(
                {
                    "action": f"{first:#x}",
                    "name": a.name.string(64) if int(a.name) else None,
                    "handler": _symbol_name(dump, handler) or f"{handler:#x}",
                    "thread_fn": _symbol_name(dump, thread_fn) if thread_fn else None,
                }
            )
            first = int(a.next)
        count = None
        kstat = int(desc.kstat_irqs)
        if kstat:
            try:
                per = desc.kstat_irqs
                if per.type.strip().kind == "ptr":
                    total = 0
                    for cpu in range(ncpus):
                        cell = per_cpu_ptr(per, cpu)
                        total += int(cell.cnt) if cell.type.strip().kind == "struct" else int(cell)
                    count = total
            except KvmcoreError:
                count = None
        out.append(
            {
                "irq": number,
                "desc": f"{desc_address:#x}",
                "chip": chip_name,
                "actions": actions,
                "count": count,
            }
        )
    if irq is not None and not out:
        raise KvmcoreError(f"irq: no irq_desc for irq {irq}", dump.path)
    return {"irqs": out}


def irq_text(data: dict[str, Any]) -> str:
    lines = [" IRQ   IRQ_DESC            CHIP              COUNT  NAME: HANDLER"]
    for i in data["irqs"]:
        acts = ", ".join(
            f"{printable(a['name'] or '?')}: {printable(a['handler'])}" for a in i["actions"]
        )
        count = "-" if i["count"] is None else str(i["count"])
        lines.append(
            f"{i['irq']:4d}   {i['desc']:18s}  {printable(i['chip'] or '-'):16s} {count:>6s}  "
            f"{acts}"
        )
    return "\n".join(lines)


# -- timer ----------------------------------------------------------------------------------
def timer_data(dump: Dump) -> dict[str, Any]:
    """Each CPU's timer wheel (crash's `timer`): the pending timer_lists,
    their expiry (jiffies) and functions, soonest first."""
    bases = dump.object("timer_bases")
    jiffies = int(dump.object("jiffies"))
    off_vectors = dump.types.offsetof("struct timer_base", "vectors")
    vectors_member = _find_member(dump.types.type("struct timer_base").strip(), "vectors")
    assert vectors_member is not None
    wheel = vectors_member[1].type.strip().length or 0
    names = ["BASE_STD", "BASE_DEF", "BASE_GLOBAL"]
    cpus = []
    for cpu in range(dump.kernel.nr_cpus):
        mine = per_cpu_ptr(bases, cpu)
        nbases = mine.type.strip().length or 1 if mine.type.strip().kind == "array" else 1
        timers: list[dict[str, Any]] = []
        for b in range(nbases):
            base = mine[b] if mine.type.strip().kind == "array" else mine
            heads = dump.read_ptrs(base.address + off_vectors, wheel)  # type: ignore[operator]
            hlist = dump.types.type("struct hlist_head")
            for i, first in enumerate(heads):
                if not first:
                    continue
                head = Object(
                    dump,
                    hlist,
                    address=base.address + off_vectors + i * dump.word_size,  # type: ignore[operator]
                )
                for t in hlist_for_each_entry("struct timer_list", head, "entry"):
                    timer = t.deref()
                    fn = int(timer.function)
                    timers.append(
                        {
                            "timer": f"{timer.address:#x}",
                            "base": names[b] if b < len(names) else str(b),
                            "bucket": i,
                            "expires": int(timer.expires),
                            "function": _symbol_name(dump, fn) or f"{fn:#x}",
                        }
                    )
        timers.sort(key=lambda t: (t["expires"] - jiffies) % (1 << (dump.word_size * 8)))
        cpus.append({"cpu": cpu, "timers": timers})
    return {"jiffies": jiffies, "cpus": cpus}


def timer_text(data: dict[str, Any]) -> str:
    lines = [f"JIFFIES: {data['jiffies']}"]
    for c in data["cpus"]:
        lines.append(f"TIMER_BASES[{c['cpu']}]:")
        lines.append("   EXPIRES           TIMER_LIST          FUNCTION")
        for t in c["timers"]:
            lines.append(f"  {t['expires']:>12d}      {t['timer']:18s}  {t['function']}")
    return "\n".join(lines)


# -- kmem ---------------------------------------------------------------------------------------
def _stat(dump: Dump, array: str, enum: str, item: str) -> int | None:
    """vm_zone_stat[item] or vm_node_stat[item], as global_*_page_state reads
    them (negative as 0)."""
    index = _enum_value(dump, enum, item)
    base = dump.resolve_symbol(array)
    if index is None or base is None:
        return None
    return max(0, dump.read_int(base + index * dump.word_size, dump.word_size, signed=True))


def _long_symbol(dump: Dump, name: str) -> int | None:
    address = dump.resolve_symbol(name)
    if address is None:
        return None
    return dump.read_int(address, dump.word_size, signed=True)


def _blockdev_pages(dump: Dump) -> int:
    """fs/bdev.c's nr_blockdev_pages: the page cache of every block device inode."""
    sb_ptr = dump.resolve_symbol("blockdev_superblock")
    if sb_ptr is None:
        return 0
    sb = dump.read_ptr(sb_ptr)
    if not sb:
        return 0
    total = 0
    head = _ptr(dump, "struct super_block", sb).s_inodes
    for inode in list_for_each_entry("struct inode", head.address_of(), "i_sb_list"):
        total += int(inode.deref().i_mapping.nrpages)
    return total


def _meminfo(dump: Dump) -> dict[str, Any]:
    page = _page_size(dump)
    total = _long_symbol(dump, "_totalram_pages")
    if total is None:
        total = _long_symbol(dump, "totalram_pages")
    if total is None:
        raise KvmcoreError(
            f"kmem -i: no _totalram_pages symbol {_NO_DATA_SYMBOLS}",
            dump.path,
        )
    zone = "enum zone_stat_item"
    node = "enum node_stat_item"
    free = _stat(dump, "vm_zone_stat", zone, "NR_FREE_PAGES")
    file_pages = _stat(dump, "vm_node_stat", node, "NR_FILE_PAGES")
    if free is None or file_pages is None:
        raise KvmcoreError("kmem -i: no vm_zone_stat/vm_node_stat counters", dump.path)
    swapcache = _stat(dump, "vm_node_stat", node, "NR_SWAPCACHE") or 0
    buffers = _blockdev_pages(dump)
    cached = max(0, file_pages - swapcache - buffers)
    slab = sum(
        _stat(dump, "vm_node_stat", node, item) or 0
        for item in ("NR_SLAB_RECLAIMABLE_B", "NR_SLAB_UNRECLAIMABLE_B")
    )
    pages = {
        "MemTotal": total,
        "MemFree": free,
        "Buffers": buffers,
        "Cached": cached,
        "SwapCached": swapcache,
        "Shmem": _stat(dump, "vm_node_stat", node, "NR_SHMEM") or 0,
        "Slab": slab,
        "SwapTotal": _long_symbol(dump, "total_swap_pages") or 0,
        "SwapFree": _long_symbol(dump, "nr_swap_pages") or 0,
    }
    return {
        "page_size": page,
        "pages": pages,
        "kb": {k: v * page // 1024 for k, v in pages.items()},
    }


def _slab_caches(dump: Dump) -> list[dict[str, Any]]:
    types = dump.types
    page = _page_size(dump)
    node_member = _find_member(types.type("struct kmem_cache").strip(), "node")
    if node_member is None:
        raise KvmcoreError("kmem -s: struct kmem_cache has no node[] (not SLUB)", dump.path)
    nnodes = node_member[1].type.strip().length or 1
    # a kmem_cache is allocated with nr_node_ids node pointers, not MAX_NUMNODES
    nr_node_ids = dump.resolve_symbol("nr_node_ids")
    if nr_node_ids is not None:
        nnodes = max(1, min(nnodes, dump.read_u32(nr_node_ids)))
    has_counts = _has_member(dump, "struct kmem_cache_node", "total_objects")
    slab_type = "struct slab" if _has_member(dump, "struct slab", "slab_list") else "struct page"
    out = []
    head = dump.object("slab_caches")
    for c in list_for_each_entry("struct kmem_cache", head.address_of(), "list"):
        cache = c.deref()
        total = slabs = free = partial = 0
        for n in dump.read_ptrs(cache.address + node_member[0] // 8, nnodes):  # type: ignore[operator]
            if not n:
                continue
            kn = _ptr(dump, "struct kmem_cache_node", n)
            if has_counts:  # CONFIG_SLUB_DEBUG
                slabs += int(kn.nr_slabs.counter)
                total += int(kn.total_objects.counter)
            partial += int(kn.nr_partial)
            for s in list_for_each_entry(slab_type, kn.partial.address_of(), "slab_list"):
                sl = s.deref()
                free += int(sl.objects) - int(sl.inuse)
        order = int(cache.oo.x) >> 16
        out.append(
            {
                "cache": f"{cache.address:#x}",
                "name": cache.name.string(64),
                "object_size": int(cache.object_size),
                "size": int(cache.size),
                "objects": total,
                "active": total - free,
                "slabs": slabs,
                "partial": partial,
                "slab_size": page << order,
            }
        )
    return out


def kmem_data(dump: Dump, info: bool = False, slabs: bool = False) -> dict[str, Any]:
    """Memory (crash's `kmem`): -i the summary /proc/meminfo computes, -s the
    SLUB caches as /proc/slabinfo counts them (active = total less the free
    objects of the nodes' partial slabs). With neither, -i."""
    if not info and not slabs:  # crash asks for an option; the summary is the likelier wish
        info = True
    out: dict[str, Any] = {}
    if info:
        out["info"] = _meminfo(dump)
    if slabs:
        out["slab_caches"] = _slab_caches(dump)
    return out


def _size(n: int) -> str:
    for unit in ("KB", "MB", "GB", "TB"):
        n_units = n / 1024
        if n_units < 1024 or unit == "TB":
            return f"{n_units:.1f} {unit}"
        n = int(n_units)
    return str(n)


def kmem_text(data: dict[str, Any]) -> str:
    lines = []
    if "info" in data:
        info = data["info"]
        pages, page = info["pages"], info["page_size"]
        total = pages["MemTotal"] or 1
        lines.append("                 PAGES        TOTAL      PERCENTAGE")
        for k, v in pages.items():
            pct = f"{100 * v / total:5.1f}% of TOTAL MEM" if k != "MemTotal" else ""
            lines.append(f"{k:>12s}  {v:10d}  {_size(v * page):>11s}  {pct}")
    if "slab_caches" in data:
        if lines:
            lines.append("")
        lines.append("CACHE               OBJSIZE  ALLOCATED     TOTAL  SLABS  SSIZE  NAME")
        for c in data["slab_caches"]:
            lines.append(
                f"{c['cache']:18s}  {c['object_size']:7d}  {c['active']:9d}  {c['objects']:8d}  "
                f"{c['slabs']:5d}  {c['slab_size'] // 1024:4d}k  {printable(c['name'])}"
            )
    return "\n".join(lines)


# -- search --------------------------------------------------------------------------------------
def _direct_map(dump: Dump, pa: int) -> int | None:
    va = dump.linear_map_address(pa)
    if va is None:
        base = dump.resolve_symbol("page_offset_base")  # x86_64's randomized direct map
        if base is not None:
            va = dump.read_ptr(base) + pa
    return va


def search_data(
    dump: Dump, value: str, limit: int = 64, start: str | None = None, end: str | None = None
) -> dict[str, Any]:
    """Where a word appears in the dump's RAM (crash's `search`), scanned
    through the direct map: aligned words equal to VALUE (a number, a symbol
    or an expression), at most `limit` hits, between physical START and END."""
    target = _address_arg(dump, value)
    width = dump.word_size
    target &= (1 << (width * 8)) - 1
    needle = target.to_bytes(width, dump.byteorder)
    if not 0 < limit <= MAX_SEARCH_HITS:
        raise KvmcoreError(f"search: the limit is 1 to {MAX_SEARCH_HITS} hits")
    lo = int(start, 0) if start else 0
    hi = int(end, 0) if end else 1 << 64
    hits: list[dict[str, Any]] = []
    scanned = skipped = 0
    for r in dump.phys_ranges():
        at, stop = max(r.start, lo), min(r.end, hi)
        while at < stop and len(hits) < limit:
            n = min(SEARCH_CHUNK - at % SEARCH_CHUNK, stop - at)
            try:
                chunk = dump.read_phys(at, n)
            except KvmcoreError:
                chunk = b""
                for page in range(at, at + n, 4096):  # one excluded page spoils only itself
                    try:
                        chunk += dump.read_phys(page, min(4096, at + n - page))
                    except KvmcoreError:
                        chunk += b"\0" * min(4096, at + n - page)
                        skipped += 1
            scanned += n
            i = chunk.find(needle)
            while i != -1 and len(hits) < limit:
                if (at + i) % width == 0 and (target or any(chunk[i : i + width])):
                    pa = at + i
                    va = _direct_map(dump, pa)
                    hits.append({"physical": f"{pa:#x}", "virtual": f"{va:#x}" if va else None})
                i = chunk.find(needle, i + 1)
            at += n
    return {
        "value": f"{target:#x}",
        "hits": hits,
        "truncated": len(hits) >= limit,
        "scanned_bytes": scanned,
        "skipped_pages": skipped,
    }


def search_text(data: dict[str, Any]) -> str:
    lines = [
        f"{h['virtual'] or '-':>18s}  (phys {h['physical']}): {data['value']}" for h in data["hits"]
    ]
    if data["truncated"]:
        lines.append(f"(stopped after {len(data['hits'])} hits; raise --limit)")
    if not data["hits"]:
        lines.append(f"{data['value']} not found in {data['scanned_bytes']} bytes")
    return "\n".join(lines)


# -- log -T ------------------------------------------------------------------------------------
def boot_time(dump: Dump) -> dict[str, Any]:
    """The wall-clock time of boot: the timekeeper's offs_real (CLOCK_REALTIME
    less CLOCK_MONOTONIC), and the wall time it last kept (xtime_sec)."""
    tk_core = dump.resolve_symbol("tk_core")
    if tk_core is None:
        raise KvmcoreError(
            f"log -T: no tk_core symbol {_NO_DATA_SYMBOLS}",
            dump.path,
        )
    # tk_core is `static struct { seqcount_raw_spinlock_t seq; struct timekeeper timekeeper; }`,
    # a type with no name: the timekeeper follows the seqcount, 8-aligned
    seq = dump.types.sizeof("seqcount_raw_spinlock_t")
    tk = _ptr(dump, "struct timekeeper", tk_core + ((seq + 7) & ~7))
    offs_real = int(tk.offs_real)
    xtime = int(tk.xtime_sec)
    mono = int(tk.tkr_mono.base)  # CLOCK_MONOTONIC at the last timekeeping update, ns
    if not 0 < xtime < 1 << 40 or offs_real <= 0:
        raise KvmcoreError(f"log -T: the timekeeper reads xtime_sec={xtime}", dump.path)
    return {"boot_ns": offs_real, "xtime_sec": xtime, "monotonic_ns": mono}


def _wall(ns: int) -> str:
    import datetime  # for `log -T` only

    t = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return t.strftime("%a %b %d %H:%M:%S %Y")


def log_data(dump: Dump, wall_time: bool = False) -> dict[str, Any]:
    """The kernel log (crash's `log`); with -T each record's wall-clock time
    (UTC): the boot time from the timekeeper plus the record's timestamp."""
    log = dump.kernel.kernel_log
    boot = boot_time(dump) if wall_time else None
    records = []
    for r in log.records:
        rec: dict[str, Any] = {"seq": r.seq, "timestamp_ns": r.timestamp_ns, "text": r.text}
        if boot is not None:
            rec["wall_ns"] = boot["boot_ns"] + r.timestamp_ns
            rec["wall"] = _wall(rec["wall_ns"])
        records.append(rec)
    return {
        "boot_ns": boot["boot_ns"] if boot else None,
        "boot": _wall(boot["boot_ns"]) if boot else None,
        "xtime_sec": boot["xtime_sec"] if boot else None,
        "partial": log.partial,
        "problem": log.problem,
        "records": records,
    }


def log_text(data: dict[str, Any]) -> str:
    out = []
    for r in data["records"]:
        if "wall" in r:
            prefix = f"[{r['wall']}] "
        else:
            secs, nsec = divmod(r["timestamp_ns"], 1_000_000_000)
            prefix = f"[{secs:5d}.{nsec // 1000:06d}] "
        out += [prefix + printable(line) for line in r["text"].split("\n")]
    if data.get("partial"):
        out.append(f"(partial: {data['problem']})")
    return "\n".join(out)
