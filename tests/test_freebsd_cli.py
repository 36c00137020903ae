"""FreeBSD dumps through the user-facing commands: `kvmcore analyze DUMP
KERNEL.sym`, ps, dmesg, mods, sys, bt, run as a user runs them (the venv's
console script, in a subprocess).

Every dump here is SYNTHETIC (tests/freebsd_fixtures.py): no real FreeBSD
dump can be made on this machine, so the fixture writes minidumps and a full
ELF dump byte for byte as FreeBSD's minidump_machdep.c / kern_dump.c lay them
out, over kernel data built from the documented struct layouts (allproc,
threads, PCBs, msgbuf, linker_files, panicstr, version strings, a frame-pointer
stack for the dumping thread), and writes the kernel's symbols as an ELF
symbol file. The expected values are what the fixture planted, never values
read back by kvmcore.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import freebsd_fixtures as F
import jsonschema
import pytest

pytestmark = pytest.mark.fast  # generated fixtures only: the fast tier

KVMCORE = os.path.join(os.path.dirname(sys.executable), "kvmcore")
SCHEMA = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "kvmcore",
    "schema",
    "report.schema.json",
)
# (arch, dump kind, minidump version or None for a full dump, panicstr planted)
CASES = [("amd64", "mini", 3, True), ("arm64", "mini", 2, False), ("amd64", "full", None, True)]


@pytest.fixture(scope="module", params=CASES, ids=lambda c: f"{c[0]}-{c[1]}")
def case(request, tmp_path_factory):
    arch, kind, version, panicstr = request.param
    work = tmp_path_factory.mktemp(f"fbsd-{arch}-{kind}")
    m = F.amd64_machine() if arch == "amd64" else F.arm64_machine()
    F.build_kernel(m, panicstr=panicstr)
    dump = str(work / ("vmcore.mini" if kind == "mini" else "vmcore.0"))
    if kind == "mini":
        F.write_minidump(m, dump, version)
    else:
        F.write_full_dump(m, dump)
    symbols = str(work / "kernel.sym")
    F.write_kernel_symbols(m, symbols)
    return m, dump, symbols


def run(*args: str) -> subprocess.CompletedProcess:
    assert os.path.exists(KVMCORE), f"{KVMCORE} is missing: pip install -e . into the venv"
    return subprocess.run([KVMCORE, *args], capture_output=True, text=True, timeout=120)


def ok(*args: str) -> str:
    proc = run(*args)
    assert proc.returncode == 0, f"kvmcore {' '.join(args)}: {proc.returncode}\n{proc.stderr}"
    return proc.stdout


def dumping_thread(m: F.Machine) -> dict:
    return next(t for t in m.expect["threads"] if t["tid"] == F.DUMPTID)


def test_analyze_text_headline(case):
    """Synthetic FreeBSD dump: the report's headline names the panic message
    (panicstr, or msgbuf's "panic: " line when panicstr is absent), the
    dumping thread (dumptid) and its CPU; the backtrace walks the planted
    frame-pointer chain."""
    m, dump, symbols = case
    out = ok("analyze", dump, symbols, "--format", "text")
    panic = m.expect["panic"]
    assert out.splitlines()[0] == f"Kernel panic: {panic['message']}"
    assert f"task: {panic['pid']} ({panic['comm']})" in out
    assert f"cpu: {panic['cpu']}" in out
    assert f"kernel: {F.OSRELEASE}" in out
    trace = out.split("Backtrace of the panicking task:")[1].split("System:")[0]
    assert [line.split()[2].split("+")[0] for line in trace.strip().splitlines()] == m.expect[
        "backtrace"
    ]


def test_analyze_json_schema(case):
    """Synthetic FreeBSD dump: --json validates against the report schema and
    carries the planted facts (panic, thread, CPU, uts, msgbuf, KLDs)."""
    m, dump, symbols = case
    report = json.loads(ok("analyze", dump, symbols, "--json"))
    with open(SCHEMA) as f:
        jsonschema.validate(report, json.load(f))
    panic, thread = m.expect["panic"], dumping_thread(m)
    head = report["headline"]
    assert head["panic_message"] == panic["message"]
    assert head["sources"]["message"] == panic["source"]
    assert head["task"] == {
        "pid": panic["pid"],
        "comm": panic["comm"],
        "address": f"{thread['address']:#x}",
    }
    assert head["cpu"] == panic["cpu"] == thread["cpu"]
    assert head["release"] == F.OSRELEASE
    assert head["uptime_seconds"] == F.TIME_UPTIME
    assert head["crash_time"] == F.PANIC_TIME
    assert [f["function"].split("+")[0] for f in report["backtrace"]["frames"]] == m.expect[
        "backtrace"
    ]
    system = report["system"]
    uts = m.expect["uts"]
    assert (system["release"], system["nodename"], system["version"], system["machine"]) == (
        uts["release"],
        uts["nodename"],
        uts["version"],
        uts["machine"],
    )
    assert system["cpus"] == m.expect["ncpus"]
    assert report["log"]["layout"] == "msgbuf"
    assert report["log"]["lines"][-1] == m.msgbuf_text.decode().rstrip("\n").split("\n")[-1]
    assert report["dump"]["os"] == "freebsd"
    assert report["tasks"]["count"] == len(m.expect["threads"])
    assert [mod["name"] for mod in report["modules"]["list"]] == [
        e["name"] for e in m.expect["modules"] if e["id"] != 1
    ]


def test_ps_json(case):
    """Synthetic FreeBSD dump: ps lists every thread with its process id
    (p_pid), thread id (td_tid), name, CPU and struct thread address."""
    m, dump, symbols = case
    data = json.loads(ok("ps", dump, symbols, "--json"))
    assert not data["partial"]
    got = [
        (t["pid"], t["tid"], t["comm"], t["proc_comm"], t["cpu"], t["on_cpu"], t["address"])
        for t in data["tasks"]
    ]
    assert got == [
        (e["pid"], e["tid"], e["name"], e["comm"], e["cpu"], e["cpu"] != -1, f"{e['address']:#x}")
        for e in m.expect["threads"]
    ]
    # without types, td_state is unknown: a thread on a CPU runs, the others sleep
    assert [t["state"] for t in data["tasks"]] == [
        "R" if e["cpu"] != -1 else "S" for e in m.expect["threads"]
    ]
    text = ok("ps", dump, symbols)
    assert "TID" in text.splitlines()[0]
    assert any(line.startswith(">") and f" {F.DUMPTID} " in line for line in text.splitlines())


def test_dmesg_is_the_msgbuf(case):
    """Synthetic FreeBSD dump: dmesg prints msgbuf's text, one line per line,
    with no "[    0.000000]" timestamp prefix (msgbuf has no timestamps) and
    the "<pri>" prefixes taken off as dmesg(8) does."""
    m, dump, symbols = case
    out = ok("dmesg", dump, symbols)
    want = [
        line.split(">", 1)[1] if line.startswith("<") else line
        for line in m.msgbuf_text.decode().rstrip("\n").split("\n")
    ]
    assert out.rstrip("\n").split("\n") == want
    assert f"panic: {m.expect['panic']['message']}" in out
    data = json.loads(ok("dmesg", dump, symbols, "--json"))
    assert data["layout"] == "msgbuf" and data["timestamps"] is False


def test_mods_lists_klds(case):
    """Synthetic FreeBSD dump: mods lists the loaded KLDs (linker_files minus
    the kernel itself) with their load address and size."""
    m, dump, symbols = case
    data = json.loads(ok("mods", dump, symbols, "--json"))
    want = [e for e in m.expect["modules"] if e["id"] != 1]
    assert [
        (x["name"], int(x["base"], 16), x["size"], x["path"], x["refs"]) for x in data["modules"]
    ] == [(e["name"], e["address"], e["size"], e["path"], e["refs"]) for e in want]
    text = ok("mods", dump, symbols)
    for e in want:
        assert e["name"] in text and f"{e['address']:#x}" in text


def test_sys_and_bt(case):
    """Synthetic FreeBSD dump: sys shows the kernel's identity; bt --pid takes
    a process id (its thread) or a thread id."""
    m, dump, symbols = case
    out = ok("sys", dump, symbols)
    assert f"NODENAME: {F.HOSTNAME}" in out and f"RELEASE: {F.OSRELEASE}" in out
    assert f"PANIC: {m.expect['panic']['message']}" in out
    for ident in (42, F.DUMPTID):
        bt = json.loads(ok("bt", dump, symbols, "--json", "--pid", str(ident)))["tasks"]
        assert [t["tid"] for t in bt] == [F.DUMPTID]
        assert [f["function"].split("+")[0] for f in bt[0]["backtrace"]["frames"]] == m.expect[
            "backtrace"
        ]


def test_gdb_thread_ids_are_tids(case):
    """Synthetic FreeBSD dump: the gdb server numbers threads by td_tid (as
    kgdb does) and starts on the dumping thread."""
    import kvmcore
    from kvmcore.gdbserver.threads import ThreadList

    m, dump, symbols = case
    with kvmcore.open(dump, symbols) as d:
        threads = ThreadList.from_dump(d)
        assert threads.source == "tasks"
        assert sorted(t.tid for t in threads.threads) == sorted(
            e["tid"] for e in m.expect["threads"]
        )
        assert threads.current_tid == F.DUMPTID
        regs = threads.get(F.DUMPTID).registers()
        planted = dumping_thread(m)["regs"]
        pc = "rip" if m.arch == "amd64" else "x30"
        assert regs[pc] == planted[pc]


def test_broken_allproc_gives_partial_ps(tmp_path):
    """Synthetic FreeBSD minidump whose allproc list loops back to its first
    proc: ps still lists every thread read before the loop, marked partial."""
    m = F.amd64_machine()
    F.build_kernel(m)
    procs = []
    p = int.from_bytes(m.kread(m.symbols["allproc"], 8), "little")
    while p:
        procs.append(p)
        p = int.from_bytes(m.kread(p + F.PROC["p_list"], 8), "little")
    m.kwrite(procs[-1] + F.PROC["p_list"], procs[0].to_bytes(8, "little"))
    dump, symbols = str(tmp_path / "vmcore.loop"), str(tmp_path / "kernel.sym")
    F.write_minidump(m, dump, 3)
    F.write_kernel_symbols(m, symbols)
    data = json.loads(ok("ps", dump, symbols, "--json"))
    assert data["partial"] and "loops" in data["problem"]
    assert [t["tid"] for t in data["tasks"]] == [e["tid"] for e in m.expect["threads"]]


def test_both_kernels_provide_the_model():
    """LinuxKernel and FreeBSDKernel both define what kvmcore.kernel.KernelModel
    names (checked on the classes: properties there are computed on access)."""
    from kvmcore.freebsd import FreeBSDKernel
    from kvmcore.kernel import KernelModel
    from kvmcore.linux import LinuxKernel

    instance_only = {"dump", "sources"}
    names = (
        {n for n in KernelModel.__protocol_attrs__} - instance_only
        if hasattr(KernelModel, "__protocol_attrs__")
        else {n for n in vars(KernelModel) if not n.startswith("_")} - instance_only
    )
    assert names >= {"task_list", "tasks", "find_task", "panic", "kernel_log", "modules"}
    for cls in (LinuxKernel, FreeBSDKernel):
        assert not [n for n in sorted(names) if not hasattr(cls, n)], cls
