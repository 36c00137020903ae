"""Build the samples of the table into $CACHE/samples/<ID>/."""

from __future__ import annotations

import datetime
import secrets
import shutil
import time
from pathlib import Path

from . import COMMITTED_DIR, debian, initramfs, makedumpfile, manifest, qemu
from .table import MDF_FORMATS, Arch, SampleSpec
from .util import log

QMP_FORMATS = ("elf", "kdump-zlib", "elf-paging")


def apt_for(arch: Arch, cache: Path) -> debian.Apt:
    """The host's apt, or a private configuration of the arch's suite (riscv64: trixie)."""
    if arch.suite is None:
        debian.ensure_arch(arch.debian_arch)
        return debian.HOST_APT
    apt = debian.Apt.private(arch.suite, arch.debian_arch, cache)
    apt.update()
    return apt


class Kernel:
    """A Debian kernel package, downloaded and extracted into the cache.

    The kernel is the one the linux-image-<flavour> metapackage depends on; when that
    one (or, with `with_dbg`, its -dbg package) does not download (a mirror missing
    an image), the next older versioned kernel package that does is taken."""

    def __init__(
        self, arch: Arch, cache: Path, *, with_dbg: bool = False, pkg: debian.Package | None = None
    ):
        self.arch = arch
        self.apt = apt_for(arch, cache)
        if pkg is not None:
            tries = [pkg]
        else:
            first = debian.newest_kernel(arch.flavour, arch.debian_arch, self.apt)
            tries = [first] + [
                k
                for k in debian.kernel_candidates(arch.flavour, arch.debian_arch, self.apt)
                if k != first
            ]
        errors = []
        for cand in tries:
            try:
                deb = debian.download(cand, cache / "debs", self.apt)
                self.pkg = cand
                self.dbg_dir = dbg_dir(cache, cand.name, cand.version, arch.debian_arch)
                if with_dbg:
                    fetch_dbg(self, cache)
                break
            except debian.DownloadError as e:
                log(f"{cand.spec}: {e}; trying an older kernel")
                errors.append(str(e))
        else:
            raise RuntimeError("no kernel package downloads:\n" + "\n".join(errors))
        self.root = debian.extract(deb, cache / "kernels" / deb.name[:-4])
        self.release = debian.kernel_release(self.root)
        self.vmlinuz = debian.kernel_image(self.root, self.release)
        self.moddir = debian.modules_root(self.root) / self.release
        self.dbg_dir = dbg_dir(cache, self.pkg.name, self.pkg.version, arch.debian_arch)

    def vmlinux(self) -> Path | None:
        p = self.dbg_dir / "usr/lib/debug/boot" / f"vmlinux-{self.release}"
        return p if p.exists() else None


def dbg_dir(cache: Path, package: str, version: str, debian_arch: str) -> Path:
    return cache / "dbg" / f"{package}-dbg_{version.replace(':', '%3a')}_{debian_arch}"


def fetch_dbg(kernel: Kernel, cache: Path) -> Path:
    pkg = debian.Package(kernel.pkg.name + "-dbg", kernel.pkg.version, kernel.pkg.arch)
    deb = debian.download(pkg, cache / "debs", kernel.apt)
    return debian.extract_dbg(deb, kernel.dbg_dir)


def busybox(arch: Arch, cache: Path, apt: debian.Apt = debian.HOST_APT) -> Path:
    pkg = debian.candidate("busybox-static", arch.debian_arch, apt)
    deb = debian.download(pkg, cache / "debs", apt)
    root = debian.extract(deb, cache / "busybox" / deb.name[:-4])
    for rel in ("bin/busybox", "usr/bin/busybox"):  # usr/bin in merged-/usr trixie
        if (root / rel).exists():
            return root / rel
    raise RuntimeError(f"no busybox binary in {root}")


def threaded_task(arch: Arch, cache: Path) -> Path:
    return initramfs.compile_threaded_task(
        arch.cc,
        cache / "guest" / arch.debian_arch / "threaded_task",
        arch.cc_flags,
        arch.threaded_task_src,
    )


def cmdline(spec: SampleSpec) -> str:
    parts = [f"console={spec.arch.console}", "panic=0"]
    if not spec.kaslr:
        parts.append("nokaslr")
    if spec.extra_append:
        parts.append(spec.extra_append)
    return " ".join(parts)


def cpu_of(spec: SampleSpec) -> str:
    return spec.cpu or ("qemu64" if spec.arch.debian_arch == "amd64" else "max")


def qemu_cmd(spec: SampleSpec, kernel: Kernel, initrd: Path, append: str) -> list[str]:
    a = spec.arch
    cmd = [a.qemu_binary, "-accel", "tcg"]
    if a.machine:
        cmd += ["-M", a.machine]
    cmd += ["-cpu", cpu_of(spec), "-m", f"{spec.memory_mb}M", "-smp", str(spec.smp), "-nic", "none"]
    if a.debian_arch in ("amd64", "i386"):
        cmd += ["-vga", "none"]
    cmd += list(a.qemu_extra)
    if a.vmcoreinfo_device:
        cmd += ["-device", "vmcoreinfo"]
    cmd += ["-kernel", str(kernel.vmlinuz), "-initrd", str(initrd), "-append", append]
    if a.panic_wait == "pvpanic":
        cmd += ["-device", "pvpanic", "-action", "panic=pause"]
    return cmd


def base_manifest(spec: SampleSpec, kernel: Kernel, append: str, serial_text: str) -> dict:
    g = manifest.parse_serial(serial_text)
    if not g["processes"] or not g["threads"] or not g["panic"] or not g["marker"]:
        raise RuntimeError("the guest did not report all KVMCORE lines; see the serial log")
    bid, bid_src = manifest.build_id(kernel.vmlinux(), kernel.vmlinuz)
    procs = g["processes"]
    if g["panic"]["pid"] not in {p["pid"] for p in procs}:
        procs.append({k: g["panic"][k] for k in ("pid", "ppid", "comm")})
    return {
        "schema": manifest.SCHEMA_VERSION,
        "id": spec.id,
        "arch": spec.arch.name,
        "debian_arch": spec.arch.debian_arch,
        "kernel_package": kernel.pkg.name,
        "kernel_version": kernel.pkg.version,
        "kernel_release": kernel.release,
        "build_id": bid,
        "build_id_source": bid_src,
        "uts": g["uts"],
        "qemu": {
            "binary": spec.arch.qemu_binary,
            "machine": spec.arch.machine or "pc",
            "cpu": cpu_of(spec),
            "memory_mb": spec.memory_mb,
            "smp": spec.smp,
            "version": None,
        },
        "kaslr": spec.kaslr,
        "cmdline": append,
        "kind": spec.kind,
        "panic": {
            "cpu": g["panic"]["cpu"],
            "pid": g["panic"]["pid"],
            "comm": g["panic"]["comm"],
            "trigger": "sysrq-c",
            "message": "sysrq triggered crash",
        },
        "processes": procs,
        "process_states": {
            "sleeper_*": "S (wait)",
            "sleep": "S (nanosleep)",
            "busyloop_task": "R (spin loop `while :; do :; done`, pinned to cpu 0)",
            "threaded_task": "S (pause)",
            "worker-*": "S (pause)",
            "init": "S (wait for crasher)",
            "crasher": "R (panicking, cpu 1)",
        },
        "threads": g["threads"],
        "marker": g["marker"],
        "explore": g["explore"],
        "modules": g["modules"],
        "serial_log": "serial.log",
        "files": {},
        "build": {},
    }


def build_qemu_sample(spec: SampleSpec, cache: Path, sdir: Path, kernel: Kernel) -> dict:
    a = spec.arch
    marker = "kvmcore-marker-" + secrets.token_hex(8)
    initrd = sdir / "initrd.cpio.gz"
    initramfs.build(
        initrd,
        busybox=busybox(a, cache, kernel.apt),
        moddir=kernel.moddir,
        modules=list(a.modules),
        threaded_task=threaded_task(a, cache),
        marker=marker,
        extra_tasks=spec.extra_tasks,
        crasher=spec.extra.get("crasher"),
        extra_files=spec.extra.get("files"),
    )
    append = cmdline(spec)
    need_elf = any(f == "elf" or f in MDF_FORMATS for f in spec.formats)
    dumps = {}
    if need_elf:
        dumps["elf"] = sdir / ("vmcore.elf" if "elf" in spec.formats else "tmp-qemu.elf")
    for fmt in ("kdump-zlib", "elf-paging"):
        if fmt in spec.formats:
            dumps[fmt] = sdir / f"vmcore.{fmt}"
    serial = sdir / "serial.log"
    info = qemu.run_and_dump(
        qemu_cmd(spec, kernel, initrd, append),
        workdir=sdir,
        serial=serial,
        panic_wait=a.panic_wait,
        dumps=dumps,
        timeout=120.0 + spec.extra_tasks * 0.1 + spec.memory_mb * 0.02,
    )
    mdf = [f for f in spec.formats if f in MDF_FORMATS]
    if mdf:
        fixed = sdir / "tmp-fixed.elf"
        makedumpfile.fix_qemu_elf(dumps["elf"], fixed)
        tmp = cache / "tmp"
        tmp.mkdir(exist_ok=True)
        for f in mdf:
            makedumpfile.run(f, fixed, sdir / f"vmcore.{f}", tmp)
        fixed.unlink()
    for p in sdir.glob("tmp-*"):
        p.unlink()
    if spec.extra.get("drop_initrd"):
        initrd.unlink()
    m = base_manifest(spec, kernel, append, serial.read_text(errors="replace"))
    if m["marker"] != marker:
        raise RuntimeError(f"marker mismatch: {m['marker']} != {marker}")
    if spec.extra_tasks:
        m["extra_tasks"] = spec.extra_tasks
    if "crash" in spec.extra:  # the triage corpus (corpus.py): how this guest crashed
        m["crash"] = spec.extra["crash"]
        m["panic"]["trigger"] = spec.extra["crash"]["trigger"]
        m["panic"]["message"] = spec.extra["crash"]["message"]
    m["qemu"]["version"] = info["qemu_version"]
    m["qemu"]["package"] = info["qemu_package"]
    m["build"]["panic_event"] = info["panic_event"]
    m["build"]["panic_seconds"] = info["panic_seconds"]
    m["build"]["dump_seconds"] = info["dump_seconds"]
    return m


def build_sample(
    spec: SampleSpec,
    cache: Path,
    *,
    force: bool = False,
    with_dbg: bool = False,
    kernel: Kernel | None = None,
) -> str:
    """Build one sample (or keep its cached copy). `kernel`: an already resolved
    Kernel (the triage corpus builds dozens of dumps of one kernel; resolving it
    runs apt-cache once per kernel package apt knows, minutes on a loaded host)."""
    sdir = cache / spec.cache_subdir / spec.id
    if not force and manifest.is_complete(sdir, spec.formats, spec.min_schema, spec.min_release):
        log(f"{spec.id}: cached, up to date")
        if with_dbg:
            m = manifest.load(sdir)
            arch = spec.arch
            d = dbg_dir(cache, m["kernel_package"], m["kernel_version"], arch.debian_arch)
            if not debian.dbg_complete(d):  # no vmlinux, or module debug files not yet
                pkg = debian.Package(m["kernel_package"], m["kernel_version"], arch.debian_arch)
                Kernel(arch, cache, with_dbg=True, pkg=pkg)
        return "cached"
    t0 = time.monotonic()
    log(f"{spec.id}: building")
    if sdir.exists():
        shutil.rmtree(sdir)
    sdir.mkdir(parents=True)
    if kernel is None and spec.kind.startswith("xen-"):
        # the x86_64 samples' kernel, no apt look-up of every kernel package
        from .corpus import corpus_kernel

        kernel = corpus_kernel(cache, spec.arch.debian_arch, with_dbg=with_dbg)
    kernel = kernel or Kernel(spec.arch, cache, with_dbg=with_dbg)
    if spec.kind == "kdump":
        from .kdump import build_kdump_sample

        m = build_kdump_sample(spec, cache, sdir, kernel)
    elif spec.kind.startswith("xen-"):
        from .xen import build_xen_sample

        m = build_xen_sample(spec, cache, sdir, kernel)
    else:
        m = build_qemu_sample(spec, cache, sdir, kernel)
    m["files"] = {f: manifest.file_entry(sdir, f) for f in spec.formats}
    m["build"] = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - t0, 1),
        **m["build"],
    }
    manifest.write(sdir, m)
    log(
        f"{spec.id}: done in {m['build']['seconds']}s: "
        + ", ".join(f"{k}={v['size']}" for k, v in m["files"].items())
    )
    return "built"


def commit_copy(spec: SampleSpec, cache: Path) -> Path:
    """Copy the sample's files + manifest into sample_dumps/committed/<ID>/ (for git)."""
    sdir = cache / "samples" / spec.id
    m = manifest.load(sdir)
    if not m:
        raise RuntimeError(f"{spec.id} is not built")
    dest = COMMITTED_DIR / spec.id
    dest.mkdir(parents=True, exist_ok=True)
    for entry in m["files"].values():
        if entry["size"] >= 20 << 20:
            raise RuntimeError(f"{entry['path']} is {entry['size']} bytes: too big to commit")
        shutil.copyfile(sdir / entry["path"], dest / entry["path"])
    shutil.copyfile(sdir / manifest.MANIFEST, dest / manifest.MANIFEST)
    log(f"copied {spec.id} into {dest}")
    return dest
