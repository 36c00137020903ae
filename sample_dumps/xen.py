"""Xen guest dumps: `xl dump-core` files of a Linux guest under Debian's Xen.

QEMU (TCG, `-cpu max,-smap,-smep,-svm`: under KVM Xen 4.17 dies probing CET, with
SMAP/SMEP the PV dom0 faults, with SVM processes now and then ran with a wrong FS base:
MODES) boots Debian 12's Xen hypervisor with a PV dom0 running
Debian's amd64 kernel from a busybox initramfs that carries the xl toolstack unpacked
from the apt packages (no root filesystem). dom0 (guest/xen-dom0-init.sh) creates a
PV domU running the same kernel with the samples' own guest init (guest/init.sh), and
writes two `xl dump-core` files onto a virtio disk as a tar stream:

* `xen-core-live`: the running guest, paused for the dump once its init has started
  its tasks and reported "KVMCORE ready"; the init then waits for "go" on its console
  (guest/init.sh's @BEFORE_CRASH@), which dom0 writes to the console's pty;
* `xen-core`: the guest after sysrq-c (on_crash="preserve": the domain stays, state c).

The guest's console (xenconsoled --log=guest) is the sample's serial.log: the same
KVMCORE lines as the other samples' serial logs, parsed by manifest.parse_serial.
The machine's serial console (Xen and dom0) is kept as xen-serial.log.

The HVM variant (xen-hvm, slow: `xl dump-core` of an HVM guest maps every frame up to
the 4 GiB hole one at a time) runs the same kernel and init as an HVM guest booted
directly by Debian's device model (qemu-system-xen, in dom0), with `-cpu ...,+svm` for
the machine; dom0 and the guest run on separate pCPUs (sharing them, dom0's processes
got bad FS bases and the guest triple-faulted). Its guest has its PV drivers off
(`xen_nopv`: with them it triple-faulted partway through boot in an earlier run), so it
does not report its panic to Xen: dom0 pauses it when its serial log shows the end of
the panic, and dumps it once (`xen-core`).
"""

from __future__ import annotations

import gzip
import re
import secrets
import shutil
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from . import PACKAGE_DIR, debian, initramfs
from .util import log, run

XEN_SERIES = "4.17"
HYPERVISOR_PACKAGE = f"xen-hypervisor-{XEN_SERIES}-amd64"
#: the toolstack dom0 needs (xl, xenstored, xenconsoled, xen-init-dom0, xenstore-read)
#: and the libraries they link; python, docs and the firmware images are left out
TOOLSTACK_PACKAGES = (
    f"xen-utils-{XEN_SERIES}",
    "xenstore-utils",
    "libyajl2",
    f"libxenmisc{XEN_SERIES}",
    "libxenstore4",
    "libxencall1",
    "libxenevtchn1",
    "libxenforeignmemory1",
    "libxengnttab1",
    "libxenhypfs1",
    "libxentoolcore1",
    "libxentoollog1",
    "libxendevicemodel1",
)
XEN_BIN = f"usr/lib/xen-{XEN_SERIES}/bin"
#: programs of the toolstack packages dom0 runs (paths inside the packages)
DOM0_PROGRAMS = (
    f"{XEN_BIN}/xl",
    f"{XEN_BIN}/xenstored",
    f"{XEN_BIN}/xenconsoled",
    f"{XEN_BIN}/xen-init-dom0",
    "usr/bin/xenstore-read",
)
#: dom0's modules: the toolstack's devices (/dev/xen/*, /proc/xen) and the virtio disk
DOM0_MODULES = (
    "xen_evtchn",
    "xen_gntdev",
    "xen_gntalloc",
    "xen_privcmd",
    "xenfs",
    "virtio_pci",
    "virtio_blk",
)
LIBDIR = "usr/lib/x86_64-linux-gnu"
#: glibc's pthread_cancel dlopen()s libgcc_s: xl aborts without it (no ldd names it)
HOST_DLOPENED = ("/lib/x86_64-linux-gnu/libgcc_s.so.1",)

GUEST_NAME = "kvmcore"
DOM0_CMDLINE = "console=hvc0 earlyprintk=xen panic=1"
DOM0_MEMORY_MB = 768
#: QEMU's RAM: Xen, dom0 (its ramfs holds both dumps before the tar) and the guest
MACHINE_MEMORY_MB = 1280
XEN_CMDLINE = (
    f"console=com1 com1=115200,8n1 dom0_mem={DOM0_MEMORY_MB}M,max:{DOM0_MEMORY_MB}M "
    "loglvl=all guest_loglvl=all"
)
#: guest init lines after "KVMCORE ready": wait until dom0 has dumped the running
#: guest and writes "go" on the console (init's stdin is /dev/console, hvc0)
GUEST_WAIT = """# xen: dom0 dumps the running guest, then writes "go" on its console
go=
while [ "$go" != go ]; do read -r go || sleep 1; done
echo "KVMCORE go"
"""
CRASH_TIMEOUT = 300  # from "go" to the crashed state (dom0's own bound)


@dataclass(frozen=True)
class Mode:
    """What differs between the PV and the HVM guest."""

    guest_type: str  # xl's type=
    qemu_cpu: str  # the machine's -cpu
    cmdline: str  # the guest kernel's
    files: tuple[str, ...]  # the dumps dom0 writes
    guest_log: str  # the guest's console log in dom0
    config: str  # xl config lines beyond name, kernel, ramdisk, memory, vcpus, on_*
    before_crash: str = ""  # guest init lines after "KVMCORE ready"
    packages: tuple[str, ...] = ()  # beyond the hypervisor and the toolstack
    programs: tuple[str, ...] = ()  # beyond DOM0_PROGRAMS (ELF programs: ldd'ed)
    data: tuple[str, ...] = ()  # files or directories copied from the packages as they are
    xen_cmdline: str = ""  # added to XEN_CMDLINE
    ready_timeout: int = 600  # seconds from xl create to "KVMCORE ready" (hvm: the panic)
    run_timeout: float = 1500.0  # the whole QEMU run


MODES = {
    "xen-pv": Mode(
        guest_type="pv",
        # -svm: with SVM offered, Xen loads a PV vCPU's FS/GS bases with VMLOAD, and
        # under QEMU's TCG processes of dom0 and of the guest now and then ran with a
        # wrong FS base (segfaults and general protection faults at their TLS loads)
        qemu_cpu="max,-smap,-smep,-svm",
        # nosoftlockup: the guest is paused for the live dump (20-40 s), after which the
        # soft-lockup watchdog blames busyloop_task and taints the kernel (L)
        cmdline="console=hvc0 panic=0 nosoftlockup",
        files=("xen-core", "xen-core-live"),
        guest_log=f"/var/log/xen/console/guest-{GUEST_NAME}.log",
        config="",
        before_crash=GUEST_WAIT,
    ),
    "xen-hvm": Mode(
        guest_type="hvm",
        qemu_cpu="max,-smap,-smep,+svm",
        # xen_nopv xen_platform_pci=0: with its PV-on-HVM drivers the guest triple-faulted
        # partway through boot, at a different point each time
        cmdline="console=ttyS0 panic=0 xen_nopv xen_platform_pci=0",
        files=("xen-core",),
        guest_log="/var/log/xen/console/guest-serial.log",
        config=(
            'serial = "file:/var/log/xen/console/guest-serial.log"\n'
            'vga = "none"\n'
            "nographic = 1\n"
            "vnc = 0\n"
            "xen_platform_pci = 0\n"
            # QEMU's TCG reports RDTSCP as an RDTSC exit, which Xen then fails to
            # emulate ("SVM Insn len emulation failed"): no RDTSCP (nor its kin)
            'tsc_mode = "native"\n'
            'cpuid = "host,rdtscp=0,rdpid=0,invpcid=0,umip=0"\n'
            # both vCPUs on pCPU 1, dom0's one on pCPU 0: with the PV dom0 and the HVM
            # guest sharing pCPUs, dom0's processes died of bad FS bases (segfaults on
            # their TLS loads) and the guest triple-faulted partway through boot
            'cpus = "1"\n'
        ),
        xen_cmdline="dom0_max_vcpus=1 dom0_vcpus_pin",
        packages=("qemu-system-xen", "qemu-system-data", "seabios"),
        programs=("usr/libexec/xen-qemu-system-i386",),
        data=(
            f"usr/lib/xen-{XEN_SERIES}/boot/hvmloader",
            "usr/share/seabios",
            "usr/share/qemu",
        ),
        ready_timeout=2400,
        run_timeout=4800.0,
    ),
}


def fetch_packages(cache: Path, mode: Mode) -> dict[str, tuple[debian.Package, Path]]:
    """{name: (package, extracted root)} of the hypervisor, the toolstack and the
    mode's own packages (HVM: the device model and its firmware)."""
    names = [HYPERVISOR_PACKAGE, *TOOLSTACK_PACKAGES, *mode.packages]
    pkgs = debian.candidates(names, "amd64")
    debs = debian.download_all(list(pkgs.values()), cache / "debs")
    return {n: (pkgs[n], debian.extract(debs[n], cache / "xen" / debs[n].name[:-4])) for n in names}


def hypervisor_elf(root: Path) -> Path:
    """The hypervisor as an ELF: QEMU's -kernel loads multiboot v1 ELF images only,
    and Debian ships boot/xen-<series>-amd64.gz."""
    gz = root / "boot" / f"xen-{XEN_SERIES}-amd64.gz"
    out = root / f"xen-{XEN_SERIES}-amd64.elf"
    if not out.exists():
        tmp = out.with_suffix(".tmp")
        with gzip.open(gz) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
        tmp.replace(out)
    return out


def _libraries(programs: list[Path], libdirs: list[Path]) -> dict[str, Path]:
    """{path inside dom0: file} of the shared libraries `programs` load, resolved by
    ldd with the toolstack's library directories first: those go to LIBDIR, the
    host's (libc, ld.so, zlib, ...) to their own paths."""
    env = {"LD_LIBRARY_PATH": ":".join(str(d) for d in libdirs), "PATH": "/usr/bin:/bin"}
    libs: dict[str, Path] = {}
    for prog in programs:
        for line in run(["ldd", str(prog)], env=env).splitlines():
            line = line.strip()
            if "not found" in line:
                raise RuntimeError(f"ldd {prog}: {line}")
            m = re.match(r"(\S+) => (/\S+) \(0x", line) or re.match(r"(/\S+) \(0x", line)
            if not m:
                continue  # linux-vdso
            path = Path(m[m.lastindex])
            if any(path.is_relative_to(d) for d in libdirs):
                libs[f"{LIBDIR}/{path.name}"] = path
            else:
                libs[str(path).lstrip("/")] = path
    for host in HOST_DLOPENED:
        if not Path(host).exists():
            raise RuntimeError(f"{host} not found (Debian's libgcc-s1)")
        libs[host.lstrip("/")] = Path(host)
    return libs


def guest_config(mode: Mode, memory_mb: int, vcpus: int) -> str:
    """The xl config; on_reboot preserve keeps a triple-faulted HVM guest dumpable."""
    return (
        f'name = "{GUEST_NAME}"\n'
        f'type = "{mode.guest_type}"\n'
        'kernel = "/boot/vmlinuz"\n'
        'ramdisk = "/boot/initrd.cpio.gz"\n'
        f'cmdline = "{mode.cmdline}"\n'
        f"memory = {memory_mb}\n"
        f"maxmem = {memory_mb}\n"
        f"vcpus = {vcpus}\n"
        'on_crash = "preserve"\n'
        'on_reboot = "preserve"\n'
        'on_poweroff = "preserve"\n'
    ) + mode.config


def dom0_init(mode: Mode) -> str:
    text = (PACKAGE_DIR / "guest" / "xen-dom0-init.sh").read_text()
    for key, value in (
        ("XEN_SERIES", XEN_SERIES),
        ("NAME", GUEST_NAME),
        ("MODE", mode.guest_type),
        ("GUEST_LOG", mode.guest_log),
        ("READY_TIMEOUT", str(mode.ready_timeout)),
        ("CRASH_TIMEOUT", str(CRASH_TIMEOUT)),
    ):
        text = text.replace(f"@{key}@", value)
    return text


def _find(rel: str, roots: list[Path]) -> Path:
    for r in roots:
        if (r / rel).exists():
            return r / rel
    raise RuntimeError(f"no {rel} in the packages unpacked under {roots[0].parent}")


def build_dom0_initrd(
    out: Path,
    *,
    mode: Mode,
    busybox: Path,
    moddir: Path,
    packages: list[Path],
    guest_kernel: Path,
    guest_initrd: Path,
    config: str,
) -> None:
    """dom0's initramfs: busybox, the toolstack (and the mode's programs and data) with
    their libraries, the modules, the guest's kernel, initramfs and xl config, and
    guest/xen-dom0-init.sh as /init."""
    programs = {rel: _find(rel, packages) for rel in (*DOM0_PROGRAMS, *mode.programs)}
    libdirs = sorted({p.parent for r in packages for p in r.rglob("*.so*")})
    files = dict(programs)
    files.update(_libraries(list(programs.values()), libdirs))
    for rel in mode.data:
        src = _find(rel, packages)
        if src.is_dir():
            files.update({f"{rel}/{f.relative_to(src)}": f for f in src.rglob("*") if f.is_file()})
        else:
            files[rel] = src
    files["boot/vmlinuz"] = guest_kernel
    files["boot/initrd.cpio.gz"] = guest_initrd
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = Path(tmp)
        for d in ("bin", "etc/xen", "lib/modules", "proc", "sys", "dev", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        mods = initramfs.resolve_modules(moddir, list(DOM0_MODULES))
        for m in mods:
            shutil.copy2(m, root / "lib/modules" / m.name)
        (root / "etc/modules.order").write_text("".join(m.name + "\n" for m in mods))
        for rel, src in files.items():
            dst = root / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=True)
        (root / "etc/xen/xl.conf").write_text('autoballoon = "off"\n')
        (root / "etc/xen" / f"{GUEST_NAME}.cfg").write_text(config)
        init = root / "init"
        init.write_text(dom0_init(mode))
        init.chmod(0o755)
        initramfs.write_cpio(root, out)


def qemu_cmd(mode: Mode, xen: Path, dom0_kernel: Path, dom0_initrd: Path, disk: Path) -> list[str]:
    for p in (dom0_kernel, dom0_initrd):
        if "," in str(p) or " " in str(p):  # QEMU's multiboot module list syntax
            raise RuntimeError(f"{p}: a multiboot module path may hold no comma or space")
    return [
        "qemu-system-x86_64",
        "-accel",
        "tcg",
        "-cpu",
        mode.qemu_cpu,
        "-m",
        f"{MACHINE_MEMORY_MB}M",
        "-smp",
        "2",
        "-nic",
        "none",
        "-vga",
        "none",
        "-kernel",
        str(xen),
        "-append",
        f"{XEN_CMDLINE} {mode.xen_cmdline}".strip(),
        "-initrd",
        f"{dom0_kernel} {DOM0_CMDLINE},{dom0_initrd}",
        "-drive",
        f"file={disk},format=raw,if=virtio",
    ]


def extract_tar(disk: Path, dest: Path) -> list[str]:
    """Unpack the tar stream dom0 wrote at the start of the disk; return the names."""
    names = []
    with tarfile.open(disk, "r:") as tar:
        for member in tar:
            if member.isfile():
                tar.extract(member, dest, filter="data")
                names.append(member.name.removeprefix("./"))
    return names


#: a user process killed by a fault: in the guest its ground truth is gone (a sleeper's
#: child died once), in dom0 the toolstack may be next
USER_FAULT = re.compile(r"segfault at|general protection fault|Segmentation fault")


def check_clean(guest_log: str, machine_log: str, processes: list[dict]) -> None:
    """Refuse a run whose processes faulted or whose guest did not report every task
    its init starts (3 sleepers, each with a sleep, busyloop_task, threaded_task)."""
    for where, text in (("the guest", guest_log), ("dom0", machine_log)):
        if m := USER_FAULT.search(text):
            line = text[text.rfind("\n", 0, m.start()) + 1 : text.find("\n", m.end())]
            raise RuntimeError(f"a process of {where} faulted: {line.strip()}")
    comms = sorted(p["comm"] for p in processes)
    for name, n in (("sleep", 3), ("sleeper_a", 1), ("busyloop_task", 1), ("threaded_task", 1)):
        if comms.count(name) != n:
            raise RuntimeError(f"the guest reported {comms.count(name)} {name}, not {n}: {comms}")


def _seconds(pattern: str, text: str) -> float | None:
    m = re.search(pattern + r"=([\d.]+)", text)
    return float(m[1]) if m else None


def build_xen_sample(spec, cache: Path, sdir: Path, kernel) -> dict:
    """A Xen sample (spec.kind: a key of MODES): its dumps, the guest's console log and
    the manifest."""
    from .build import base_manifest, busybox, threaded_task

    mode = MODES[spec.kind]
    a = spec.arch
    marker = "kvmcore-marker-" + secrets.token_hex(8)
    pkgs = fetch_packages(cache, mode)
    hyp_pkg, hyp_root = pkgs[HYPERVISOR_PACKAGE]
    xen = hypervisor_elf(hyp_root)
    bb = busybox(a, cache, kernel.apt)
    guest_initrd = sdir / "guest-initrd.cpio.gz"
    initramfs.build(
        guest_initrd,
        busybox=bb,
        moddir=kernel.moddir,
        modules=[],
        threaded_task=threaded_task(a, cache),
        marker=marker,
        before_crash=mode.before_crash,
    )
    config = guest_config(mode, spec.memory_mb, spec.smp)
    dom0_initrd = sdir / "tmp-dom0-initrd.cpio.gz"
    build_dom0_initrd(
        dom0_initrd,
        mode=mode,
        busybox=bb,
        moddir=kernel.moddir,
        packages=[root for n, (_, root) in pkgs.items() if n != HYPERVISOR_PACKAGE],
        guest_kernel=kernel.vmlinuz,
        guest_initrd=guest_initrd,
        config=config,
    )
    disk = sdir / "tmp-disk.img"
    with open(disk, "wb") as f:  # sparse: room for the dumps and the logs
        f.truncate((len(mode.files) * spec.memory_mb + 64) << 20)
    machine_serial = sdir / "xen-serial.log"
    secs = qemu_run(
        qemu_cmd(mode, xen, kernel.vmlinuz, dom0_initrd, disk), machine_serial, mode.run_timeout
    )
    names = extract_tar(disk, sdir)
    missing = [n for n in (*mode.files, "guest-console.log") if n not in names]
    if missing:
        raise RuntimeError(f"dom0's tar on {disk} lacks {missing} (it holds {names})")
    disk.unlink()
    dom0_initrd.unlink()
    for fmt in mode.files:
        (sdir / fmt).rename(sdir / f"vmcore.{fmt}")
    (sdir / "guest-console.log").rename(sdir / "serial.log")
    guest_log = (sdir / "serial.log").read_text(errors="replace")
    m = base_manifest(spec, kernel, mode.cmdline, guest_log)
    if m["marker"] != marker:
        raise RuntimeError(f"marker mismatch: {m['marker']} != {marker}")
    xen_log = machine_serial.read_text(errors="replace")
    check_clean(guest_log, xen_log, m["processes"])
    ver = run(["qemu-system-x86_64", "--version"]).splitlines()[0]
    vm = re.search(r"version (\S+)(?: \((.*)\))?", ver)
    m["qemu"] = {
        "binary": "qemu-system-x86_64",
        "machine": "pc",
        "cpu": mode.qemu_cpu,
        "memory_mb": MACHINE_MEMORY_MB,
        "smp": 2,
        "version": vm[1] if vm else ver,
        "package": (vm[2] or "") if vm else "",
    }
    xv = re.search(r"Xen version (\S+) \(", xen_log)
    ko = re.search(r"Kernel Offset: (0x[0-9a-f]+|disabled)", guest_log)
    m["xen"] = {
        "hypervisor_package": HYPERVISOR_PACKAGE,
        "hypervisor_version": hyp_pkg.version,
        "version": xv[1] if xv else None,
        "packages": {n: pkg.version for n, (pkg, _) in pkgs.items() if n != HYPERVISOR_PACKAGE},
        "cmdline": f"{XEN_CMDLINE} {mode.xen_cmdline}".strip(),
        "serial_log": machine_serial.name,
        "guest": {
            "name": GUEST_NAME,
            "type": mode.guest_type,
            "memory_mb": spec.memory_mb,
            "vcpus": spec.smp,
            "cmdline": mode.cmdline,
            # the panic's "Kernel Offset:" line: KASLR's offset (a PV guest: disabled, 0)
            "kernel_offset": None if ko is None else int(ko[1], 16) if ko[1] != "disabled" else 0,
            "config": config,
            "on_crash": "preserve",
        },
        "dom0": {
            "kernel_package": kernel.pkg.name,
            "kernel_version": kernel.pkg.version,
            "kernel_release": kernel.release,
            "cmdline": DOM0_CMDLINE,
            "memory_mb": DOM0_MEMORY_MB,
        },
    }
    if "xen-core-live" in mode.files:
        m["xen"]["live_dump"] = {
            "file": "xen-core-live",
            "taken_after": "KVMCORE ready",
            "guest_paused": True,
            "absent_processes": ["crasher"],
            "init_state": "S (read: waiting for dom0's go on its console)",
        }
    else:  # HVM: no crash report to Xen; dom0 paused the guest after its panic output
        m["xen"]["crash_dump"] = {"paused_after": "end Kernel panic"}
    m["build"]["cycle_seconds"] = round(secs, 1)
    m["build"]["dump_seconds"] = {
        f: _seconds(
            "dump-core live seconds" if f == "xen-core-live" else "dump-core crashed seconds",
            xen_log,
        )
        for f in mode.files
    }
    return m


def qemu_run(cmd: list[str], serial: Path, timeout: float) -> float:
    from . import qemu

    secs = qemu.run_until_exit(
        cmd,
        serial=serial,
        timeout=timeout,
        fail_patterns=("KVMXEN failed", "Panic on CPU", "Kernel panic - not syncing"),
        done_pattern="KVMXEN done",
        tail_lines=120,
    )
    log(f"Xen run took {secs:.1f}s")
    return secs
