"""The slow tier: kvmcore triage over the whole triage corpus (every crash kind of
sample_dumps/corpus.py, COPIES dumps each with their own KASLR offsets), built by
`python -m sample_dumps corpus` (about 10 minutes cold on 2 cores; `./dev.sh slow`)."""

from __future__ import annotations

import dataclasses
import os
from collections import defaultdict

import pytest

from kvmcore.triage import engine
from sample_dumps import cache_root
from sample_dumps.corpus import COPIES, KINDS, load_corpus

pytestmark = pytest.mark.slow
HINT = "run `python -m sample_dumps corpus` (or ./dev.sh slow) from the repo root"


@pytest.fixture(scope="module")
def corpus():
    built = {k: v for k, v in load_corpus(cache_root()).items() if k.startswith("x86_64-")}
    missing = [
        f"x86_64-{k}-{i}"
        for k in KINDS
        for i in range(1, COPIES + 1)
        if f"x86_64-{k}-{i}" not in built
    ]
    if missing:
        pytest.fail(f"corpus dumps not built: {', '.join(missing)}; {HINT}", pytrace=False)
    return built


@pytest.fixture(scope="module")
def doc(corpus, tmp_path_factory):
    db = tmp_path_factory.mktemp("db") / "t.sqlite3"
    return engine.run([str(p) for p, _ in corpus.values()], db_path=str(db), workers=2)


def test_one_bucket_per_kind(corpus, doc):
    assert not doc["errors"], doc["errors"]
    kind_of = {str(path): m["crash"]["kind"] for path, m in corpus.values()}
    buckets_of_kind = defaultdict(set)
    for b in doc["buckets"]:
        kinds = {kind_of[m["path"]] for m in b["members"]}
        assert len(kinds) == 1, (b["signature"], kinds)  # a bucket holds one kind
        buckets_of_kind[kinds.pop()].add(b["signature"]["id"])
    assert {k: len(v) for k, v in buckets_of_kind.items()} == {k: 1 for k in KINDS}
    assert len(doc["buckets"]) == len(KINDS) >= 10


def test_every_dump_once_and_kaslr_differs(corpus, doc):
    members = [m for b in doc["buckets"] for m in b["members"]]
    assert sorted(m["path"] for m in members) == sorted(str(p) for p, _ in corpus.values())
    assert len({m["key"] for m in members}) == len(members)
    offsets = defaultdict(set)
    for b in doc["buckets"]:
        for m in b["members"]:
            offsets[b["signature"]["kind"] + b["signature"]["id"]].add(m["kaslr_offset"])
    # the copies of a kind booted with their own KASLR offsets, into one bucket anyway
    assert sum(len(v) > 1 for v in offsets.values()) >= len(KINDS) - 1, offsets


def test_representatives_hold_the_kinds_function(corpus, doc):
    kind_of = {str(path): m["crash"]["kind"] for path, m in corpus.values()}
    for b in doc["buckets"]:
        crash = dataclasses.asdict(KINDS[kind_of[b["representative"]["path"]]])
        crash["kind"] = crash.pop("name")
        assert b["signature"]["kind"] == crash["signature_kind"], (crash, b["signature"])
        assert (
            crash["message"] in b["representative"]["title"]
            or crash["message"] in (b["representative"]["headline"])
        ), (crash, b["representative"]["title"])
        bt = b["representative"]["backtrace"]
        if crash["kind"] == "hung":
            # the panicking task is khungtaskd; the blocked task's frames are the signature's
            assert crash["function"] in b["signature"]["frames"]
        else:
            assert any(crash["function"] in f for f in bt), (crash["kind"], bt)
        assert b["count"] == COPIES and os.path.exists(b["representative"]["path"])


ARM64_COPIES = 2


def test_arm64_corpus_one_bucket_per_kind(samples, tmp_path):
    """The arm64 corpus (`python -m sample_dumps corpus --arch arm64 --copies 2`), with
    the -dbg package's System.map matched by release: without it, arm64's kallsyms has no
    `modules` symbol and crashmod's frames have no names."""
    from sample_dumps.corpus import UNSUPPORTED

    built = {k: v for k, v in load_corpus(cache_root()).items() if k.startswith("aarch64-")}
    kinds = [k for k in KINDS if k not in UNSUPPORTED["arm64"]]
    missing = [
        f"aarch64-{k}-{i}"
        for k in kinds
        for i in range(1, ARM64_COPIES + 1)
        if f"aarch64-{k}-{i}" not in built
    ]
    if missing:
        pytest.fail(
            f"arm64 corpus dumps not built: {', '.join(missing)}; run `python -m "
            "sample_dumps corpus --arch arm64 --copies 2`",
            pytrace=False,
        )
    # the -dbg package's System.map alone (frame-pointer unwinding, module symbols): with
    # the vmlinux, the DWARF CFI unwinder's frames below vfs_read differ between two OOM
    # dumps (security_file_free, then a bad address), splitting the OOM bucket
    system_map = samples.get_built("arm64-kaslr").system_map()
    assert system_map is not None, "no System.map: python -m sample_dumps build --with-dbg"
    maps = tmp_path / "maps"
    maps.mkdir()
    (maps / system_map.name).symlink_to(system_map)
    doc = engine.run(
        [str(p) for p, _ in built.values()],
        db_path=str(tmp_path / "a.sqlite3"),
        workers=2,
        vmlinux_dir=str(maps),
    )
    assert not doc["errors"], doc["errors"]
    kind_of = {str(path): m["crash"]["kind"] for path, m in built.values()}
    per_kind = defaultdict(list)
    for b in doc["buckets"]:
        ks = {kind_of[m["path"]] for m in b["members"]}
        assert len(ks) == 1, (b["signature"], ks)
        per_kind[ks.pop()].append(b)
    assert sorted(per_kind) == sorted(kinds)
    for kind, bs in per_kind.items():
        assert len(bs) == 1, (kind, [b["signature"] for b in bs])
        (b,) = bs
        assert b["count"] == ARM64_COPIES and b["architectures"] == ["aarch64"]
        fn = KINDS[kind].function
        if kind == "hung":
            assert fn in b["signature"]["frames"]
        else:
            assert any(fn in f for f in b["representative"]["backtrace"]), (
                kind,
                b["representative"]["backtrace"],
            )
