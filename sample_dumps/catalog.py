"""Catalog of built samples: load_samples(cache=None) -> {id: Sample}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import cache_root


@dataclass
class Sample:
    id: str
    dir: Path
    manifest: dict
    cache: Path

    def file(self, fmt: str) -> Path:
        """Path of the dump in format `fmt` (a key of manifest['files'])."""
        try:
            return self.dir / self.manifest["files"][fmt]["path"]
        except KeyError:
            raise KeyError(
                f"sample {self.id} has no file {fmt!r}; it has {sorted(self.manifest['files'])}"
            ) from None

    @property
    def formats(self) -> list[str]:
        return list(self.manifest["files"])

    def _dbg_boot(self) -> Path:
        m = self.manifest
        version = m["kernel_version"].replace(":", "%3a")
        name = f"{m['kernel_package']}-dbg_{version}_{m['debian_arch']}"
        return self.cache / "dbg" / name / "usr/lib/debug/boot"

    def vmlinux(self) -> Path | None:
        """The -dbg package's vmlinux (DWARF), if fetched with --with-dbg."""
        p = self._dbg_boot() / f"vmlinux-{self.manifest['kernel_release']}"
        return p if p.exists() else None

    def module_debug_dir(self) -> Path | None:
        """The -dbg package's module debug files (usr/lib/debug/lib/modules/<release>),
        if fetched with --with-dbg (build.py extracts those of the guests' modules)."""
        root = self._dbg_boot().parent
        release = self.manifest["kernel_release"]
        for rel in ("lib/modules", "usr/lib/modules"):
            p = root / rel / release
            if p.is_dir():
                return p
        return None

    def system_map(self) -> Path | None:
        p = self._dbg_boot() / f"System.map-{self.manifest['kernel_release']}"
        return p if p.exists() else None


def load_samples(cache: Path | str | None = None) -> dict[str, Sample]:
    """The built samples of this checkout's table (sample_dumps/table.py). A
    cache shared with other checkouts may hold samples this one does not
    know (an architecture added on a branch): those are left out."""
    from .table import BY_ID

    cache = Path(cache) if cache else cache_root()
    out = {}
    for mf in sorted((cache / "samples").glob("*/manifest.json")):
        try:
            m = json.loads(mf.read_text())
        except ValueError:
            continue
        if m.get("id") in BY_ID:
            out[m["id"]] = Sample(m["id"], mf.parent, m, cache)
    return out
