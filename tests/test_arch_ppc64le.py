"""The ppc64le backend on the real sample "ppc64le" (QEMU TCG, Debian 12's 6.1 kernel
panicked by sysrq-c on CPU 1), its ELF and QEMU kdump-zlib files, with the -dbg
vmlinux for types (the kernel has no BTF). See tests/s390ppc_checks.py.

crash is not run: Debian's crash 8.0.2 is built for the host's architecture
only and cannot open a ppc64le dump."""

from __future__ import annotations

import pytest
import s390ppc_checks as c

import kvmcore

SID, ARCH = "ppc64le", "ppc64le"
FORMATS = ("elf", "kdump-zlib")


@pytest.fixture(scope="module", params=FORMATS)
def opened(request, samples):
    s, vmlinux, path = c.dump_or_fail(samples, SID, request.param)
    with kvmcore.open(str(path), vmlinux=str(vmlinux)) as dump:
        yield s.manifest, dump


def test_arch_and_vmcoreinfo_from_memory(opened):
    m, dump = opened
    assert dump.arch.name == ARCH
    assert dump.vmcoreinfo.osrelease == m["kernel_release"]
    assert "in memory" in dump.mem.metadata.get("vmcoreinfo_source", "")
    assert dump.kernel.utsname["release"] == m["kernel_release"]
    assert dump.kernel.utsname["machine"] == m["uts"]["machine"]


def test_ps_matches_manifest(opened):
    m, dump = opened
    c.check_ps(dump, m)


def test_dmesg_panic_and_backtrace(opened):
    m, dump = opened
    c.check_dmesg_and_panic(dump, m)


def test_sleeping_tasks_unwind_from_switch_frames(opened):
    m, dump = opened
    c.check_sleepers(dump, m)


def test_page_tables_agree_with_linear_map(opened):
    _, dump = opened
    c.check_linear_map_pages(dump)


def test_drgn_agrees(samples):
    s, vmlinux, path = c.dump_or_fail(samples, SID, "elf")  # drgn reads no flattened kdump
    c.check_drgn(path, vmlinux, ARCH, s.manifest)


def test_gdb_threads_and_backtrace(samples):
    s, vmlinux, path = c.dump_or_fail(samples, SID, "elf")
    c.check_gdb(path, vmlinux, ARCH, s.manifest)
