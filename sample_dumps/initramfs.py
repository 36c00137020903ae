"""Guest initramfs (cpio newc, gzip): busybox-static of the guest arch, the init
script, the named test processes, the threaded_task binary and a few modules."""

from __future__ import annotations

import lzma
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import PACKAGE_DIR
from .util import log

GUEST = PACKAGE_DIR / "guest"
NTHREADS = 4
SLEEPERS = ("sleeper_a", "sleeper_b", "sleeper_c")


def _module_index(moddir: Path) -> dict[str, Path]:
    """lsmod name -> module file: .ko, or .ko.xz as trixie's packages ship them."""
    index = {}
    for suffix in (".ko.xz", ".ko"):
        for p in (moddir / "kernel").rglob("*" + suffix):
            index[p.name[: -len(suffix)].replace("-", "_")] = p
    return index


def module_bytes(path: Path) -> bytes:
    """A module file's ELF bytes (an .xz one decompressed: the guest's busybox
    insmod is not relied on to do it)."""
    data = path.read_bytes()
    return lzma.decompress(data) if path.name.endswith(".xz") else data


def module_file_name(path: Path) -> str:
    """The name a module gets in the initramfs: always an uncompressed .ko."""
    return path.name.removesuffix(".xz")


def _depends(ko: Path) -> list[str]:
    m = re.search(rb"\x00depends=([^\x00]*)\x00", b"\x00" + module_bytes(ko))
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def resolve_modules(moddir: Path, names: list[str]) -> list[Path]:
    """Module files for `names` plus their dependencies, dependencies first.
    Debian's package ships no modules.dep, so the .modinfo depends= strings are read."""
    index = _module_index(moddir)
    order: list[Path] = []

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name not in index:
            raise RuntimeError(f"module {name} not found under {moddir}")
        path = index[name]
        if path in order:
            return
        for dep in _depends(path):
            visit(dep)
        if path not in order:
            order.append(path)

    for n in names:
        visit(n)
    return order


def compile_threaded_task(
    cc: str, out: Path, flags: tuple[str, ...] = (), src_name: str = "threaded_task.c"
) -> Path:
    src = GUEST / src_name
    if out.exists() and out.stat().st_mtime >= src.stat().st_mtime:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    if not shutil.which(cc):
        raise RuntimeError(
            f"C compiler {cc} not found "
            "(apt-get install the packages in sample_dumps/apt-packages.txt)"
        )
    flags = flags or ("-O2", "-static", "-pthread")
    log(f"{cc} {' '.join(flags)} {src_name}")
    subprocess.run([cc, *flags, "-o", str(out), str(src)], check=True)
    return out


def extra_tasks_script(n: int) -> str:
    """Shell lines starting n extra `sleep` processes (each a task of its own)
    before the marker; threads-max is raised since the kernel's default is
    sized from RAM (~8k tasks per GB)."""
    if n <= 0:
        return ""
    return (
        f"echo {n + 1000} > /proc/sys/kernel/threads-max\n"
        f"i=0\nwhile [ $i -lt {n} ]; do sleep 100000 & i=$((i + 1)); done\n"
        f'echo "KVMCORE extra-tasks={n} last-pid=$!"\n'
    )


def _script(dest: Path, text: str) -> None:
    dest.write_text(text)
    dest.chmod(0o755)


def build(
    out: Path,
    *,
    busybox: Path,
    moddir: Path,
    modules: list[str],
    threaded_task: Path,
    marker: str,
    kexec: str = "",
    extra_files: dict[str, Path] | None = None,
    extra_tasks: int = 0,
    crasher: str | None = None,
    before_crash: str = "",
) -> list[str]:
    """Write the initramfs to `out`; return the module load order (file names).
    extra_tasks > 0 makes init start that many more `sleep` processes (scale samples);
    `crasher` replaces guest/crasher.sh (the triage corpus crashes the kernel other ways);
    `before_crash`: shell lines init runs after "KVMCORE ready", before the crasher
    (the Xen guest waits there for dom0 to dump it alive)."""
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        root = Path(tmp)
        for d in ("bin", "etc", "lib/modules", "proc", "sys", "dev", "tmp"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(busybox, root / "bin/busybox")
        (root / "bin/sh").symlink_to("busybox")
        shutil.copy2(threaded_task, root / "bin/threaded_task")
        mods = resolve_modules(moddir, modules)
        for m in mods:
            (root / "lib/modules" / module_file_name(m)).write_bytes(module_bytes(m))
        (root / "etc/modules.order").write_text("".join(module_file_name(m) + "\n" for m in mods))
        for name in SLEEPERS:
            _script(root / "bin" / name, (GUEST / "sleeper.sh").read_text().replace("@NAME@", name))
        _script(root / "bin/busyloop_task", (GUEST / "busyloop_task.sh").read_text())
        _script(root / "bin/crasher", crasher or (GUEST / "crasher.sh").read_text())
        init = (GUEST / "init.sh").read_text()
        init = init.replace("@MARKER@", marker).replace("@NTHREADS@", str(NTHREADS))
        init = init.replace("@KEXEC@", kexec)
        init = init.replace("@EXTRA_TASKS@", extra_tasks_script(extra_tasks))
        init = init.replace("@BEFORE_CRASH@", before_crash)
        _script(root / "init", init)
        for rel, src in (extra_files or {}).items():
            dst = root / rel.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst, follow_symlinks=True)
        write_cpio(root, out)
    return [module_file_name(m) for m in mods]


def write_cpio(root: Path, out: Path) -> None:
    """The tree under `root` as a gzip'ed cpio newc archive, owned by root, in a
    stable order."""
    with open(out, "wb") as f:
        subprocess.run(
            "find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc -R 0:0 --quiet | gzip -1",
            shell=True,
            cwd=root,
            stdout=f,
            check=True,
        )
