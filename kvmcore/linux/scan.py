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


#: jiffies at boot: INITIAL_JIFFIES is -300 s worth of ticks in 32 bits; the
#: kernel's HZ is 100 to 1000
_JIFFIES_LOW, _JIFFIES_SPAN = (1 << 32) - 300 * 1000, 1 << 40
_A64_RET = 0xD65F03C0


def find_jiffies(dump: Dump) -> int | None:
    """jiffies (= jiffies_64 on 64-bit kernels) on arm64 without data symbols:
    the function `jiffies_read` (kernel/time/jiffies.c, `return jiffies;`, a
    kallsyms function) loads with ADRP xN + LDR x0, [xN, #imm] before its RET.
    Validated: the value there is a jiffies count (INITIAL_JIFFIES, minus at
    most 300 s at HZ=1000, plus less than 2^40 ticks)."""
    if dump.arch.name != "aarch64" or dump.word_size != 8:
        return None
    func = dump.resolve_symbol("jiffies_read")
    if func is None:
        return None
    try:
        code = dump.read(func, 40)
    except AddressError:
        return None
    insns = [int.from_bytes(code[i : i + 4], "little") for i in range(0, len(code), 4)]
    pages: dict[int, int] = {}  # register -> page address from an ADRP
    for i, insn in enumerate(insns):
        pc = func + 4 * i
        if insn & 0x9F000000 == 0x90000000:  # ADRP
            imm = ((insn >> 5 & 0x7FFFF) << 2) | (insn >> 29 & 3)
            if imm & 1 << 20:
                imm -= 1 << 21
            pages[insn & 0x1F] = ((pc & ~0xFFF) + (imm << 12)) & (1 << 64) - 1
        elif insn & 0xFFC00000 == 0xF9400000:  # LDR Xt, [Xn, #imm12 * 8]
            rn, rt = insn >> 5 & 0x1F, insn & 0x1F
            if rn not in pages or rt != 0 or _A64_RET not in insns[i + 1 :]:
                return None
            addr = pages[rn] + (insn >> 10 & 0xFFF) * 8
            try:
                value = dump.read_ptr(addr)
            except AddressError:
                return None
            return addr if 0 <= value - _JIFFIES_LOW < _JIFFIES_SPAN else None
        elif insn == _A64_RET:
            return None
    return None
