"""Debian packages: resolve the newest kernel via apt, download debs, extract them."""
from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .util import log, run


@dataclass(frozen=True)
class Package:
    name: str
    version: str
    arch: str

    @property
    def spec(self) -> str:
        return f"{self.name}:{self.arch}={self.version}"

    @property
    def deb_name(self) -> str:
        return f"{self.name}_{self.version.replace(':', '%3a')}_{self.arch}.deb"


def host_arch() -> str:
    return run(["dpkg", "--print-architecture"]).strip()


def ensure_arch(debian_arch: str) -> None:
    """dpkg --add-architecture + apt-get update when a foreign arch is not configured yet."""
    if debian_arch == host_arch():
        return
    foreign = run(["dpkg", "--print-foreign-architectures"]).split()
    if debian_arch in foreign:
        return
    log(f"dpkg --add-architecture {debian_arch} && apt-get update")
    subprocess.run(["dpkg", "--add-architecture", debian_arch], check=True)
    apt_update()


def apt_update() -> None:
    # bookworm-security's i386 index sometimes fails ("Mirror sync in progress?"):
    # apt then exits 100 but the other indexes are fine, so only warn.
    p = subprocess.run(["apt-get", "update"], capture_output=True, text=True)
    if p.returncode != 0:
        log("apt-get update reported errors (continuing):\n" + p.stderr.strip()[-800:])


def candidate(name: str, arch: str) -> Package:
    out = run(["apt-cache", "show", "--no-all-versions", f"{name}:{arch}"])
    for line in out.splitlines():
        if line.startswith("Version:"):
            return Package(name, line.split(":", 1)[1].strip(), arch)
    raise RuntimeError(f"apt has no candidate for {name}:{arch}")


def newest_kernel(flavour: str, arch: str) -> Package:
    """The kernel the linux-image-<flavour> metapackage points to (newest ABI)."""
    out = run(["apt-cache", "depends", f"linux-image-{flavour}:{arch}"])
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            name = line.split()[1].split(":")[0]
            return candidate(name, arch)
    raise RuntimeError(f"cannot resolve linux-image-{flavour}:{arch} (run apt-get update?)\n{out}")


def download(pkg: Package, debs: Path) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    path = debs / pkg.deb_name
    if path.exists():
        return path
    log(f"apt-get download {pkg.spec}")
    subprocess.run(["apt-get", "-o", "APT::Sandbox::User=root", "download", pkg.spec], cwd=debs, check=True,
                   stdout=subprocess.DEVNULL)
    if not path.exists():
        raise RuntimeError(f"apt-get download did not produce {path}")
    return path


def extract(deb: Path, dest: Path) -> Path:
    """dpkg-deb -x into dest (once; a .done stamp marks completion)."""
    stamp = dest / ".done"
    if stamp.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    log(f"dpkg-deb -x {deb.name}")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(dest)], check=True)
    stamp.touch()
    return dest


def extract_dbg(deb: Path, dest: Path) -> Path:
    """Extract only usr/lib/debug/boot/{vmlinux,System.map}-* from a -dbg deb."""
    stamp = dest / ".done"
    if stamp.exists():
        return dest
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    log(f"extracting vmlinux + System.map from {deb.name}")
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-C", str(dest), "-x", "--wildcards",
                    "*usr/lib/debug/boot/vmlinux-*", "*usr/lib/debug/boot/System.map-*"],
                   stdin=fsys.stdout, check=True)
    fsys.stdout.close()
    if fsys.wait() != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed")
    stamp.touch()
    return dest


def kernel_release(pkg_root: Path) -> str:
    rels = [p.name for p in (pkg_root / "lib" / "modules").iterdir() if p.is_dir()]
    if len(rels) != 1:
        raise RuntimeError(f"expected one kernel release in {pkg_root}, got {rels}")
    return rels[0]
