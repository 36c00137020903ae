"""Last-resort searches of the kernel image, for kernels whose kallsyms has
no data symbols (arm64 and i386 Debian kernels lack CONFIG_KALLSYMS_ALL) and
no vmlinux at hand. Every hit is validated before it is used, and the caller
records that the address came from a scan."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from ..errors import AddressError
from ..symbols.image import CHUNK, read_pages, scan_kernel_image

if TYPE_CHECKING:
    from ..dump import Dump


def find_init_task(dump: Dump) -> int | None:
    """init_task: the task_struct in the image whose comm is "swapper/0", pid 0,
    and whose tasks list links back to itself consistently."""
    types = dump.types
    ts = "struct task_struct"
    off_comm = types.offsetof(ts, "comm")
    off_pid = types.offsetof(ts, "pid")
    off_tasks = types.offsetof(ts, "tasks")
    word = dump.word_size
    for hit in scan_kernel_image(dump, b"swapper/0\0"):
        task = hit - off_comm
        try:
            if dump.read_u32(task + off_pid) != 0:
                continue
            head = task + off_tasks
            nxt = dump.read_ptr(head)
            prev = dump.read_ptr(head + word)
            if dump.read_ptr(nxt + word) == head and dump.read_ptr(prev) == head:
                return task
        except AddressError:
            continue
    return None


def find_idle_tasks(dump: Dump, nr_cpus: int) -> dict[int, int]:
    """cpu -> idle task_struct for CPUs 1.., found in RAM by their "swapper/N"
    comm when no runqueues symbol is known. Idle tasks are never on the task
    list, so nothing else leads to them. Validated: pid 0, tgid 0, the comm's
    CPU equals the task's CPU field; the address is its linear-map alias."""
    if nr_cpus < 2 or dump.linear_map_address(0) is None:
        return {}
    to_virt = dump.linear_map_address
    types = dump.types
    ts = "struct task_struct"
    off_comm = types.offsetof(ts, "comm")
    off_pid = types.offsetof(ts, "pid")
    off_tgid = types.offsetof(ts, "tgid")
    cpu_path = "thread_info.cpu" if types.has_member(ts, "thread_info.cpu") else "cpu"
    off_cpu = types.offsetof(ts, cpu_path)
    pattern = re.compile(rb"swapper/(\d{1,4})\0")
    found: dict[int, int] = {}
    for rng in dump.phys_ranges():
        pa = rng.start
        while pa < rng.end and len(found) < nr_cpus - 1:
            n = min(CHUNK, rng.end - pa)
            try:
                data = dump.read_phys(pa, n)
            except AddressError:
                data = read_pages(dump, pa, n) or b""
            for m in pattern.finditer(data):
                cpu = int(m.group(1))
                if not 0 < cpu < nr_cpus or cpu in found:
                    continue
                task = to_virt(pa + m.start() - off_comm)
                if task is None:
                    continue  # not met: the translator knew address 0's alias (above)
                try:
                    if (
                        dump.read_u32(task + off_pid),
                        dump.read_u32(task + off_tgid),
                        dump.read_u32(task + off_cpu),
                    ) == (0, 0, cpu):
                        found[cpu] = task
                except AddressError:
                    continue
            pa += n
    return found
