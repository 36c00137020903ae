"""A real kdump, as distros capture it: the first kernel (crashkernel=160M) loads a
capture kernel with `kexec -p`; after sysrq-c the capture kernel copies /proc/vmcore
onto a virtio disk and powers off; the host cuts the disk image at the ELF end."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import struct
from pathlib import Path

from . import initramfs, makedumpfile, qemu
from .util import log, run

CAPTURE_APPEND = "console=ttyS0 nr_cpus=1 irqpoll reset_devices panic=0"
CAPTURE_MODULES = ["virtio_pci", "virtio_blk"]  # + deps (virtio, virtio_ring, virtio_pci_*_dev)
DISK_SLACK_MB = 64


def kexec_files() -> tuple[dict[str, Path], str]:
    """Debian's /sbin/kexec plus the shared libraries it needs (libxen*, libc, ld.so),
    keyed by their path inside the initramfs; and the kexec-tools package version."""
    kexec = shutil.which("kexec") or "/sbin/kexec"
    if not os.path.exists(kexec):
        raise RuntimeError("kexec not found: apt-get install kexec-tools")
    files = {"/sbin/kexec": Path(kexec)}
    for line in run(["ldd", kexec]).splitlines():
        m = re.search(r"(?:=>\s*)?(/\S+)\s+\(0x", line)
        if m:
            files[m[1]] = Path(m[1])
    version = run(["dpkg-query", "-W", "-f", "${Version}", "kexec-tools"]).strip()
    return files, version


def elf_end(path: Path) -> int:
    """End of the ELF data in a disk image: max(p_offset + p_filesz) over the phdrs."""
    with open(path, "rb") as f:
        eh = f.read(64)
        if eh[:4] != b"\x7fELF" or eh[4] != 2:
            raise RuntimeError(
                f"{path} does not start with an ELF64 header: the capture kernel "
                f"did not write /proc/vmcore"
            )
        (phoff,) = struct.unpack_from("<Q", eh, 32)
        phentsize, phnum = struct.unpack_from("<HH", eh, 54)
        f.seek(phoff)
        ph = f.read(phentsize * phnum)
    end = phoff + phentsize * phnum
    for i in range(phnum):
        (p_offset,) = struct.unpack_from("<Q", ph, i * phentsize + 8)
        (p_filesz,) = struct.unpack_from("<Q", ph, i * phentsize + 32)
        end = max(end, p_offset + p_filesz)
    return end


def build_kdump_sample(spec, cache: Path, sdir: Path, kernel) -> dict:
    from .build import base_manifest, busybox, cmdline, cpu_of, threaded_task

    a = spec.arch
    if a.debian_arch != "amd64":
        raise RuntimeError(
            "real kdump is only implemented for amd64 (arm64 kexec -p fails, see README)"
        )
    marker = "kvmcore-marker-" + secrets.token_hex(8)
    bb, tt = busybox(a, cache), threaded_task(a, cache)
    capture_initrd = sdir / "capture-initrd.cpio.gz"
    initramfs.build(
        capture_initrd,
        busybox=bb,
        moddir=kernel.moddir,
        modules=CAPTURE_MODULES,
        threaded_task=tt,
        marker=marker,
    )
    kfiles, kexec_version = kexec_files()
    kfiles["/boot/vmlinuz"] = kernel.vmlinuz
    kfiles["/boot/capture.cpio.gz"] = capture_initrd
    kexec_cmd = (
        f'/sbin/kexec -p /boot/vmlinuz --initrd=/boot/capture.cpio.gz --append="{CAPTURE_APPEND}" '
        '&& echo "KVMCORE kexec-loaded crash_loaded=$(cat /sys/kernel/kexec_crash_loaded)" '
        '|| echo "KVMCORE kexec-failed"'
    )
    initrd = sdir / "initrd.cpio.gz"
    initramfs.build(
        initrd,
        busybox=bb,
        moddir=kernel.moddir,
        modules=["qemu_fw_cfg"],
        threaded_task=tt,
        marker=marker,
        kexec=kexec_cmd,
        extra_files=kfiles,
    )
    disk = sdir / "tmp-disk.img"
    disk.unlink(missing_ok=True)
    with open(disk, "wb") as f:
        f.truncate((spec.memory_mb + DISK_SLACK_MB) << 20)
    append = cmdline(spec)
    cmd = [
        a.qemu_binary,
        "-accel",
        "tcg",
        "-cpu",
        cpu_of(spec),
        "-m",
        f"{spec.memory_mb}M",
        "-smp",
        str(spec.smp),
        "-nic",
        "none",
        "-vga",
        "none",
        "-device",
        "vmcoreinfo",
        "-kernel",
        str(kernel.vmlinuz),
        "-initrd",
        str(initrd),
        "-append",
        append,
        "-drive",
        f"file={disk},format=raw,if=virtio",
    ]
    serial = sdir / "serial.log"
    secs = qemu.run_until_exit(
        cmd, serial=serial, timeout=240, fail_patterns=("KVMCORE kexec-failed", "end Kernel panic")
    )
    text = serial.read_text(errors="replace")
    if "KVMCORE kexec-loaded crash_loaded=1" not in text:
        raise RuntimeError("kexec -p did not load the capture kernel\n" + qemu.serial_tail(serial))
    if not re.search(r"KVMCORE capture-done rc=0", text):
        raise RuntimeError(
            "the capture kernel did not copy /proc/vmcore\n" + qemu.serial_tail(serial)
        )
    end = elf_end(disk)
    os.truncate(disk, end)
    out = sdir / "vmcore.proc-elf"
    disk.rename(out)
    log(f"real kdump cycle took {secs:.1f}s; /proc/vmcore ELF is {end} bytes")
    tmp = cache / "tmp"
    tmp.mkdir(exist_ok=True)
    for f in spec.formats:
        if f in makedumpfile.MDF_FORMATS:
            makedumpfile.run(f, out, sdir / f"vmcore.{f}", tmp)
    m = base_manifest(spec, kernel, append, text)
    if m["marker"] != marker:
        raise RuntimeError(f"marker mismatch: {m['marker']} != {marker}")
    ver = run([a.qemu_binary, "--version"]).splitlines()[0]
    vm = re.search(r"version (\S+)(?: \((.*)\))?", ver)
    m["qemu"]["version"] = vm[1] if vm else ver
    m["qemu"]["package"] = (vm[2] or "") if vm else ""
    m["kdump"] = {
        "crashkernel": "160M",
        "capture_cmdline": CAPTURE_APPEND,
        "kexec_tools_version": kexec_version,
        "capture_modules": CAPTURE_MODULES,
        "method": "kexec -p; capture kernel dd /proc/vmcore to virtio disk; "
        "host truncates at ELF end",
    }
    m["build"]["cycle_seconds"] = round(secs, 1)
    return m
