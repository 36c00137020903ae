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


def sample_ids(
    *, arch: str | None = None, kind: str | None = None, has_format: str | None = None
) -> list[str]:
    """IDs of the default sample rows, optionally filtered: for @pytest.mark.parametrize.
    arch is the manifest arch ("x86_64", "aarch64")."""
    return [
        s.id
        for s in SAMPLES
        if s.default
        and (arch is None or s.arch.name == arch)
        and (kind is None or s.kind == kind)
        and (has_format is None or has_format in s.formats)
    ]


def sample_files(
    formats: set[str] | None = None, *, arch: str | None = None
) -> list[tuple[str, str]]:
    """(sample ID, file format) pairs of the default rows, for parametrize."""
    return [
        (s.id, f)
        for s in SAMPLES
        if s.default
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
