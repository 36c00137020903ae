"""The ppc64le backend on the real sample "ppc64le" (QEMU TCG, Debian trixie's 6.12
kernel, pseries POWER9, radix MMU, 4K pages, panicked by sysrq-c on CPU 1), its
ELF and QEMU kdump-zlib files, each read with no vmlinux (kallsyms and BTF from
the dump) and with the -dbg vmlinux. See tests/s390ppc_checks.py.

crash is not run: Debian's crash 8.0.2 is built for the host's architecture
only and cannot open a ppc64le dump."""

from __future__ import annotations

import pytest
import s390ppc_checks as c

import kvmcore

SID, ARCH = "ppc64le", "ppc64le"
FORMATS = ("elf", "kdump-zlib")
#: with the -dbg vmlinux, or with none (the kernel's BTF and kallsyms)
SYMBOLS = ("vmlinux", "no-vmlinux")


@pytest.fixture(
    scope="module",
    params=[(f, v) for f in FORMATS for v in SYMBOLS],
    ids=[f"{f}-{v}" for f in FORMATS for v in SYMBOLS],
)
def opened(request, samples):
    fmt, symbols = request.param
    s, vmlinux, path = c.dump_or_fail(samples, SID, fmt, with_vmlinux=symbols == "vmlinux")
    with kvmcore.open(str(path), vmlinux=str(vmlinux) if vmlinux else None) as dump:
        yield s, vmlinux, path, dump


def test_arch_and_vmcoreinfo_from_memory(opened):
    s, vmlinux, _, dump = opened
    m = s.manifest
    assert dump.arch.name == ARCH
    assert dump.vmcoreinfo.osrelease == m["kernel_release"]
    assert "in memory" in dump.mem.metadata.get("vmcoreinfo_source", "")
    assert dump.kernel.utsname["release"] == m["kernel_release"]
    assert dump.kernel.utsname["machine"] == m["uts"]["machine"]
    assert dump.symbols.source == ("vmlinux" if vmlinux else "kallsyms")
    if vmlinux is None:
        assert [type(t).__name__ for t in dump.types.sources] == ["BtfTypes"]


def test_symbols_match_system_map(opened, samples):
    s, _, path, dump = opened
    smap = s.system_map()
    if smap is None:
        samples.vmlinux(SID)  # fails with the build hint
    c.check_symbols(dump, s.file("elf"), ARCH, smap)


def test_image_bytes_match_vmlinux(opened, samples):
    s, _, _, dump = opened
    c.check_image_bytes(dump, samples.vmlinux(SID), s.manifest)


def test_ps_matches_manifest(opened):
    s, _, _, dump = opened
    c.check_ps(dump, s.manifest)


def test_dmesg_panic_and_backtrace(opened):
    s, _, _, dump = opened
    c.check_dmesg_and_panic(dump, s.manifest)


def test_syscall_traces_end_at_the_entry_frame(opened):
    """The panicking task's trace and every sleeping task's reach the syscall
    entry frame (system_call_vectored_common) and end at its user-mode
    pt_regs. Regression: with both marker layouts tried on a 6.12 kernel, the
    word at 96 of system_call_exception's 64-byte frame (the entry frame's own
    marker, at its 32) made that frame look like the entry frame, and the
    trace ended one frame early."""
    s, _, _, dump = opened
    from kvmcore.arches.ppc64le.cpu import MSR_PR

    by_pid = {t.pid: t for t in dump.kernel.tasks()}
    pids = [s.manifest["panic"]["pid"]] + [
        p["pid"] for p in s.manifest["processes"] if p["comm"].startswith("sleeper")
    ]
    for pid in pids:
        bt = dump.backtrace(by_pid[pid])
        names = bt.functions()
        assert names[-1] == "system_call_vectored_common" and bt.error is None, (pid, names)
        assert names[-2] == "system_call_exception", (pid, names)
        assert bt.user_regs is not None and bt.user_regs["msr"] & MSR_PR, (pid, bt.user_regs)


def test_sleeping_tasks_unwind_from_switch_frames(opened):
    s, _, _, dump = opened
    c.check_sleepers(dump, s.manifest)


def test_page_tables_agree_with_linear_map(opened):
    _, _, _, dump = opened
    c.check_linear_map_pages(dump)


def test_drgn_agrees(samples, tmp_path):
    s, vmlinux, path = c.dump_or_fail(samples, SID, "elf")  # drgn reads no flattened kdump
    c.check_drgn(path, vmlinux, ARCH, s.manifest, tmp_path)


def test_gdb_threads_and_backtrace(samples):
    s, vmlinux, path = c.dump_or_fail(samples, SID, "elf")
    c.check_gdb(path, vmlinux, ARCH, s.manifest)
