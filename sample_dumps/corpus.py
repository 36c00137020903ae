"""The triage corpus: Debian kernels crashed in many ways, several dumps of each.

Debian's kernels have no LKDTM, so `guest/crashmod/crashmod.c`, a small out-of-tree
module, is built against Debian's linux-headers for the guest's exact kernel (apt-get
download linux-headers-<release>, linux-headers-<abi>-common and linux-kbuild-<major>,
extracted into the cache; the host's gcc-12, the compiler Debian built the kernel with)
and crashes the kernel when a kind is written to its `crash` parameter. Kinds that need
no module: sysrq c, and panic_on_oom with user-space memory hogs.

Each dump is a small guest (128 MB, 2 vCPUs, `oops=panic`), one QEMU kdump-zlib file
(~15 MB), cached under $CACHE/corpus/<ID>/ with a manifest whose `crash` records the kind.
Every boot takes a fresh KASLR offset, so the copies of a kind differ in their addresses.

Tiers: `ci` (one dump of each of 4 kinds, what `./dev.sh test` builds) and `full` (every
kind, COPIES dumps each: the slow tier, `python -m sample_dumps corpus`).
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from . import PACKAGE_DIR, debian, manifest
from .table import ARCHES, SampleSpec
from .util import log

CRASHMOD_SRC = PACKAGE_DIR / "guest" / "crashmod"


@dataclass(frozen=True)
class Kind:
    name: str  # the corpus kind (manifest crash.kind)
    trigger: str  # "module:<param value>", "sysrq-c" or "oom"
    sysctls: tuple[tuple[str, str], ...] = ()
    function: str = ""  # a function the crashing (or, for a hung task, the blocked) task's
    #                     backtrace holds
    signature_kind: str = ""  # the failure class kvmcore.triage's signature gives it
    message: str = ""  # the panic's log message (start of it)


KINDS: dict[str, Kind] = {
    k.name: k
    for k in [
        Kind("sysrq", "sysrq-c", (), "sysrq_handle_crash", "sysrq", "sysrq triggered crash"),
        Kind(
            "null",
            "module:null",
            (),
            "crashmod_null",
            "oops",
            "BUG: kernel NULL pointer dereference",
        ),
        Kind("bug", "module:bug", (), "crashmod_bug", "bug", "kernel BUG at"),
        Kind(
            "warn",
            "module:warn",
            (("kernel/panic_on_warn", "1"),),
            "crashmod_warn",
            "warning",
            "WARNING: CPU:",
        ),
        Kind("list", "module:list", (), "crashmod_list", "bug", "list_add corruption"),
        Kind(
            "softlockup",
            "module:softlockup",
            (("kernel/watchdog_thresh", "1"), ("kernel/softlockup_panic", "1")),
            "crashmod_softlockup",
            "soft_lockup",
            "watchdog: BUG: soft lockup",
        ),
        Kind(
            "hung",
            "module:hung",
            (("kernel/hung_task_panic", "1"), ("kernel/hung_task_timeout_secs", "2")),
            "crashmod_hung",
            "hung_task",
            "INFO: task",
        ),
        Kind("divide", "module:divide", (), "crashmod_divide", "oops", "divide error"),
        Kind(
            "stack",
            "module:stack",
            (),
            "crashmod_stack",
            "panic",
            "stack-protector: Kernel stack is corrupted",
        ),
        Kind("panic", "module:panic", (), "crashmod_panic", "panic", "crashmod: explicit panic"),
        Kind("gpf", "module:gpf", (), "crashmod_gpf", "oops", "general protection fault"),
        Kind(
            "overflow",
            "module:overflow",
            (),
            "crashmod_recurse",
            "oops",
            "BUG: TASK stack guard page was hit",
        ),
        Kind("oom", "oom", (("vm/panic_on_oom", "1"),), "out_of_memory", "oom", "Out of memory"),
    ]
}

CI_KINDS = ("null", "bug", "warn", "panic")
COPIES = 3
MEMORY_MB = 128


def crasher_script(kind: Kind) -> str:
    lines = [
        "#!/bin/sh",
        f"# triage corpus crasher: {kind.name} ({kind.trigger})",
        'echo "KVMCORE panicker pid=$$ ppid=$PPID cpu=1 comm=crasher"',
        f'echo "KVMCORE crash kind={kind.name} trigger={kind.trigger}"',
    ]
    lines += [f"echo {v} > /proc/sys/{k}" for k, v in kind.sysctls]
    lines.append("sleep 1")  # let the console drain (see crasher.sh)
    if kind.trigger == "sysrq-c":
        lines.append("echo c > /proc/sysrq-trigger")
    elif kind.trigger == "oom":
        # three hogs of 60 MB each (each passes the overcommit heuristic alone): dd reads
        # /dev/zero into its buffer, faulting in anonymous pages, until the OOM killer
        # runs, which panic_on_oom turns into a panic
        lines.append("for i in 1 2 3 4; do dd if=/dev/zero of=/dev/null bs=60M count=100 & done")
        lines.append("wait")
    else:
        lines.append("insmod /lib/crashmod.ko || echo KVMCORE insmod-failed crashmod")
        value = kind.trigger.split(":", 1)[1]
        lines.append(f"echo {value} > /sys/module/crashmod/parameters/crash")
    return "\n".join(lines) + "\n"


def headers_tree(kernel, cache: Path) -> Path:
    """Debian's linux-headers for `kernel` (a build.Kernel) extracted under
    $CACHE/headers/<release>/, its Makefile pointed at the extracted -common tree."""
    release = kernel.release  # 6.1.0-57-amd64
    abi, _, flavour = release.rpartition("-")  # 6.1.0-57, amd64
    major = ".".join(release.split(".")[:2])  # 6.1
    dest = cache / "headers" / release
    tree = dest / "usr/src" / f"linux-headers-{release}"
    if (dest / ".done").exists():
        return tree
    arch = kernel.arch.debian_arch
    host = debian.host_arch()
    pkgs = [
        debian.Package(f"linux-headers-{release}", kernel.pkg.version, arch),
        debian.Package(f"linux-headers-{abi}-common", kernel.pkg.version, "all"),
        # kbuild's host tools (fixdep, modpost) run here: the host's architecture
        debian.Package(f"linux-kbuild-{major}", kernel.pkg.version, host),
    ]
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for pkg in pkgs:
        deb = debian.download(pkg, cache / "debs", kernel.apt)
        subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    mk = tree / "Makefile"
    mk.write_text(mk.read_text().replace("/usr/src/", f"{dest}/usr/src/"))
    (dest / ".done").touch()
    log(f"linux-headers for {release} in {dest}")
    return tree


def build_module(kernel, cache: Path) -> Path:
    """crashmod.ko for `kernel`, built once per kernel release (rebuilt when the
    source is newer)."""
    out_dir = cache / "corpus" / ".module" / kernel.release
    ko = out_dir / "crashmod.ko"
    src = CRASHMOD_SRC / "crashmod.c"
    if ko.exists() and ko.stat().st_mtime >= src.stat().st_mtime:
        return ko
    tree = headers_tree(kernel, cache)
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    for f in ("crashmod.c", "Kbuild"):
        shutil.copy2(CRASHMOD_SRC / f, out_dir / f)
    cmd = ["make", "-C", str(tree), f"M={out_dir}", "modules"]
    if kernel.arch.debian_arch != debian.host_arch():
        cmd.insert(1, f"CROSS_COMPILE={kernel.arch.cc.removesuffix('gcc')}")
    log(" ".join(cmd))
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0 or not ko.exists():
        raise RuntimeError(
            f"building crashmod.ko failed ({p.returncode}):\n{p.stdout[-1500:]}\n{p.stderr[-1500:]}"
        )
    return ko


def spec_for(kind: Kind, copy: int, module: Path | None, arch: str = "amd64") -> SampleSpec:
    a = ARCHES[arch]
    crash = {
        "kind": kind.name,
        "trigger": kind.trigger,
        "function": kind.function,
        "signature_kind": kind.signature_kind,
        "message": kind.message,
        "sysctls": {k: v for k, v in kind.sysctls},
    }
    extra = {"crasher": crasher_script(kind), "crash": crash, "drop_initrd": True}
    if module is not None:
        extra["files"] = {"lib/crashmod.ko": module}
    return SampleSpec(
        f"{a.name}-{kind.name}-{copy}",
        a,
        ("kdump-zlib",),
        memory_mb=MEMORY_MB,
        extra_append="oops=panic",
        default=False,
        cache_subdir="corpus",
        notes=f"triage corpus: {kind.name}",
        extra=extra,
    )


def corpus_kernel(cache: Path, arch: str = "amd64", *, with_dbg: bool = False):
    """The kernel of the built x86_64 samples when there are any (no apt look-ups),
    else the one the flavour's metapackage names (also the Xen sample's guest kernel)."""
    from .build import Kernel

    a = ARCHES[arch]
    for sid in ("x86_64-small", "x86_64-kaslr", "arm64-kaslr"):
        m = manifest.load(cache / "samples" / sid)
        if m and m.get("debian_arch") == a.debian_arch:
            pkg = debian.Package(m["kernel_package"], m["kernel_version"], a.debian_arch)
            try:
                return Kernel(a, cache, pkg=pkg, with_dbg=with_dbg)
            except RuntimeError as e:
                log(f"{pkg.spec}: {e}; resolving the newest kernel")
    pkg = debian.newest_kernel(a.flavour, a.debian_arch)
    return Kernel(a, cache, pkg=pkg, with_dbg=with_dbg)


#: kinds an architecture cannot produce: arm64 has no divide-by-zero trap (udiv gives 0)
UNSUPPORTED = {"arm64": {"divide"}}


def plan(
    tier: str, kinds: list[str] | None = None, copies: int = COPIES, arch: str = "amd64"
) -> list[tuple[Kind, int]]:
    names = kinds or (list(CI_KINDS) if tier == "ci" else list(KINDS))
    names = [k for k in names if k not in UNSUPPORTED.get(arch, set())]
    n = 1 if tier == "ci" else copies
    return [(KINDS[k], i) for k in names for i in range(1, n + 1)]


def corpus_dir(cache: Path) -> Path:
    return cache / "corpus"


def load_corpus(cache: Path) -> dict[str, tuple[Path, dict]]:
    """{id: (dump path, manifest)} of the built corpus dumps."""
    out = {}
    for mf in sorted(corpus_dir(cache).glob("*/manifest.json")):
        m = manifest.load(mf.parent)
        if m and "crash" in m and "kdump-zlib" in m.get("files", {}):
            out[m["id"]] = (mf.parent / m["files"]["kdump-zlib"]["path"], m)
    return out


def build_corpus(
    cache: Path,
    tier: str = "full",
    kinds: list[str] | None = None,
    copies: int = COPIES,
    force: bool = False,
    arch: str = "amd64",
) -> list[str]:
    """Build (or keep the cached) corpus dumps of the tier; returns the failed IDs."""
    from .build import build_sample

    todo = plan(tier, kinds, copies, arch)
    unknown = [k for k in (kinds or []) if k not in KINDS]
    if unknown:
        raise ValueError(f"unknown crash kinds {unknown}; known: {', '.join(KINDS)}")
    t0 = time.monotonic()
    kernel = corpus_kernel(cache, arch)
    module = None
    if any(k.trigger.startswith("module:") for k, _ in todo):
        module = build_module(kernel, cache)
    failed = []
    for kind, copy in todo:
        spec = spec_for(kind, copy, module if kind.trigger.startswith("module:") else None, arch)
        try:
            build_sample(spec, cache, force=force, kernel=kernel)
        except Exception as e:  # report and go on with the others
            log(f"{spec.id}: FAILED: {e}")
            failed.append(spec.id)
    log(
        f"corpus ({tier}): {len(todo) - len(failed)}/{len(todo)} dumps in "
        f"{time.monotonic() - t0:.0f}s under {corpus_dir(cache)}"
    )
    return failed
