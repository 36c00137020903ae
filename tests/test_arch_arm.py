"""The 32-bit Arm backend on the real sample `armhf`: Debian trixie's 6.12 armmp
kernel panicked under QEMU's virt machine (cortex-a15, short descriptors). The
kernel has no BTF and no KALLSYMS_ALL, and no FW_CFG_SYSFS (the dump has no
VMCOREINFO note: kvmcore finds the kernel's own in memory), so tasks need the
-dbg vmlinux.

Ground truth: the manifest (what the guest printed), the -dbg package's
System.map (plain text), the fixed layout of QEMU's virt machine (RAM at
0x40000000) and of Linux arm's default 3G/1G split (PAGE_OFFSET 0xc0000000),
and gdb-multiarch. drgn's 32-bit arm support is limited (no arm stack traces
or page-table walks) and Debian's crash 8.0.2 is an x86_64-only build that
cannot open an arm dump, so neither is used as an oracle here.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import gdb_binary

import kvmcore
from sample_dumps.catalog import load_samples

SID = "armhf"
BUILD = f"python -m sample_dumps build --only {SID} --with-dbg"
SAMPLES = load_samples()
PY = sys.executable
QEMU_VIRT_RAM = 0x40000000
PAGE_OFFSET = 0xC0000000
PAGE = 4096


def sample():
    if SID not in SAMPLES:
        pytest.fail(f"sample {SID} is not built: run `{BUILD}`", pytrace=False)
    return SAMPLES[SID]


def vmlinux() -> Path:
    v = sample().vmlinux()
    if v is None:
        pytest.fail(f"the -dbg vmlinux of {SID} is missing: run `{BUILD}`", pytrace=False)
    return v


def system_map() -> Path:
    m = sample().system_map()
    if m is None:
        pytest.fail(f"the System.map of {SID} is missing: run `{BUILD}`", pytrace=False)
    return m


def formats() -> list:
    if SID not in SAMPLES:
        return [pytest.param(None, id="missing")]
    return SAMPLES[SID].formats


@pytest.fixture(scope="module", params=formats())
def dump(request):
    """Each format of the sample, with the -dbg vmlinux (no BTF: DWARF types)."""
    if request.param is None:
        sample()
    with kvmcore.open(str(sample().file(request.param)), str(vmlinux())) as d:
        yield d


def names(bt) -> list[str]:
    return [(f.function or "?").split("+")[0] for f in bt.frames]


def system_map_symbols(*wanted: str) -> dict[str, int]:
    out = {}
    for line in system_map().read_text().splitlines():
        addr, _, name = line.split()
        if name in wanted:
            out[name] = int(addr, 16)
    return out


# -- probe and translation ------------------------------------------------------


def test_probe_and_vmcoreinfo_from_memory(dump):
    m = sample().manifest
    assert dump.arch.name == "arm" and dump.word_size == 4
    assert dump.os == "linux"
    assert "in memory" in dump.mem.metadata["vmcoreinfo_source"]
    assert dump.vmcoreinfo.text.startswith("OSRELEASE=" + m["kernel_release"])
    desc = dump.translator.describe()
    assert desc["paging"] == "short-descriptor"
    assert desc["page_offset"] == hex(PAGE_OFFSET) and desc["phys_offset"] == hex(QEMU_VIRT_RAM)
    assert len(dump.cpu_states) == m["qemu"]["smp"]
    assert len(dump.cpu_states[0].raw) == 148


def test_symbols_match_system_map(dump):
    want = system_map_symbols("swapper_pg_dir", "init_task", "panic", "sysrq_handle_crash")
    assert len(want) == 4
    for name, addr in want.items():
        assert dump.symbols.get(name) == addr, name
    assert dump.vmcoreinfo.symbol("swapper_pg_dir") == want["swapper_pg_dir"]


def test_linear_map_pages_through_page_tables(dump):
    """Pages of lowmem: the short-descriptor walk from swapper_pg_dir puts the
    linear-map address of each at PAGE_OFFSET - PHYS_OFFSET, with the same bytes."""
    rng = random.Random(13)
    ranges = [r for r in dump.mem.ranges() if r.start >= QEMU_VIRT_RAM]
    assert ranges
    checked = 0
    for _ in range(300):
        r = rng.choice(ranges)
        pa = rng.randrange(r.start, r.end) & ~(PAGE - 1)
        va = PAGE_OFFSET + pa - QEMU_VIRT_RAM
        t = dump.translate(va)
        assert t.pa == pa, (hex(va), hex(t.pa), hex(pa))
        assert dump.linear_map_address(pa) == va
        try:
            phys = dump.mem.read_phys(pa, PAGE)
        except kvmcore.errors.KvmcoreError:
            continue
        assert dump.read(va, PAGE) == phys, hex(va)
        checked += 1
    assert checked >= 250


def test_vmalloc_stacks_walk_second_level(dump):
    """Task stacks are vmalloc'ed (VMAP_STACK): 4K small pages of L2 tables,
    not in the linear map, and each one's top holds the task's pt_regs area."""
    walked = list(dump.walk_pages())
    small = [r for r in walked if r.page_size == PAGE and r.va >= 0xD0000000]
    assert small
    task = dump.kernel.panic_task()
    stack = dump.read_ptr(task.address + dump.types.offsetof("struct task_struct", "stack"))
    assert stack >= 0xD0000000
    t = dump.translate(stack)
    assert t.page_size == PAGE
    assert dump.read(stack, 64) == dump.mem.read_phys(t.pa, 64)


# -- the kernel model ------------------------------------------------------------


def test_ps_matches_manifest(dump):
    m = sample().manifest
    tasks = {t.pid: t for t in dump.kernel.tasks()}
    for p in m["processes"]:
        t = tasks.get(p["pid"])
        assert t is not None, p
        assert (t.ppid, t.comm) == (p["ppid"], p["comm"]), (p, t)
    for th in m["threads"]:
        t = tasks.get(th["tid"])
        assert t is not None, th
        assert (t.tgid, t.comm) == (th["tgid"], th["comm"]), (th, t)


def test_dmesg_has_marker_and_panic(dump):
    m = sample().manifest
    text = "\n".join(r.text for r in dump.kernel.log())
    assert m["marker"] in text
    assert "Kernel panic - not syncing: sysrq triggered crash" in text


def test_panic_task_and_cpu(dump):
    m = sample().manifest["panic"]
    panic = dump.kernel.panic
    assert panic.message == m["message"]
    assert panic.cpu == m["cpu"]
    assert (panic.task.pid, panic.task.comm) == (m["pid"], m["comm"])


# -- backtraces ------------------------------------------------------------------


def check_panic_bt(bt) -> None:
    got = names(bt)
    assert "sysrq_handle_crash" in got, got
    i = got.index("sysrq_handle_crash")
    assert got[i - 1] == "panic" and got[i + 1] == "__handle_sysrq", got
    assert "write_sysrq_trigger" in got and "ksys_write" in got, got
    assert got[-1] == "ret_fast_syscall" and bt.error is None, (got, bt.error)
    # sysrq-c panics in a write() syscall with no exception on the way: an
    # interrupt frame in the chain is a stale one the stack scan met (the CPU
    # was caught on its IRQ vector; an earlier interrupt of a callee of frame
    # #0's function left its pt_regs below the live frames)
    assert all(f.kind == "normal" for f in bt.frames), [(f.function, f.kind) for f in bt.frames]


def test_panic_backtrace_with_cfi(dump):
    """The panicking CPU was caught on the IRQ vector (banked sp/lr): frame #0
    is the interrupted pc, the rest is found on the task's stack."""
    bt = dump.backtrace(dump.kernel.panic_task())
    check_panic_bt(bt)
    assert bt.notes and "banked" in bt.notes[0]


def test_panic_backtrace_through_exidx_alone(dump):
    """The same walk with the vmlinux's CFI switched off: the kernel's own
    .ARM.exidx tables, read from the dump."""
    from kvmcore.unwind import make_unwinder

    unwinder = make_unwinder(dump)
    unwinder.cfi = None
    task = dump.kernel.panic_task()
    bt = unwinder.unwind(task.registers())
    check_panic_bt(bt)
    assert {f.method for f in bt.frames[1:]} <= {"exidx", "scan", "pt_regs"}
    assert "exidx" in {f.method for f in bt.frames}
    assert len(unwinder.table) > 10000


def test_sleeping_tasks_unwind_from_switch_frame(dump):
    """Sleeping manifest tasks: from thread_info->cpu_context through
    __schedule to their syscall, ending at ret_fast_syscall."""
    m = sample().manifest
    tasks = {t.pid: t for t in dump.kernel.tasks()}
    seen = 0
    for p in m["processes"]:
        if p["comm"] not in ("sleep", "threaded_task", "sleeper_a", "sleeper_b", "sleeper_c"):
            continue
        bt = dump.backtrace(tasks[p["pid"]])
        got = names(bt)
        assert got[0] == "__schedule" and "schedule" in got, (p, got)
        assert got[-1] in ("ret_fast_syscall", "__sys_trace_return"), (p, got)
        assert bt.error is None, (p, got, bt.error)
        seen += 1
    assert seen >= 5


def test_kernel_threads_end_at_ret_from_fork(dump):
    kthreadd = next(t for t in dump.kernel.tasks() if t.pid == 2)
    got = names(dump.backtrace(kthreadd))
    assert got[:2] == ["__schedule", "schedule"] and got[-1] == "ret_from_fork", got


def test_other_cpu_leaves_irq_stack(dump):
    """CPU 0 took the panic's stop IPI while busyloop_task ran in user mode:
    from do_handle_IPI on the IRQ stack through call_with_stack to __irq_usr."""
    m = sample().manifest
    pid = next(p["pid"] for p in m["processes"] if p["comm"] == "busyloop_task")
    task = next(t for t in dump.kernel.tasks() if t.pid == pid)
    bt = dump.backtrace(task)
    got = names(bt)
    assert got[0] == "do_handle_IPI" and "call_with_stack" in got, got
    assert got[-1] == "__irq_usr" and bt.user_regs is not None, got


# -- without a vmlinux -----------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PY, "-m", "kvmcore.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )


def test_without_vmlinux_one_line_error_names_the_dbg_vmlinux():
    s = sample()
    p = run_cli("ps", str(s.file("elf")))
    assert p.returncode == 4, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert "no BTF" in lines[0] and f"vmlinux-{s.manifest['kernel_release']}" in lines[0]
    assert f"linux-image-{s.manifest['kernel_release']}-dbg" in lines[0]
    p = run_cli("sym", str(s.file("elf")), "init_task")
    assert p.returncode == 4 and len(p.stderr.strip().splitlines()) == 1
    assert "System.map" in p.stderr and "KALLSYMS_ALL" in p.stderr


def test_dmesg_and_cpu_bt_with_system_map_only():
    """A System.map gives the symbols kallsyms lacks (the unwind table's bounds):
    dmesg and `bt --cpu 0` work with no vmlinux."""
    s = sample()
    p = run_cli("dmesg", str(s.file("elf")))
    assert p.returncode == 0 and s.manifest["marker"] in p.stdout
    p = run_cli("bt", str(s.file("elf")), "--system-map", str(system_map()), "--cpu", "0")
    assert p.returncode == 0, p.stderr
    assert "do_handle_IPI" in p.stdout and "call_with_stack" in p.stdout, p.stdout


# -- gdb-multiarch over kvmcore serve ------------------------------------------------


def run_gdb(commands: list[str], symbols: Path, timeout: int = 600) -> str:
    path = sample().file("elf")
    args = [
        gdb_binary("arm"),
        "-nx",
        "-batch",
        "-ex",
        "set width 0",
        "-ex",
        "set height 0",
        "-ex",
        "set remotetimeout 60",
        "-ex",
        f"target remote | {PY} -m kvmcore.gdbserver --stdio {path} {symbols}",
    ]
    for c in commands:
        args += ["-ex", c]
    args.append(str(symbols))
    p = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return p.stdout + p.stderr


def test_gdb_threads_and_bt_with_vmlinux():
    s = sample()
    out = run_gdb(["info threads", "bt 30", "p init_uts_ns.name.release"], vmlinux())
    with kvmcore.open(str(s.file("elf")), str(vmlinux())) as d:
        ntasks = len(d.kernel.tasks())
    assert len(re.findall(r"^[ *] +\d+ +Thread ", out, re.M)) == ntasks, out[-3000:]
    for p in s.manifest["processes"]:
        assert f'"{p["pid"]} {p["comm"]}"' in out, p
    panic = s.manifest["panic"]
    assert re.search(rf'^\* +\d+ +Thread \d+ "{panic["pid"]} {panic["comm"]}"', out, re.M)
    assert f'"{s.manifest["kernel_release"]}"' in out
    funcs = re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+)", out, re.M)
    assert "sysrq_handle_crash" in funcs, out[-3000:]
    i = funcs.index("sysrq_handle_crash")
    assert funcs[i - 1] == "panic" and funcs[i + 1] == "__handle_sysrq", funcs
