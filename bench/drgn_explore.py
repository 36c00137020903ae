"""`python -m bench.drgn_explore TASK DUMP VMLINUX`: drgn's helpers doing the work
of one kvmcore exploration command (see EXPLORE_COMMANDS in bench/tools.py) and
printing about what kvmcore prints.  Whole process, like `kvmcore CMD DUMP`."""

from __future__ import annotations

import sys

from drgn.helpers.linux.cpumask import for_each_online_cpu, for_each_possible_cpu
from drgn.helpers.linux.fs import (
    d_path,
    for_each_file,
    for_each_mount,
    mount_dst,
    mount_fstype,
    mount_src,
)
from drgn.helpers.linux.irq import (
    for_each_irq_desc,
    irq_desc_action_names,
    irq_desc_chip_name,
    irq_desc_kstat_cpu,
)
from drgn.helpers.linux.list import list_for_each_entry
from drgn.helpers.linux.mm import for_each_vma, totalram_pages
from drgn.helpers.linux.net import for_each_netdev, netdev_ipv4_addrs, netdev_name
from drgn.helpers.linux.pid import find_task
from drgn.helpers.linux.printk import get_printk_records
from drgn.helpers.linux.sched import cpu_rq, rq_for_each_fair_task
from drgn.helpers.linux.slab import for_each_slab_cache, slab_cache_usage
from drgn.helpers.linux.vmstat import global_node_page_state, global_zone_page_state

from .drgn_worker import open_program

PID = 151  # the crashing task of the x86_64 samples (manifest panic.pid)


def p(prog):
    print(repr(prog["init_task"].comm.string_().decode()))


def struct(prog):
    t = prog.type("struct task_struct")
    print(f"struct task_struct {{  /* size {t.size} */")
    for m in t.members:
        print(f"  [{m.bit_offset // 8:#x}] {m.type.type_name()} {m.name or ''};")
    print("}")


def rd(prog):
    addr = prog["init_task"].address_
    data = prog.read(addr, 64 * 8)
    for i in range(0, len(data), 16):
        a, b = (
            int.from_bytes(data[i : i + 8], "little"),
            int.from_bytes(data[i + 8 : i + 16], "little"),
        )
        print(f"{addr + i:x}:  {a:016x} {b:016x}")


def list_(prog):
    head = prog["init_task"].tasks.address_of_()
    for t in list_for_each_entry("struct task_struct", head, "tasks"):
        print(f"{t.value_():x}\n  pid = {t.pid.value_()}\n  comm = {t.comm.string_().decode()!r}")


def runq(prog):
    for cpu in for_each_online_cpu(prog):
        rq = cpu_rq(prog, cpu)
        curr = rq.curr
        print(f"CPU {cpu} RUNQUEUE: {rq.value_():x} nr_running {rq.nr_running.value_()}")
        print(f"  CURRENT: PID: {curr.pid.value_()} COMMAND: {curr.comm.string_().decode()}")
        for t in rq_for_each_fair_task(rq):
            print(f"    PID: {t.pid.value_()} COMMAND: {t.comm.string_().decode()}")


def task(prog):
    t = find_task(prog, PID)
    print(f"PID: {t.pid.value_()}  TASK: {t.value_():#x}  COMMAND: {t.comm.string_().decode()}")
    print(t[0])


def kmem_i(prog):
    def node(name):
        return global_node_page_state(prog, prog.constant(name))

    print("MemTotal", totalram_pages(prog))
    print("MemFree", global_zone_page_state(prog, prog.constant("NR_FREE_PAGES")))
    print("Cached", node("NR_FILE_PAGES"))
    print("Shmem", node("NR_SHMEM"))
    print("Slab", node("NR_SLAB_RECLAIMABLE_B") + node("NR_SLAB_UNRECLAIMABLE_B"))


def kmem_s(prog):
    print("CACHE OBJSIZE ALLOCATED TOTAL SLABS NAME")
    for s in for_each_slab_cache(prog):
        u = slab_cache_usage(s)
        print(
            f"{s.value_():x} {s.object_size.value_()} {u.active_objs} {u.num_objs} "
            f"{u.num_slabs} {s.name.string_().decode()}"
        )


def files(prog):
    for fd, f in for_each_file(find_task(prog, PID)):
        print(fd, hex(f.value_()), d_path(f.f_path.address_of_()).decode())


def vm(prog):
    mm = find_task(prog, PID).mm
    for vma in for_each_vma(mm):
        f = vma.vm_file
        name = d_path(f.f_path.address_of_()).decode() if f else ""
        print(
            f"{vma.value_():x} {vma.vm_start.value_():x} {vma.vm_end.value_():x} "
            f"{vma.vm_flags.value_():x} {name}"
        )


def mount(prog):
    for mnt in for_each_mount(prog):
        print(
            f"{mnt.value_():x} {mnt.mnt.mnt_sb.value_():x} {mount_fstype(mnt).decode()} "
            f"{mount_src(mnt).decode()} {mount_dst(mnt).decode()}"
        )


def net(prog):
    for dev in for_each_netdev(prog):
        addrs = ", ".join(str(a) for a in netdev_ipv4_addrs(dev))
        print(f"{dev.value_():x} {netdev_name(dev).decode()} {dev.mtu.value_()} {addrs}")


def irq(prog):
    cpus = list(for_each_possible_cpu(prog))
    for n, desc in for_each_irq_desc(prog):
        count = sum(irq_desc_kstat_cpu(desc, c) for c in cpus)
        names = ",".join(x.decode() for x in irq_desc_action_names(desc))
        chip = irq_desc_chip_name(desc)
        print(n, hex(desc.value_()), chip.decode() if chip else "", count, names)


def log(prog):
    for rec in get_printk_records(prog):
        print(f"[{rec.timestamp / 1e9:12.6f}] {rec.text.decode(errors='replace')}")


TASKS = {
    "p": p,
    "struct": struct,
    "rd": rd,
    "list": list_,
    "runq": runq,
    "task": task,
    "kmem -i": kmem_i,
    "kmem -s": kmem_s,
    "files": files,
    "vm": vm,
    "mount": mount,
    "net": net,
    "irq": irq,
    "log": log,
}


def main(argv: list[str]) -> int:
    task, dump, vmlinux = argv
    TASKS[task](open_program(dump, vmlinux))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
