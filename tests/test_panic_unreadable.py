"""A dump whose panicking task cannot be read (makedumpfile -d 31 can drop
task_struct slab pages): the pages holding that task_struct are taken out of
a real dump, in the reader only. The headline then names the task from the
panic's log line (and says so), the panic CPU's backtrace comes from its saved
registers, and `bt --cpu N` works for any CPU, as crash's `bt -c` does. The
pid, comm and CPU come from the sample's manifest."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from patching import excluded_dump

import kvmcore
import kvmcore.commands
from kvmcore.commands import BT, PS
from kvmcore.gdbserver.target import DumpTarget
from kvmcore.report import build_report

# the QEMU ELF dump (its log line: "CPU: 1 PID: 115 Comm: crasher Not tainted")
# and the real kdump ("... Comm: crasher Kdump: loaded Not tainted ...")
SCHEMA = json.loads(
    (Path(__file__).resolve().parent.parent / "kvmcore/schema/report.schema.json").read_text()
)
CASES = [("x86_64-kaslr", "elf"), ("x86_64-kdump", "proc-elf")]


def unreadable_panic_task(samples, sid: str, fmt: str) -> tuple[kvmcore.Dump, dict, int]:
    sample = samples.get_built(sid)
    panic = sample.manifest["panic"]
    with kvmcore.open(str(sample.file(fmt))) as whole:
        task = whole.kernel.find_task(panic["pid"])
        assert task is not None and task.comm == panic["comm"]
        size = whole.types.sizeof("struct task_struct")
    dump = excluded_dump(samples, [(task.address, size)], sid, fmt)
    return dump, panic, task.address


@pytest.fixture(scope="module", params=CASES, ids=[s for s, _ in CASES])
def case(request, samples):
    dump, panic, address = unreadable_panic_task(samples, *request.param)
    yield dump, panic, address
    dump.close()


def test_the_task_is_gone_from_the_model(case):
    dump, panic, address = case
    assert dump.kernel.find_task(panic["pid"]) is None
    assert dump.kernel.panic.task is None
    # ps lists what could be read, and says where the walk stopped
    ps = PS.data(dump)
    assert ps["partial"] and f"{address:#x}" in ps["problem"]
    assert panic["pid"] not in {t["pid"] for t in ps["tasks"]}
    assert 0 not in {t["pid"] for t in ps["tasks"] if not t["idle"]}  # no zero-filled stand-in
    assert PS.run(dump).splitlines()[-1].startswith("(partial: ")


def test_headline_names_the_task_from_the_log(case):
    dump, panic, address = case
    report = build_report(dump)
    jsonschema.validate(report, SCHEMA)
    head = report["headline"]
    assert head["cpu"] == panic["cpu"] and "kernel log" in head["sources"]["task"]
    assert head["task"] == {
        "pid": panic["pid"],
        "comm": panic["comm"],
        "source": "log",
        "address": f"{address:#x}",
    }
    bt = report["backtrace"]
    assert bt["available"] and "cannot be read" in bt["warning"]
    names = [f["function"].split("+")[0] for f in bt["frames"] if f["function"]]
    assert "sysrq_handle_crash" in names
    text = kvmcore.commands.ANALYZE.run(dump)
    assert f"{panic['pid']} ({panic['comm']}), from the kernel log" in text
    assert "sysrq_handle_crash+" in text and "backtrace unavailable" not in text


def _trace(text: str) -> list[str]:
    return [line.split()[2].split("+")[0] for line in text.splitlines() if line.startswith(" #")]


def test_bt_of_the_panic_cpu(case):
    dump, panic, address = case
    default = BT.run(dump)
    by_cpu = BT.run(dump, cpu=panic["cpu"])
    assert default == by_cpu
    head = by_cpu.splitlines()[0]
    assert head.startswith(f"PID: {panic['pid']}  TASK: {address:#x}  CPU: {panic['cpu']}  ")
    assert f'"{panic["comm"]}"' in head and "(from the kernel log)" in head
    assert "sysrq_handle_crash" in _trace(by_cpu)
    # gdb's monitor takes the same argument
    assert DumpTarget(dump).monitor(f"bt --cpu {panic['cpu']}").rstrip("\n") == by_cpu


def test_bt_of_another_cpu(case, samples):
    dump, panic, _ = case
    other = 1 - panic["cpu"]  # the samples are 2-vCPU guests
    data = BT.data(dump, cpu=other)
    (entry,) = data["tasks"]
    assert entry["cpu"] == other and entry["backtrace"]["available"]
    # the task running there is readable: bt --cpu names it as bt --pid does
    ran = dump.kernel.running_task(other)
    assert ran is not None and entry["pid"] == ran.pid
    assert BT.run(dump, cpu=other).splitlines()[0] == BT.run(dump, pid=ran.pid).splitlines()[0]


def test_bt_cpu_on_an_intact_dump(samples):
    sample = samples.get_built("x86_64-kaslr")
    panic = sample.manifest["panic"]
    with kvmcore.open(str(sample.file("elf"))) as dump:
        assert BT.run(dump, cpu=panic["cpu"]) == BT.run(dump)
        assert BT.parse(["--cpu", "1"]) == {"cpu": 1} and BT.parse(["-c", "0"]) == {"cpu": 0}
        with pytest.raises(kvmcore.errors.KvmcoreError, match="no registers of CPU 7"):
            BT.data(dump, cpu=7)
