"""What ps and mods print must mean what the kernel means by it.

The real x86_64 KASLR dump, with single task_struct/module fields patched in
the reader only (the file is never touched), to hold values the sample did
not happen to contain. The expected answers are the kernel's own rules:
__task_state_index() for state letters, task_ppid_nr() (the tgid of
real_parent) for the PPID column, module_flags_taint() for module taints."""
from __future__ import annotations

import pytest

import kvmcore


def patched_dump(samples, patches: dict[int, bytes]) -> kvmcore.Dump:
    """The x86_64 KASLR dump with the bytes at these kernel virtual addresses replaced."""
    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    by_pa = {dump.translate(va).pa: value for va, value in patches.items()}
    original = dump.mem.read_phys

    def read_phys(pa: int, length: int) -> bytes:
        data = bytearray(original(pa, length))
        for at, value in by_pa.items():
            lo, hi = max(at, pa), min(at + len(value), pa + length)
            if lo < hi:
                data[lo - pa:hi - pa] = value[lo - at:hi - at]
        return bytes(data)

    dump.mem.read_phys = read_phys
    return dump


@pytest.fixture(scope="module")
def layout(samples):
    dump = kvmcore.open(str(samples.get_built("x86_64-kaslr").file("elf")))
    ts = "struct task_struct"
    return {"tasks": {t.pid: t for t in dump.kernel.tasks() if not t.is_idle},
            "state": dump.types.offsetof(ts, "__state"),
            "parent": dump.types.offsetof(ts, "real_parent"),
            "modules": {m.name: m.address for m in dump.kernel.modules()},
            "taints": dump.types.offsetof("struct module", "taints")}


def test_ppid_is_the_parents_process_not_its_thread(samples, layout):
    # a child forked by a non-leader thread has that thread as real_parent;
    # ps (task_ppid_nr) shows the thread's tgid, never its tid
    m = samples.get_built("x86_64-kaslr").manifest
    worker = m["threads"][0]
    assert worker["tid"] != worker["tgid"]
    child = next(p for p in m["processes"] if p["comm"] == "sleep")
    tasks = layout["tasks"]
    dump = patched_dump(samples, {
        tasks[child["pid"]].address + layout["parent"]:
            tasks[worker["tid"]].address.to_bytes(8, "little")})
    task = dump.kernel.find_task(child["pid"])
    assert task.ppid == worker["tgid"]


@pytest.mark.parametrize("raw_state, letter", [
    (0x0402, "I"),  # TASK_IDLE
    (0x2402, "I"),  # TASK_IDLE | TASK_FREEZABLE: still idle, not D
    (0x0002, "D"),  # TASK_UNINTERRUPTIBLE
    (0x0102, "D"),  # TASK_KILLABLE
    (0x1000, "D"),  # TASK_RTLOCK_WAIT (PREEMPT_RT): reported as D, not R
    (0x2001, "S"),  # TASK_INTERRUPTIBLE | TASK_FREEZABLE
    (0x0004, "T"),  # __TASK_STOPPED
    (0x0040, "P"),  # TASK_PARKED
])
def test_state_letters_follow_task_state_index(samples, layout, raw_state, letter):
    m = samples.get_built("x86_64-kaslr").manifest
    pid = next(p["pid"] for p in m["processes"] if p["comm"] == "sleeper_a")
    victim = layout["tasks"][pid]
    dump = patched_dump(samples, {victim.address + layout["state"]:
                                  raw_state.to_bytes(4, "little")})
    assert dump.kernel.find_task(pid).state == letter


def test_module_taints_in_the_kernels_order(samples, layout):
    # TAINT_CRAP (10) 'C', TAINT_OOT_MODULE (12) 'O', TAINT_TEST (18) 'N':
    # /proc/modules and oopses print them as "(CON)"
    bits = (1 << 10) | (1 << 12) | (1 << 18)
    addr = layout["modules"]["qemu_fw_cfg"]
    dump = patched_dump(samples, {addr + layout["taints"]: bits.to_bytes(8, "little")})
    mod = next(m for m in dump.kernel.modules() if m.name == "qemu_fw_cfg")
    assert mod.taint_flags == "CON"
