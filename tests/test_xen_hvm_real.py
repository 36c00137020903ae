"""The real Xen HVM dump (slow tier): `xl dump-core` of the xen-hvm sample,
a Debian 6.1 HVM domU under Debian's Xen 4.17 in QEMU TCG that ran the
samples' guest init and panicked (sample_dumps/xen.py; ~13 min to build, so
`./dev.sh slow` builds it). CI covers the same code with dumps rewrapped as
HVM dump-cores (tests/test_xen_hvm.py); this reads the real one.

Ground truth: the sample's manifest (what the guest printed on its console)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from manifest_checks import (
    assert_idle_task_per_cpu,
    assert_marker_then_panic,
    assert_tasks_match_manifest,
)

import kvmcore

pytestmark = pytest.mark.slow

SID = "xen-hvm"
KVMCORE = [sys.executable, "-c", "from kvmcore.cli.main import main; main()"]


@pytest.fixture(scope="module")
def sample(samples):
    return samples.get_built(SID)


@pytest.fixture(scope="module", params=["kallsyms", "vmlinux"])
def dump(request, samples, sample):
    vmlinux = samples.vmlinux(SID) if request.param == "vmlinux" else None
    with kvmcore.open(str(sample.file("xen-core")), vmlinux) as d:
        assert d.symbols.source == request.param
        yield d


def test_format_and_paging(dump):
    assert dump.format_name == "xen"
    assert dump.arch.name == "x86_64"
    assert dump.mem.facts.kind == "xen-hvm"


def test_ps_has_the_manifest_processes(dump, sample):
    m = sample.manifest
    tasks = dump.kernel.task_list
    assert_tasks_match_manifest(tasks, m)
    assert_idle_task_per_cpu(tasks, m["xen"]["guest"]["vcpus"])


def test_dmesg_has_the_marker_before_the_panic(dump, sample):
    m = sample.manifest
    assert_marker_then_panic([r.text for r in dump.kernel.log()], m)


def test_panic_task_vcpu_and_backtrace(dump, sample):
    m = sample.manifest["panic"]
    panic = dump.kernel.panic
    assert (panic.message, panic.cpu) == (m["message"], m["cpu"])
    assert (panic.task.pid, panic.task.comm) == (m["pid"], m["comm"])
    bt = dump.backtrace(panic.task)
    assert bt.frames[0].pc == dump.cpu_states[m["cpu"]].regs["rip"]  # the vCPU's own registers
    names = [f.function or "" for f in bt.frames]
    assert any(n.startswith("sysrq_handle_crash+") for n in names), names


def test_analyze_json_headline(samples, sample):
    m = sample.manifest["panic"]
    out = subprocess.run(
        [*KVMCORE, "analyze", "--json", str(sample.file("xen-core"))],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert out.returncode == 0, out.stderr
    r = json.loads(out.stdout)
    assert r["headline"]["panic_message"] == m["message"]
    assert (r["headline"]["task"]["pid"], r["headline"]["cpu"]) == (m["pid"], m["cpu"])
    assert r["dump"]["format"] == "xen"
