"""Last-resort searches of the kernel image, for kernels whose kallsyms has
no data symbols (arm64 and i386 Debian kernels lack CONFIG_KALLSYMS_ALL) and
no vmlinux at hand. Every hit is validated before it is used, and the caller
records that the address came from a scan."""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

from ..errors import AddressError, KvmcoreError

if TYPE_CHECKING:
    from ..dump import Dump

IMAGE_SCAN_LIMIT = 160 << 20  # no kernel image is larger
CHUNK = 4 << 20


def image_start(dump: "Dump") -> int | None:
    info = dump.vmcoreinfo
    start = info.symbol("_stext") if info else None
    if start is None:
        try:
            start = dump.symbols.get("_stext") or dump.symbols.get("_text")
        except KvmcoreError:
            return None
    return start


def scan_kernel_image(dump: "Dump", pattern: bytes, limit: int = IMAGE_SCAN_LIMIT
                      ) -> Iterator[int]:
    """Kernel virtual addresses of `pattern` in the kernel image, which is
    physically contiguous from _stext on the architectures kvmcore reads."""
    start = image_start(dump)
    if start is None:
        return
    try:
        base_pa = dump.translate(start).pa
    except AddressError:
        return
    overlap = len(pattern) - 1
    off = 0
    while off < limit:
        try:
            data = dump.read_phys(base_pa + off, CHUNK + overlap)
        except AddressError:
            data = _read_pages(dump, base_pa + off, CHUNK + overlap)
            if data is None:
                return
        pos = data.find(pattern)
        while pos >= 0:
            yield start + off + pos
            pos = data.find(pattern, pos + 1)
        off += CHUNK


def _read_pages(dump: "Dump", pa: int, length: int) -> bytes | None:
    """Read page by page, zero-filling pages the dump lacks; None when the
    first page is already missing (the end of memory)."""
    out = bytearray()
    for page in range(pa, pa + length, 4096):
        try:
            out += dump.read_phys(page, 4096)
        except AddressError:
            if not out:
                return None
            out += bytes(4096)
    return bytes(out)


def find_init_task(dump: "Dump") -> int | None:
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


BTF_HEADER = b"\x9f\xeb\x01\x00\x18\x00\x00\x00\x00\x00\x00\x00"  # magic, v1, hdr_len 24, type_off 0


def find_btf(dump: "Dump") -> tuple[int, int] | None:
    """(address, size) of the kernel's .BTF blob, found by its header in the image.
    Little-endian kernels only; the header is validated (string section after types)."""
    if dump.byteorder != "little":
        return None
    for hit in scan_kernel_image(dump, BTF_HEADER):
        try:
            hdr = dump.read(hit, 24)
        except AddressError:
            continue
        type_len, str_off, str_len = (int.from_bytes(hdr[i:i + 4], "little") for i in (12, 16, 20))
        if str_off != type_len or not 0 < str_len < 1 << 28 or type_len >= 1 << 28:
            continue
        try:
            if dump.read(hit + 24 + str_off, 1) != b"\0":
                continue
        except AddressError:
            continue
        return hit, 24 + str_off + str_len
    return None


def find_idle_tasks(dump: "Dump", nr_cpus: int) -> dict[int, int]:
    """cpu -> idle task_struct for CPUs 1.., found in RAM by their "swapper/N"
    comm when no runqueues symbol is known. Idle tasks are never on the task
    list, so nothing else leads to them. Validated: pid 0, tgid 0, the comm's
    CPU equals the task's CPU field; the address is its linear-map alias."""
    import re

    if nr_cpus < 2 or dump.arch.linear_map_address(0) is None:
        return {}
    to_virt = dump.arch.linear_map_address
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
                data = _read_pages(dump, pa, n) or b""
            for m in pattern.finditer(data):
                cpu = int(m.group(1))
                if not 0 < cpu < nr_cpus or cpu in found:
                    continue
                task = to_virt(pa + m.start() - off_comm)
                try:
                    if (dump.read_u32(task + off_pid), dump.read_u32(task + off_tgid),
                            dump.read_u32(task + off_cpu)) == (0, 0, cpu):
                        found[cpu] = task
                except AddressError:
                    continue
            pa += n
    return found
