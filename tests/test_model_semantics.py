"""What ps and mods print must mean what the kernel means by it.

The real x86_64 KASLR dump, with single task_struct/module fields patched in
the reader only (the file is never touched), to hold values the sample did
not happen to contain. The expected answers are the kernel's own rules:
__task_state_index() for state letters, task_ppid_nr() (the tgid of
real_parent) for the PPID column, module_flags_taint() for module taints."""

from __future__ import annotations

import struct

import pytest
from patching import patched_dump

import kvmcore


@pytest.fixture(scope="module")
def layout(samples):
    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    ts = "struct task_struct"
    return {
        "tasks": {t.pid: t for t in dump.kernel.tasks() if not t.is_idle},
        "state": dump.types.offsetof(ts, "__state"),
        "parent": dump.types.offsetof(ts, "real_parent"),
        "modules": {m.name: m.address for m in dump.kernel.modules()},
        "taints": dump.types.offsetof("struct module", "taints"),
    }


def test_ppid_is_the_parents_process_not_its_thread(samples, layout):
    # a child forked by a non-leader thread has that thread as real_parent;
    # ps (task_ppid_nr) shows the thread's tgid, never its tid
    m = samples.get_built("x86_64-kaslr").manifest
    worker = m["threads"][0]
    assert worker["tid"] != worker["tgid"]
    child = next(p for p in m["processes"] if p["comm"] == "sleep")
    tasks = layout["tasks"]
    dump = patched_dump(
        samples,
        {
            tasks[child["pid"]].address + layout["parent"]: tasks[worker["tid"]].address.to_bytes(
                8, "little"
            )
        },
    )
    task = dump.kernel.find_task(child["pid"])
    assert task.ppid == worker["tgid"]


@pytest.mark.parametrize(
    "raw_state, letter",
    [
        (0x0402, "I"),  # TASK_IDLE
        (0x2402, "I"),  # TASK_IDLE | TASK_FREEZABLE: still idle, not D
        (0x0002, "D"),  # TASK_UNINTERRUPTIBLE
        (0x0102, "D"),  # TASK_KILLABLE
        (0x1000, "D"),  # TASK_RTLOCK_WAIT (PREEMPT_RT): reported as D, not R
        (0x2001, "S"),  # TASK_INTERRUPTIBLE | TASK_FREEZABLE
        (0x0004, "T"),  # __TASK_STOPPED
        (0x0040, "P"),  # TASK_PARKED
    ],
)
def test_state_letters_follow_task_state_index(samples, layout, raw_state, letter):
    m = samples.get_built("x86_64-kaslr").manifest
    pid = next(p["pid"] for p in m["processes"] if p["comm"] == "sleeper_a")
    victim = layout["tasks"][pid]
    dump = patched_dump(
        samples, {victim.address + layout["state"]: raw_state.to_bytes(4, "little")}
    )
    assert dump.kernel.find_task(pid).state == letter


def test_module_taints_in_the_kernels_order(samples, layout):
    # TAINT_CRAP (10) 'C', TAINT_OOT_MODULE (12) 'O', TAINT_TEST (18) 'N':
    # /proc/modules and oopses print them as "(CON)"
    bits = (1 << 10) | (1 << 12) | (1 << 18)
    addr = layout["modules"]["qemu_fw_cfg"]
    dump = patched_dump(samples, {addr + layout["taints"]: bits.to_bytes(8, "little")})
    mod = next(m for m in dump.kernel.modules() if m.name == "qemu_fw_cfg")
    assert mod.taint_flags == "CON"


def test_panic_in_interrupt_on_an_idle_cpu_names_that_cpus_idle_task(samples):
    """A panic from interrupt context on an idle CPU: rq->curr of the panic
    CPU is swapper/N and the log's "CPU: N PID: 0 Comm: swapper/N" line says
    so too. The panicking task is that CPU's idle task (crash: PID 0
    swapper/N), not nobody and not CPU 0's swapper/0."""
    m = samples.get_built("x86_64-kaslr").manifest
    cpu, pid, comm = m["panic"]["cpu"], m["panic"]["pid"], m["panic"]["comm"]
    assert cpu != 0
    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    kernel, info = dump.kernel, dump.vmcoreinfo
    idle = next(t for t in kernel.tasks() if t.is_idle and t.cpu == cpu)
    rq_curr = kernel.per_cpu("runqueues", cpu) + dump.types.offsetof("struct rq", "curr")
    ring = dump.read_ptr(info.symbol("prb")) + info.offset("printk_ringbuffer", "text_data_ring")
    data = dump.read_ptr(ring + info.offset("prb_data_ring", "data"))
    size = 1 << dump.read_u32(ring + info.offset("prb_data_ring", "size_bits"))
    old = f"CPU: {cpu} PID: {pid} Comm: {comm}".encode()
    new = f"CPU: {cpu} PID: 0 Comm: swapper/{cpu}".encode()
    new = new.ljust(len(old))[: len(old)] if len(new) <= len(old) else None
    assert new is not None, "the sample's comm is too short to patch in place"
    at = dump.read(data, size).find(old)
    assert at >= 0
    damaged = patched_dump(samples, {rq_curr: idle.address.to_bytes(8, "little"), data + at: new})
    assert damaged.kernel.running_task(cpu).address == idle.address
    panic = damaged.kernel.panic
    assert panic.cpu == cpu
    assert panic.task is not None and (panic.task.pid, panic.task.cpu) == (0, cpu)
    assert panic.task.comm == f"swapper/{cpu}"


def test_pre_5_10_log_buf_levels_and_facilities(samples):
    """Kernels before 5.10 (RHEL 7/8 among them) keep `struct printk_log`
    records in log_buf: u64 ts_nsec, u16 len, u16 text_len, u16 dict_len,
    u8 facility, u8 flags:5 level:3. The real dump's VMCOREINFO is given the
    pre-5.10 helpers (SYMBOL(log_buf) etc.) instead of prb, pointing at two
    such records placed in its memory."""
    from kvmcore.notes import VmcoreInfo

    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    info = dump.vmcoreinfo
    ring = dump.read_ptr(info.symbol("prb")) + info.offset("printk_ringbuffer", "text_data_ring")
    area = dump.read_ptr(ring + info.offset("prb_data_ring", "data"))  # mapped, writable RAM

    def rec(ts: int, facility: int, level: int, flags: int, text: bytes) -> bytes:
        length = (16 + len(text) + 7) & ~7
        head = struct.pack("<QHHHBB", ts, length, len(text), 0, facility, level << 5 | flags)
        return (head + text).ljust(length, b"\0")

    LOG_NEWLINE, LOG_CONT = 2, 8
    records = (
        rec(1_500_000_000, 0, 3, LOG_NEWLINE, b"kernel err line")
        + rec(2_000_000_000, 1, 6, LOG_NEWLINE, b"user info line")
        + rec(2_500_000_000, 0, 4, LOG_CONT, b"cont")
    )
    buf = area + 0x100
    damaged = patched_dump(
        samples,
        {
            area: buf.to_bytes(8, "little"),
            area + 8: (0x400).to_bytes(4, "little"),
            area + 16: (0).to_bytes(4, "little"),
            area + 20: len(records).to_bytes(4, "little"),
            buf: records,
        },
    )
    lines = [line for line in info.text.splitlines() if not line.startswith("SYMBOL(prb)")]
    lines += [
        f"SYMBOL(log_buf)={area:x}",
        f"SYMBOL(log_buf_len)={area + 8:x}",
        f"SYMBOL(log_first_idx)={area + 16:x}",
        f"SYMBOL(log_next_idx)={area + 20:x}",
        "SIZE(printk_log)=16",
        "OFFSET(printk_log.ts_nsec)=0",
        "OFFSET(printk_log.len)=8",
        "OFFSET(printk_log.text_len)=10",
    ]
    damaged.vmcoreinfo = VmcoreInfo("\n".join(lines) + "\n")
    log = damaged.kernel.kernel_log
    assert log.layout == "log_buf" and not log.partial, log.problem
    got = [(r.timestamp_ns, r.facility, r.level, r.continuation, r.text) for r in log.records]
    assert got == [
        (1_500_000_000, 0, 3, False, "kernel err line"),
        (2_000_000_000, 1, 6, False, "user info line"),
        (2_500_000_000, 0, 4, True, "cont"),
    ]


@pytest.mark.parametrize(
    "line",
    [
        "OFFSET(printk_info.text_len)=2147483648",
        "SIZE(printk_info)=0",
        "OFFSET(prb_desc.state_var)=-8",
    ],
)
def test_corrupt_printk_helpers_are_named_not_an_index_error(samples, line):
    """A VMCOREINFO whose printk helpers do not fit their struct (a damaged
    note) gives a KvmcoreError naming the helper; the report marks the log
    unavailable with that reason instead of an internal error."""
    from kvmcore.errors import UnsupportedError
    from kvmcore.notes import VmcoreInfo
    from kvmcore.report import build_report

    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    key = line.split("=", 1)[0]
    text = "\n".join(x for x in dump.vmcoreinfo.text.splitlines() if not x.startswith(key + "="))
    dump.vmcoreinfo = VmcoreInfo(f"{text}\n{line}\n")
    with pytest.raises(UnsupportedError, match=key.split("(")[1].split(".")[0].rstrip(")")):
        _ = dump.kernel.kernel_log
    problems = build_report(dump)["problems"]
    assert not [p for p in problems if "internal error" in p], problems


def test_utsname_of_a_kernel_without_the_uts_namespace_offset(samples):
    """Before 5.11, VMCOREINFO had SYMBOL(init_uts_ns) but no
    OFFSET(uts_namespace.name), and `name` followed a 4-byte kref. The real
    dump's VMCOREINFO is given that shape: the symbol 4 bytes before `name`,
    no offset line."""
    from kvmcore.notes import VmcoreInfo

    s = samples.get_built("x86_64-kaslr")
    dump = kvmcore.open(str(s.file("elf")))
    info = dump.vmcoreinfo
    name = info.symbol("init_uts_ns") + info.offset("uts_namespace", "name")
    lines = [
        x
        for x in info.text.splitlines()
        if not x.startswith(("SYMBOL(init_uts_ns)=", "OFFSET(uts_namespace.name)="))
    ]
    dump.vmcoreinfo = VmcoreInfo("\n".join(lines + [f"SYMBOL(init_uts_ns)={name - 4:x}"]))
    uts = dump.kernel.utsname
    assert {k: uts[k] for k in ("sysname", "release", "version", "machine")} == s.manifest["uts"]
