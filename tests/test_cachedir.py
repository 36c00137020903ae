"""One cache root, ${KVMCORE_CACHE:-~/.cache/kvmcore}, for kvmcore's index
cache and the sample builder alike."""

from __future__ import annotations

from pathlib import Path

import sample_dumps
from kvmcore import indexcache
from kvmcore.cachedir import cache_root, index_dir


def test_environment_or_home(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("KVMCORE_CACHE", raising=False)
    expected = tmp_path / "home" / ".cache" / "kvmcore"
    assert cache_root() == expected == sample_dumps.cache_root()
    monkeypatch.setenv("KVMCORE_CACHE", "")  # empty: as if unset
    assert cache_root() == expected
    monkeypatch.setenv("KVMCORE_CACHE", str(tmp_path / "c"))
    assert cache_root() == tmp_path / "c" == sample_dumps.cache_root()
    monkeypatch.setenv("KVMCORE_CACHE", "~/c2")
    assert cache_root() == tmp_path / "home" / "c2" == sample_dumps.cache_root()


def test_index_cache_lives_under_it(monkeypatch, tmp_path):
    monkeypatch.setenv("KVMCORE_CACHE", str(tmp_path))
    monkeypatch.delenv("KVMCORE_INDEX_CACHE", raising=False)
    build_id = "0123456789abcdef"
    assert index_dir(build_id) == tmp_path / "index" / build_id
    source = indexcache.source_digest(b"kernel bytes")
    indexcache.store(build_id, "names", source, b"payload")
    assert (tmp_path / "index" / build_id / "names").is_file()
    assert indexcache.load(build_id, "names", source) == b"payload"
    assert not list(Path(tmp_path).glob("index/*/*.tmp*"))
