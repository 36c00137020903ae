"""The Linux kernel model on the real sample dumps, with and without a vmlinux,
checked against the manifests (what the guest reported) and against drgn."""

from __future__ import annotations

import pytest
from conftest import sample_ids
from manifest_checks import assert_marker_then_panic, assert_tasks_match_manifest
from oracles import drgn_log, drgn_tasks

import kvmcore
from kvmcore.errors import SymbolError

# drgn (the oracle) cannot translate i386 addresses, and i386's kernel has no BTF, so
# its model is checked against the manifest in test_arch_i386_la57.py instead.
ELF_SAMPLES = [
    sid for arch in ("x86_64", "aarch64") for sid in sample_ids(arch=arch, has_format="elf")
]
MODES = ["vmlinux", "no-vmlinux"]


def open_sample(samples, sid: str, mode: str, fmt: str = "elf") -> kvmcore.Dump:
    s = samples.get_built(sid)
    vmlinux = str(samples.vmlinux(sid)) if mode == "vmlinux" else None
    return kvmcore.open(str(s.file(fmt)), vmlinux)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sid", ELF_SAMPLES)
def test_ps_matches_manifest_and_drgn(samples, sid, mode):
    dump = open_sample(samples, sid, mode)
    m = samples.get_built(sid).manifest
    tasks = dump.kernel.task_list
    assert_tasks_match_manifest(tasks, m)
    oracle = drgn_tasks(str(samples.get_built(sid).file("elf")), str(samples.vmlinux(sid)))
    ours = {t.pid: (t.tgid, t.ppid, t.comm) for t in tasks.tasks if not t.is_idle}
    assert ours == oracle
    # every CPU's idle task is listed too (pid 0)
    idle = [t for t in tasks.tasks if t.is_idle]
    assert {t.comm for t in idle} >= {"swapper/0"}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sid", ELF_SAMPLES)
def test_dmesg_matches_drgn(samples, sid, mode):
    dump = open_sample(samples, sid, mode)
    m = samples.get_built(sid).manifest
    log = dump.kernel.kernel_log
    assert not log.partial, log.problem
    ours = [(r.seq, r.timestamp_ns, r.text) for r in log.records]
    assert ours == drgn_log(str(samples.get_built(sid).file("elf")), str(samples.vmlinux(sid)))
    assert_marker_then_panic([r.text for r in log.records], m)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("sid", ELF_SAMPLES)
def test_panic_task_and_backtrace(samples, sid, mode):
    dump = open_sample(samples, sid, mode)
    m = samples.get_built(sid).manifest
    panic = dump.kernel.panic
    assert panic.message == m["panic"]["message"]
    assert panic.cpu == m["panic"]["cpu"]
    assert panic.task is not None
    assert (panic.task.pid, panic.task.comm) == (m["panic"]["pid"], m["panic"]["comm"])
    assert panic.task.on_cpu and panic.task.cpu == m["panic"]["cpu"]
    names = [f.function or "" for f in dump.backtrace(panic.task).frames]
    crash_at = next(i for i, n in enumerate(names) if n.startswith("sysrq_handle_crash+"))
    assert any(n.startswith("__handle_sysrq") for n in names[crash_at + 1 :]), names


@pytest.mark.parametrize("sid", ELF_SAMPLES)
def test_same_answers_without_vmlinux(samples, sid):
    with_v = open_sample(samples, sid, "vmlinux").kernel
    without = open_sample(samples, sid, "no-vmlinux").kernel
    key = lambda t: (t.pid, t.tgid, t.ppid, t.comm, t.state, t.cpu)  # noqa: E731
    assert sorted(map(key, without.tasks())) == sorted(map(key, with_v.tasks()))
    assert [r.text for r in without.log()] == [r.text for r in with_v.log()]
    if without.symbol("modules") is None:
        # arm64: kallsyms has no data symbols, so the module list head is unknown
        # without a vmlinux or System.map; the model says so instead of guessing.
        with pytest.raises(SymbolError, match="modules"):
            without.modules()
    else:
        assert [m.name for m in without.modules()] == [m.name for m in with_v.modules()]


@pytest.mark.parametrize("sid", ELF_SAMPLES)
def test_modules_are_the_ones_init_loaded(samples, sid):
    dump = open_sample(samples, sid, "vmlinux")
    names = {m.name for m in dump.kernel.modules()}
    assert "qemu_fw_cfg" in names  # the guest's init insmods it for -device vmcoreinfo
    for mod in dump.kernel.modules():
        assert mod.size > 0 and dump.is_kernel_address(mod.base)
        assert ".text" in mod.sections and mod.base <= mod.sections[".text"] < mod.base + mod.size
