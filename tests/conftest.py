"""Shared pytest setup: repo root on sys.path, and the built sample dumps.

Other test files add their own fixtures; keep this file generic."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

from sample_dumps import cache_root  # noqa: E402
from sample_dumps.catalog import Sample, load_samples  # noqa: E402
from sample_dumps.table import SAMPLES  # noqa: E402

BUILD_HINT = "run `python -m sample_dumps build --with-dbg` from the repo root"


#: sample kinds the generic sample tests cover (sample_ids() and sample_files() with no
#: kind): Xen guest dumps ("xen-pv": xl dump-core files, one of a guest that has not
#: panicked) are listed only when their kind is asked for
GENERIC_KINDS = ("qemu", "kdump")


def _kind_matches(spec_kind: str, kind: str | None) -> bool:
    return spec_kind in GENERIC_KINDS if kind is None else spec_kind == kind


def sample_ids(
    *, arch: str | None = None, kind: str | None = None, has_format: str | None = None
) -> list[str]:
    """IDs of the default sample rows, optionally filtered: for @pytest.mark.parametrize.
    arch is the manifest arch ("x86_64", "aarch64"); with no kind, GENERIC_KINDS only."""
    return [
        s.id
        for s in SAMPLES
        if s.default
        and (arch is None or s.arch.name == arch)
        and _kind_matches(s.kind, kind)
        and (has_format is None or has_format in s.formats)
    ]


def sample_files(
    formats: set[str] | None = None, *, arch: str | None = None, kind: str | None = None
) -> list[tuple[str, str]]:
    """(sample ID, file format) pairs of the default rows, for parametrize; with no
    kind, GENERIC_KINDS only."""
    return [
        (s.id, f)
        for s in SAMPLES
        if s.default and _kind_matches(s.kind, kind)
        for f in s.formats
        if (formats is None or f in formats) and (arch is None or s.arch.name == arch)
    ]


class SampleSet(dict):
    """{id: Sample}; .get_built(id) fails the test if the sample is missing."""

    def get_built(self, sid: str) -> Sample:
        if sid not in self:
            pytest.fail(
                f"sample {sid!r} is not built (looked in {cache_root() / 'samples'}); {BUILD_HINT}",
                pytrace=False,
            )
        return self[sid]

    def vmlinux(self, sid: str) -> Path:
        s = self.get_built(sid)
        v = s.vmlinux()
        if v is None:
            pytest.fail(
                f"no -dbg vmlinux for {sid} ({s.manifest['kernel_package']}-dbg); {BUILD_HINT}",
                pytrace=False,
            )
        return v


@pytest.fixture(scope="session")
def samples() -> SampleSet:
    return SampleSet(load_samples())
