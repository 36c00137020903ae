"""The riscv64 backend on the real sample `riscv64`: Debian trixie's 6.12 kernel
panicked under QEMU's virt machine (Sv57; no -device vmcoreinfo there, so the
dump has no VMCOREINFO note and kvmcore finds the kernel's own in memory; the
kernel has BTF and KALLSYMS_ALL, so no vmlinux is needed).

Ground truth: the manifest (what the guest printed), the -dbg package's
System.map and vmlinux file contents (read with pyelftools, not kvmcore), the
fixed layout of QEMU's virt machine (DRAM at 0x80000000) and of Linux riscv64
(Documentation/arch/riscv/vm-layout.rst: Sv57's linear map at
0xff60000000000000), and gdb-multiarch. drgn has no riscv64 stack traces or
address translation, so it is not used here.
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

SID = "riscv64"
BUILD = f"python -m sample_dumps build --only {SID} --with-dbg"
SAMPLES = load_samples()
PY = sys.executable
QEMU_VIRT_DRAM = 0x80000000
SV57_PAGE_OFFSET = 0xFF60000000000000
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


def formats() -> list:
    if SID not in SAMPLES:
        return [pytest.param(None, id="missing")]
    return SAMPLES[SID].formats


@pytest.fixture(scope="module", params=formats())
def dump(request):
    if request.param is None:
        sample()
    with kvmcore.open(str(sample().file(request.param))) as d:
        yield d


@pytest.fixture(scope="module")
def dump_vmlinux():
    with kvmcore.open(str(sample().file("elf")), str(vmlinux())) as d:
        yield d


def names(bt) -> list[str]:
    return [(f.function or "?").split("+")[0] for f in bt.frames]


# -- probe and translation ------------------------------------------------------


def test_probe_and_vmcoreinfo_from_memory(dump):
    m = sample().manifest
    assert dump.arch.name == "riscv64"
    assert dump.os == "linux"
    assert dump.kernel.release == m["kernel_release"]
    info = dump.vmcoreinfo
    assert info is not None and info.text.startswith("OSRELEASE=" + m["kernel_release"])
    assert info.number("VA_BITS") == 57  # QEMU 7.2's rv64 offers Sv57, Linux takes it
    assert dump.translator.describe()["paging"] == "Sv57"


def test_vmcoreinfo_layout_matches_the_machine(dump):
    info = dump.vmcoreinfo
    assert info.number("phys_ram_base") == QEMU_VIRT_DRAM
    assert info.number("PAGE_OFFSET") & 0xFFFFFFFFFFFFFFFF == SV57_PAGE_OFFSET


def test_symbols_match_system_map(dump):
    """kallsyms decoded from the dump = the -dbg package's System.map (no KASLR
    on Debian's riscv64), and VMCOREINFO's swapper_pg_dir is the same address."""
    smap = sample().system_map()
    if smap is None:
        pytest.fail(f"System.map missing: run `{BUILD}`", pytrace=False)
    want = {}
    for line in smap.read_text().splitlines():
        addr, _, name = line.split()
        if name in ("swapper_pg_dir", "init_task", "panic", "sysrq_handle_crash", "linux_banner"):
            want[name] = int(addr, 16)
    assert len(want) == 5
    for name, addr in want.items():
        assert dump.symbols.get(name) == addr, name
    assert dump.vmcoreinfo.symbol("swapper_pg_dir") == want["swapper_pg_dir"]


def test_linear_map_pages_through_page_tables(dump):
    """A few hundred pages of RAM: the page-table walk from swapper_pg_dir puts
    the linear-map address of each at that very page, with the same bytes."""
    rng = random.Random(13)
    ranges = [r for r in dump.mem.ranges() if r.start >= QEMU_VIRT_DRAM]
    assert ranges
    checked = 0
    for _ in range(300):
        r = rng.choice(ranges)
        pa = rng.randrange(r.start, r.end) & ~(PAGE - 1)
        va = SV57_PAGE_OFFSET + pa - QEMU_VIRT_DRAM
        t = dump.translate(va)
        assert t.pa == pa, (hex(va), hex(t.pa), hex(pa))
        try:
            phys = dump.mem.read_phys(pa, PAGE)
        except kvmcore.errors.KvmcoreError:
            continue  # a page the (filtered) dump lacks
        assert dump.read(va, PAGE) == phys, hex(va)
        checked += 1
    assert checked >= 250


def test_kernel_image_mapping_matches_vmlinux():
    """The kernel image's mapping (va_kernel_pa_offset): linux_banner's bytes
    read through the page tables are the vmlinux file's .rodata bytes."""
    from elftools.elf.elffile import ELFFile

    s = sample()
    with kvmcore.open(str(s.file("elf"))) as d:
        addr = d.symbols.get("linux_banner")
        got = d.read(addr, 64)
    with open(vmlinux(), "rb") as f:
        elf = ELFFile(f)
        for sec in elf.iter_sections():
            lo = sec["sh_addr"]
            if sec["sh_type"] == "SHT_PROGBITS" and lo <= addr < lo + sec["sh_size"]:
                f.seek(sec["sh_offset"] + addr - lo)
                want = f.read(64)
                break
        else:
            pytest.fail("linux_banner is in no PROGBITS section of the vmlinux")
    assert got == want
    assert got.startswith(b"Linux version " + s.manifest["kernel_release"].encode())


# -- the kernel model -------------------------------------------------------------


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


def check_panic_bt(bt) -> None:
    """panic <- sysrq_handle_crash <- __handle_sysrq <- write_sysrq_trigger ...
    down to the syscall's exception entry, whose pt_regs are user mode."""
    got = names(bt)
    assert "sysrq_handle_crash" in got, got
    i = got.index("sysrq_handle_crash")
    assert got[i - 1] == "panic", got
    assert got[i + 1 : i + 3] == ["__handle_sysrq", "write_sysrq_trigger"], got
    assert "do_trap_ecall_u" in got[i:], got
    assert got[-1] == "handle_exception", got
    assert bt.user_regs is not None and not bt.user_regs["status"] & (1 << 8)
    assert bt.error is None, bt.error


def test_panic_backtrace_without_vmlinux(dump):
    bt = dump.backtrace(dump.kernel.panic_task())
    check_panic_bt(bt)
    assert {f.method for f in bt.frames[1:]} == {"fp"}


def test_panic_backtrace_with_vmlinux(dump_vmlinux):
    bt = dump_vmlinux.backtrace(dump_vmlinux.kernel.panic_task())
    check_panic_bt(bt)
    assert "cfi" in {f.method for f in bt.frames}


def test_sleeping_tasks_unwind_from_switch_frame(dump):
    """Each sleeping manifest task: from thread_struct's ra/sp/s0 through
    __schedule to its syscall, ending at user pt_regs."""
    m = sample().manifest
    tasks = {t.pid: t for t in dump.kernel.tasks()}
    # riscv64 has no pause syscall: glibc's pause() is ppoll; busybox sh waits in sigsuspend
    expect = {"sleep": "do_nanosleep", "worker-0": "do_sys_poll", "sleeper_a": "sigsuspend"}
    seen = 0
    for p in m["processes"] + [
        {"pid": t["tid"], "comm": t["comm"]} for t in m["threads"] if t["comm"] == "worker-0"
    ]:
        if p["comm"] not in expect:
            continue
        bt = dump.backtrace(tasks[p["pid"]])
        got = names(bt)
        assert got[0] == "__schedule" and "schedule" in got, (p, got)
        assert any(expect[p["comm"]] in n for n in got), (p, got)
        assert got[-1] == "handle_exception" and bt.user_regs is not None, (p, got)
        seen += 1
    assert seen >= 5


def test_busyloop_cpu_crosses_irq_stack(dump):
    """CPU 0 was stopped by the panic's IPI while busyloop_task ran in user mode:
    from handle_IPI on the IRQ stack, through call_on_irq_stack, to do_irq on the
    task's stack and its user pt_regs."""
    m = sample().manifest
    pid = next(p["pid"] for p in m["processes"] if p["comm"] == "busyloop_task")
    task = next(t for t in dump.kernel.tasks() if t.pid == pid)
    bt = dump.backtrace(task)
    got = names(bt)
    assert "handle_IPI" in got[:2] or "ipi_stop" in got[:2], got
    assert "call_on_irq_stack" in got and "do_irq" in got, got
    assert got[-1] == "handle_exception" and bt.user_regs is not None, got


# -- gdb-multiarch over kvmcore serve ------------------------------------------------


def run_gdb(commands: list[str], symbols: Path, timeout: int = 600) -> str:
    path = sample().file("elf")
    args = [
        gdb_binary("riscv64"),
        "-nx",
        "-batch",
        "-ex",
        "set width 0",
        "-ex",
        "set height 0",
        "-ex",
        "set remotetimeout 60",
        "-ex",
        f"target remote | {PY} -m kvmcore.gdbserver --stdio {path}",
    ]
    for c in commands:
        args += ["-ex", c]
    args.append(str(symbols))
    p = subprocess.run(
        args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL
    )
    return p.stdout + p.stderr


def gdb_functions(out: str) -> list[str]:
    return re.findall(r"^#\d+ +(?:0x[0-9a-f]+ in )?(\w+)", out, re.M)


def check_gdb_panic_bt(out: str) -> None:
    funcs = gdb_functions(out)
    assert "sysrq_handle_crash" in funcs, out[-3000:]
    i = funcs.index("sysrq_handle_crash")
    assert funcs[i + 1] == "__handle_sysrq", funcs
    assert "panic" in funcs[:i], funcs


def test_gdb_threads_and_bt_with_vmlinux():
    s = sample()
    out = run_gdb(["info threads", "bt 30", "p init_uts_ns.name.release"], vmlinux())
    with kvmcore.open(str(s.file("elf"))) as d:
        ntasks = len(d.kernel.tasks())
    assert len(re.findall(r"^[ *] +\d+ +Thread ", out, re.M)) == ntasks, out[-3000:]
    for p in s.manifest["processes"]:
        assert f'"{p["pid"]} {p["comm"]}"' in out, p
    panic = s.manifest["panic"]
    assert re.search(rf'^\* +\d+ +Thread \d+ "{panic["pid"]} {panic["comm"]}"', out, re.M)
    assert f'"{s.manifest["kernel_release"]}"' in out
    check_gdb_panic_bt(out)


def test_gdb_bt_with_symfile(tmp_path):
    """`kvmcore symfile` alone (kallsyms + the frame-record CFI): gdb-multiarch
    unwinds the panicking task through sysrq_handle_crash and a sleeping task
    through __schedule, on its own DWARF unwinder."""
    sym = tmp_path / "vmlinux.sym"
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "symfile", str(sample().file("elf")), "-o", str(sym)],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0 and ".debug_frame" in p.stdout, p.stdout + p.stderr
    m = sample().manifest
    sleep_pid = next(p["pid"] for p in m["processes"] if p["comm"] == "sleep")
    out = run_gdb(
        [
            "bt 30",
            "echo ==SLEEP==\\n",
            f"thread find ^{sleep_pid} sleep",
            "info threads",
            "echo ==END==\\n",
        ],
        sym,
    )
    check_gdb_panic_bt(out.split("==SLEEP==")[0])
    row = re.search(rf"^[ *] +(\d+) +Thread {sleep_pid} ", out.split("==SLEEP==")[1], re.M)
    assert row, out[-3000:]
    out = run_gdb([f"thread {row[1]}", "echo ==BT==\\n", "bt 20"], sym)
    funcs = gdb_functions(out.split("==BT==")[-1])
    assert funcs[:2] == ["__schedule", "schedule"] and "do_nanosleep" in funcs, out[-3000:]


@pytest.mark.parametrize("with_vmlinux", [False, True], ids=["fp", "cfi"])
def test_every_task_unwinds_to_its_stack_end(with_vmlinux):
    """Every task's walk ends where its stack ends: user pt_regs after
    handle_exception, ret_from_fork (kernel threads), or the idle tasks' entry
    (_start_kernel, secondary_start_sbi), with no error."""
    s = sample()
    with kvmcore.open(str(s.file("elf")), str(vmlinux()) if with_vmlinux else None) as d:
        tasks = d.kernel.tasks()
        for t in tasks:
            bt = d.backtrace(t)
            last = names(bt)[-1]
            assert bt.error is None, (t.pid, t.comm, bt.error, names(bt))
            if last == "handle_exception":
                assert bt.user_regs is not None, (t.pid, names(bt))
            else:
                assert last in ("ret_from_fork", "_start_kernel", "secondary_start_sbi"), (
                    t.pid,
                    t.comm,
                    names(bt),
                )
        assert len(tasks) > 60
