"""Debian packages: resolve the newest kernel via apt, download debs, extract them.

Packages come from the host's apt configuration, or, for an architecture the host's
suite lacks (riscv64 exists only from trixie on), from a private apt configuration
under the cache (`Apt.private`): its own sources list naming the other suite at the
mirror the host uses, its own lists and caches, the host's sources, preferences and
dpkg state left alone."""

from __future__ import annotations

import re
import shutil
import subprocess
import time
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


@dataclass(frozen=True)
class Apt:
    """How apt is run: `options` are passed before the apt-get/apt-cache command
    (empty: the host's configuration)."""

    options: tuple[str, ...] = ()
    suite: str | None = None

    def cmd(self, tool: str, *args: str) -> list[str]:
        return [tool, *self.options, *args]

    @staticmethod
    def host() -> Apt:
        return Apt()

    @staticmethod
    def private(suite: str, debian_arch: str, cache: Path) -> Apt:
        """A private apt configuration for `suite` (main) at the host's mirror, under
        <cache>/apt/<suite>-<arch>/: sources list, lists, caches and an empty dpkg status.
        The architecture is given to apt (APT::Architectures), so dpkg's foreign
        architectures are not needed either. One configuration per (suite, arch): the
        sources line names the arch, and lists fetched for one arch are no use to another."""
        root = cache / "apt" / f"{suite}-{debian_arch}"
        for d in ("lists/partial", "cache/archives/partial", "preferences.d", "etc"):
            (root / d).mkdir(parents=True, exist_ok=True)
        uri, signed_by = host_mirror()
        options = f"arch={debian_arch}" + (f" signed-by={signed_by}" if signed_by else "")
        line = f"deb [{options}] {uri} {suite} main\n"
        sources = root / "etc" / f"{suite}.list"
        if not sources.exists() or sources.read_text() != line:
            sources.write_text(line)
        status = root / "status"
        if not status.exists():
            status.touch()
        opts = (
            f"-o Dir::Etc::SourceList={sources}",
            "-o Dir::Etc::SourceParts=-",
            f"-o Dir::Etc::PreferencesParts={root / 'preferences.d'}",
            f"-o Dir::Etc::Preferences={root / 'etc' / 'preferences'}",
            f"-o Dir::State::Lists={root / 'lists'}",
            f"-o Dir::State::status={status}",
            f"-o Dir::Cache={root / 'cache'}",
            f"-o APT::Architecture={debian_arch}",
            f"-o APT::Architectures::={debian_arch}",
            "-o APT::Sandbox::User=root",
        )
        return Apt(tuple(o for opt in opts for o in opt.split(" ", 1)), suite)

    def update(self, max_age: float = 12 * 3600) -> None:
        """apt-get update of a private configuration (skipped while its lists are fresh)."""
        if not self.options:
            return apt_update()
        lists = Path(self._opt("Dir::State::Lists"))
        stamp = lists / ".kvmcore-updated"
        if stamp.exists() and time.time() - stamp.stat().st_mtime < max_age:
            return
        log(f"apt-get update ({self.suite}, private configuration under {lists.parent})")
        p = subprocess.run(self.cmd("apt-get", "update"), capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError(
                f"apt-get update of {self.suite} failed:\n{p.stderr.strip()[-1500:]}"
            )
        stamp.touch()

    def _opt(self, key: str) -> str:
        for o in self.options:
            if o.startswith(key + "="):
                return o.split("=", 1)[1]
        raise KeyError(key)


def _deb822(text: str) -> list[dict[str, str]]:
    stanzas, cur, last = [], {}, None
    for raw in text.splitlines():
        if raw.startswith("#"):
            continue
        if not raw.strip():
            if cur:
                stanzas.append(cur)
            cur, last = {}, None
            continue
        if raw[0] in " \t" and last:
            cur[last] += "\n" + raw.strip()
            continue
        key, _, value = raw.partition(":")
        last = key.strip().lower()
        cur[last] = value.strip()
    if cur:
        stanzas.append(cur)
    return stanzas


def host_mirror() -> tuple[str, str | None]:
    """(URI, Signed-By) of the host's main Debian archive: the deb822 stanza of
    /etc/apt/sources.list.d/*.sources (else a sources.list line) whose suites hold
    no -security/-updates suite first; never a hard-coded host name."""
    found: list[tuple[int, str, str | None]] = []
    for f in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        for st in _deb822(f.read_text(errors="replace")):
            if "deb" not in st.get("types", "").split() or st.get("enabled", "yes") == "no":
                continue
            suites = st.get("suites", "").split()
            if not suites or not st.get("uris"):
                continue
            rank = 0 if any("-" not in s for s in suites) else 1
            if "security" in st["uris"]:
                rank = 2
            found.append((rank, st["uris"].split()[0], st.get("signed-by")))
    lists = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]
    for f in lists:
        if not f.exists():
            continue
        for line in f.read_text(errors="replace").splitlines():
            m = re.match(r"\s*deb\s+(\[[^]]*\]\s+)?(\S+)\s+(\S+)", line)
            if m:
                signed = re.search(r"signed-by=(\S+?)[\s\]]", m[1] or "")
                rank = 0 if "-" not in m[3] else 1
                if "security" in m[2]:
                    rank = 2
                found.append((rank, m[2], signed[1] if signed else None))
    if not found:
        raise RuntimeError("no Debian mirror found in /etc/apt/sources.list{,.d}")
    found.sort(key=lambda t: t[0])
    _, uri, signed_by = found[0]
    if signed_by and not signed_by.startswith("/"):
        signed_by = None  # an inline key block: rely on apt's trusted keys
    return uri.rstrip("/"), signed_by


HOST_APT = Apt()


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


def candidate(name: str, arch: str, apt: Apt = HOST_APT) -> Package:
    out = run(apt.cmd("apt-cache", "show", "--no-all-versions", f"{name}:{arch}"))
    for line in out.splitlines():
        if line.startswith("Version:"):
            return Package(name, line.split(":", 1)[1].strip(), arch)
    raise RuntimeError(f"apt has no candidate for {name}:{arch}")


def candidates(names: list[str], arch: str, apt: Apt = HOST_APT) -> dict[str, Package]:
    """The candidate version of each package, from one apt-cache call (each call
    loads apt's whole cache: seconds on a loaded host). An Architecture: all package
    gets arch "all" (its .deb is named so, and apt-get download takes name:all)."""
    out = run(apt.cmd("apt-cache", "show", "--no-all-versions", *(f"{n}:{arch}" for n in names)))
    found = {}
    for st in _deb822(out):
        name, version = st.get("package"), st.get("version")
        if name in names and version and name not in found:
            found[name] = Package(name, version, "all" if st.get("architecture") == "all" else arch)
    missing = [n for n in names if n not in found]
    if missing:
        raise RuntimeError(f"apt has no candidate for {', '.join(missing)} ({arch})")
    return found


def download_all(pkgs: list[Package], debs: Path, apt: Apt = HOST_APT) -> dict[str, Path]:
    """{package name: .deb}, the missing ones fetched by one apt-get download."""
    debs.mkdir(parents=True, exist_ok=True)
    missing = [p for p in pkgs if not (debs / p.deb_name).exists()]
    if missing:
        log(f"apt-get download {' '.join(p.spec for p in missing)}")
        p = subprocess.run(
            apt.cmd("apt-get", "-o", "APT::Sandbox::User=root", "download")
            + [m.spec for m in missing],
            cwd=debs,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        lost = [m for m in missing if not (debs / m.deb_name).exists()]
        if p.returncode != 0 or lost:
            raise DownloadError(
                f"apt-get download failed ({p.returncode}) for "
                f"{', '.join(m.spec for m in lost)}: {p.stderr.strip()[-600:]}"
            )
    return {p.name: debs / p.deb_name for p in pkgs}


def newest_kernel(flavour: str, arch: str, apt: Apt = HOST_APT) -> Package:
    """The kernel the linux-image-<flavour> metapackage points to (newest ABI)."""
    out = run(apt.cmd("apt-cache", "depends", f"linux-image-{flavour}:{arch}"))
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            name = line.split()[1].split(":")[0]
            return candidate(name, arch, apt)
    raise RuntimeError(f"cannot resolve linux-image-{flavour}:{arch} (run apt-get update?)\n{out}")


def kernel_candidates(flavour: str, arch: str, apt: Apt = HOST_APT) -> list[Package]:
    """Every versioned linux-image-*-<flavour> package apt knows (not -dbg, not the
    metapackage, not -unsigned), newest version first: the fallbacks when the
    metapackage's kernel cannot be downloaded."""
    out = run(apt.cmd("apt-cache", "search", "--names-only", f"^linux-image-[0-9].*-{flavour}$"))
    names = sorted({line.split(" - ")[0].strip() for line in out.splitlines() if line.strip()})
    pkgs = []
    for name in names:
        pkgs.append(candidate(name, arch, apt))
    cmp = _version_sorter(apt)
    return sorted(pkgs, key=cmp, reverse=True)


def _version_sorter(apt: Apt):
    import functools

    def compare(a: Package, b: Package) -> int:
        if a.version == b.version:
            return 0
        ok = (
            subprocess.run(["dpkg", "--compare-versions", a.version, "lt", b.version]).returncode
            == 0
        )
        return -1 if ok else 1

    return functools.cmp_to_key(compare)


def download(pkg: Package, debs: Path, apt: Apt = HOST_APT) -> Path:
    debs.mkdir(parents=True, exist_ok=True)
    path = debs / pkg.deb_name
    if path.exists():
        return path
    log(f"apt-get download {pkg.spec}" + (f" ({apt.suite})" if apt.suite else ""))
    p = subprocess.run(
        apt.cmd("apt-get", "-o", "APT::Sandbox::User=root", "download", pkg.spec),
        cwd=debs,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    if p.returncode != 0 or not path.exists():
        for partial in debs.glob(f"{pkg.name}_*.deb.*"):
            partial.unlink(missing_ok=True)
        raise DownloadError(
            f"apt-get download {pkg.spec} failed ({p.returncode}): {p.stderr.strip()[-600:]}"
        )
    return path


class DownloadError(RuntimeError):
    pass


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


#: modules the sample guests load (sample_dumps.table's Arch.modules and their
#: dependency pvpanic), whose debug .ko files extract_dbg takes from a -dbg deb
DBG_MODULES = ("pvpanic", "pvpanic_mmio", "qemu_fw_cfg")
_DBG_BOOT = re.compile(r"^(\./)?usr/lib/debug/boot/(vmlinux|System\.map)-[^/]+$")
_DBG_KO = re.compile(r"^(\./)?usr/lib/debug/(usr/)?lib/modules/[^/]+/.+\.ko$")
MODULES_STAMP = ".modules"


def dbg_complete(dest: Path, modules: tuple[str, ...] = DBG_MODULES) -> bool:
    """Whether extract_dbg has nothing left to do in `dest`."""
    stamp = dest / MODULES_STAMP
    return (dest / ".done").exists() and (
        stamp.exists() and set(modules) <= set(stamp.read_text().split())
    )


def extract_dbg(deb: Path, dest: Path, modules: tuple[str, ...] = DBG_MODULES) -> Path:
    """Extract usr/lib/debug/boot/{vmlinux,System.map}-* from a -dbg deb, and
    the debug .ko files (usr/lib/debug/lib/modules/<release>/...) of
    `modules` (names as lsmod shows them: pvpanic_mmio for pvpanic-mmio.ko).

    Idempotent: `.done` marks the vmlinux extracted, `.modules` lists the
    modules extracted (those the package ships; one it lacks is not looked for
    again). A directory made before modules were extracted gets them added in
    one pass over the deb, its vmlinux left in place."""
    stamp = dest / ".done"
    have_boot = stamp.exists()
    mod_stamp = dest / MODULES_STAMP
    done_mods = set(mod_stamp.read_text().split()) if mod_stamp.exists() else set()
    wanted = set(modules) - done_mods
    if have_boot and not wanted:
        return dest
    if not have_boot:
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        done_mods, wanted = set(), set(modules)
        mod_stamp.unlink(missing_ok=True)
    what = ["vmlinux + System.map"] if not have_boot else []
    if wanted:
        what.append("module debug files (" + ", ".join(sorted(wanted)) + ")")
    log(f"extracting {' and '.join(what)} from {deb.name}")
    found = _extract_members(deb, dest, boot=not have_boot, modules=wanted)
    if not have_boot:
        if not any(n.startswith("vmlinux-") for n in found.values()):
            raise RuntimeError(f"{deb.name} has no usr/lib/debug/boot/vmlinux-*")
        stamp.touch()
    mod_stamp.write_text("\n".join(sorted(done_mods | wanted)) + "\n")
    return dest


def _module_name(path: str) -> str:
    """lsmod's name of a .ko path: pvpanic-mmio.ko -> pvpanic_mmio."""
    return path.rsplit("/", 1)[-1][: -len(".ko")].replace("-", "_")


def _extract_members(deb: Path, dest: Path, *, boot: bool, modules: set[str]) -> dict[str, str]:
    """One streaming pass over the deb's data tar (dpkg-deb --fsys-tarfile):
    extract the boot files (when `boot`) and the .ko files of `modules`.
    Returns {member path: file name} of what was extracted."""
    import tarfile

    found: dict[str, str] = {}
    fsys = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    assert fsys.stdout is not None
    try:
        with tarfile.open(fileobj=fsys.stdout, mode="r|") as tar:
            for member in tar:
                name = member.name
                take = (boot and _DBG_BOOT.match(name)) or (
                    modules and _DBG_KO.match(name) and _module_name(name) in modules
                )
                if take and member.isfile():
                    tar.extract(member, dest, filter="data")
                    found[name] = name.rsplit("/", 1)[-1]
    finally:
        fsys.stdout.close()
        rc = fsys.wait()
    if rc != 0:
        raise RuntimeError(f"dpkg-deb --fsys-tarfile {deb} failed")
    return found


def modules_root(pkg_root: Path) -> Path:
    """lib/modules, or usr/lib/modules in merged-/usr packages (trixie)."""
    for rel in ("lib/modules", "usr/lib/modules"):
        if (pkg_root / rel).is_dir():
            return pkg_root / rel
    raise RuntimeError(f"no lib/modules or usr/lib/modules in {pkg_root}")


def kernel_release(pkg_root: Path) -> str:
    rels = [p.name for p in modules_root(pkg_root).iterdir() if p.is_dir()]
    if len(rels) != 1:
        raise RuntimeError(f"expected one kernel release in {pkg_root}, got {rels}")
    return rels[0]


def kernel_image(pkg_root: Path, release: str) -> Path:
    """boot/vmlinuz-<release>, or boot/vmlinux-<release> where the package ships an
    uncompressed image (riscv64's EFI-stub Image)."""
    for name in (f"vmlinuz-{release}", f"vmlinux-{release}"):
        if (pkg_root / "boot" / name).exists():
            return pkg_root / "boot" / name
    raise RuntimeError(f"no boot/vmlinuz-{release} or boot/vmlinux-{release} in {pkg_root}")
