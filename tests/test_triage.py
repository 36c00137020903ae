"""kvmcore triage over real dumps: the CI tier of the triage corpus (one dump of each
of `sample_dumps.corpus.CI_KINDS`, built by `./dev.sh test`) plus the committed sample
(sysrq), and bad input (an empty file, a truncated dump, a non-dump).

Engines: in process, a local Dask cluster, and a real cluster this test starts
(`dask scheduler` + two `dask worker` processes on 127.0.0.1), one of whose workers
is killed mid-run. The database: a second run over a grown directory analyzes only
the new dumps. The HTML page: opened in headless Chromium.

The whole corpus (every kind, three dumps each) is the slow tier: test_triage_corpus.py.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from kvmcore.triage import engine
from kvmcore.triage.render import render_html, render_markdown
from sample_dumps import cache_root
from sample_dumps.corpus import CI_KINDS, KINDS, load_corpus

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "kvmcore" / "schema" / "triage.schema.json"
COMMITTED = ROOT / "sample_dumps" / "committed" / "x86_64-small" / "vmcore.mdf-d31-c"
CORPUS_HINT = "run `python -m sample_dumps corpus --tier ci` from the repo root"


def ci_dumps() -> dict[str, Path]:
    """{kind: dump} of the CI tier: the corpus's x86_64-<kind>-1 and the committed sysrq
    sample."""
    corpus = load_corpus(cache_root())
    out = {"sysrq": COMMITTED}
    for kind in CI_KINDS:
        entry = corpus.get(f"x86_64-{kind}-1")
        if entry is None:
            pytest.fail(
                f"corpus dump x86_64-{kind}-1 is not built (looked in "
                f"{cache_root() / 'corpus'}); {CORPUS_HINT}",
                pytrace=False,
            )
        out[kind] = entry[0]
    return out


def populate(dest: Path, dumps: dict[str, Path], *, bad: bool = True) -> None:
    """Symlinks to the dumps (in a directory tree), and the bad inputs."""
    for i, (kind, src) in enumerate(sorted(dumps.items())):
        sub = dest / ("a" if i % 2 else "b") / kind
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"vmcore-{kind}").symlink_to(src)
    if bad:
        b = dest / "bad"
        b.mkdir(exist_ok=True)
        (b / "empty.vmcore").write_bytes(b"")
        with open(COMMITTED, "rb") as f:
            (b / "truncated.vmcore").write_bytes(f.read(2 << 20))
        (b / "notes.txt").write_text("not a crash dump\n" * 100)


BAD = {"empty.vmcore", "truncated.vmcore", "notes.txt"}


@pytest.fixture(scope="module")
def corpus_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("fleet")
    populate(d, ci_dumps())
    return d


@pytest.fixture(scope="module")
def inline_doc(corpus_dir, tmp_path_factory) -> dict:
    db = tmp_path_factory.mktemp("db") / "t.sqlite3"
    return engine.run([str(corpus_dir)], db_path=str(db), workers=0)


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is missing: pip install -e '.[test]'", pytrace=False)
    return jsonschema


def membership(doc: dict) -> dict[str, str]:
    """{dump file name: bucket signature id or 'error'}."""
    out = {}
    for b in doc["buckets"]:
        for m in b["members"]:
            for p in m["paths"]:
                out[os.path.basename(p)] = b["signature"]["id"]
    for e in doc["errors"]:
        for p in e.get("paths") or [e["path"]]:
            out[os.path.basename(p)] = "error"
    return out


def check_doc(doc: dict, dumps: dict[str, Path]) -> None:
    _jsonschema().validate(doc, json.loads(SCHEMA.read_text()))
    kinds = {}
    for b in doc["buckets"]:
        for m in b["members"]:
            kinds.setdefault(os.path.basename(m["path"]).removeprefix("vmcore-"), b)
    # one bucket per kind, every dump in exactly one bucket
    assert len(doc["buckets"]) == len(dumps), [b["signature"] for b in doc["buckets"]]
    assert sorted(kinds) == sorted(dumps)
    seen = [m["key"] for b in doc["buckets"] for m in b["members"]]
    seen += [e["key"] for e in doc["errors"]]
    assert len(seen) == len(set(seen))
    for kind, b in kinds.items():
        assert b["count"] == 1
        expected = KINDS[kind]
        assert b["signature"]["kind"] == expected.signature_kind, (kind, b["signature"])
        assert expected.message.split()[0] in b["signature"]["title"], (kind, b["signature"])
        # the representative's backtrace holds the kind's function
        assert any(expected.function in f for f in b["representative"]["backtrace"]), (
            kind,
            b["representative"]["backtrace"],
        )
        assert b["kernels"] and b["architectures"] == ["x86_64"]
        assert b["first_seen"] and b["last_seen"]
    # the bad input: error rows, not a failed run
    errs = {os.path.basename(e["path"]): e for e in doc["errors"]}
    assert set(errs) == BAD, errs
    for e in errs.values():
        assert e["error"] and e["exit_code"] in (2, 3, 4), e


def test_triage_in_process(inline_doc):
    check_doc(inline_doc, ci_dumps())
    t = inline_doc["totals"]
    assert t["dumps"] == len(ci_dumps()) + len(BAD)
    assert t["analyzed"] == t["dumps"] and t["reused"] == 0
    assert t["new_buckets"] == t["buckets"] == len(ci_dumps())


def test_identical_dumps_count_once(tmp_path):
    src = ci_dumps()["null"]
    for name in ("one", "two"):
        shutil.copyfile(src, tmp_path / f"vmcore.{name}")
    (tmp_path / "link").symlink_to(src)
    doc = engine.run([str(tmp_path)], db_path=str(tmp_path / ".db"), workers=0)
    assert doc["totals"]["files"] == 3
    assert doc["totals"]["dumps"] == 1 and doc["totals"]["duplicates"] == 2
    (b,) = doc["buckets"]
    assert b["count"] == 1 and len(b["members"][0]["paths"]) == 3


def test_local_cluster_gives_the_same_result(corpus_dir, inline_doc, tmp_path):
    doc = engine.run([str(corpus_dir)], db_path=str(tmp_path / "t.sqlite3"), workers=2)
    assert doc["engine"]["kind"] == "local" and doc["engine"]["workers"] == 2
    check_doc(doc, ci_dumps())
    assert membership(doc) == membership(inline_doc)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dask_cluster(tmp_path):
    """`dask scheduler` and two `dask worker` processes (no nanny: a killed worker
    stays dead) on 127.0.0.1; torn down after. Yields (address, [worker Popen])."""
    bindir = Path(sys.executable).parent
    dask = str(bindir / "dask")
    if not os.path.exists(dask):
        pytest.fail("the dask CLI is missing: pip install -e '.[test]'", pytrace=False)
    port = _free_port()
    addr = f"tcp://127.0.0.1:{port}"
    logs = tmp_path / "dask-logs"
    logs.mkdir()
    procs = []

    def start(name, args):
        with open(logs / f"{name}.log", "wb") as out:  # the child keeps its own copy
            p = subprocess.Popen(
                [dask, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        procs.append(p)
        return p

    try:
        start(
            "scheduler",
            [
                "scheduler",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-dashboard",
                "--no-show",
            ],
        )
        workers = [
            start(
                f"worker{i}",
                [
                    "worker",
                    addr,
                    "--nthreads",
                    "1",
                    "--no-nanny",
                    "--no-dashboard",
                    "--host",
                    "127.0.0.1",
                    "--name",
                    f"w{i}",
                ],
            )
            for i in range(2)
        ]
        from dask.distributed import Client

        with Client(addr, timeout="60s") as c:
            c.wait_for_workers(2, timeout=90)
        yield addr, workers
    finally:
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=10)


def test_dask_scheduler_and_a_killed_worker(corpus_dir, inline_doc, dask_cluster, tmp_path):
    addr, workers = dask_cluster
    doc = engine.run([str(corpus_dir)], db_path=str(tmp_path / "a.sqlite3"), scheduler=addr)
    assert doc["engine"]["kind"] == "scheduler" and doc["engine"]["workers"] == 2
    check_doc(doc, ci_dumps())
    assert membership(doc) == membership(inline_doc)

    # again, killing a worker (by its pid) that is busy when the first result arrives
    killed = []

    def on_result(result, client):
        if killed:
            return
        processing = client.processing()
        pids = client.run(os.getpid)  # {worker address: pid}
        for waddr, keys in processing.items():
            if keys:
                pid = pids[waddr]
                assert pid in {w.pid for w in workers}
                os.kill(pid, signal.SIGKILL)
                killed.append((waddr, pid, list(keys)))
                return

    doc2 = engine.run(
        [str(corpus_dir)], db_path=str(tmp_path / "b.sqlite3"), scheduler=addr, on_result=on_result
    )
    assert killed, "no worker was busy after the first result"
    assert any(w.poll() is not None for w in workers)
    assert doc2["engine"]["workers_at_end"] == 1
    check_doc(doc2, ci_dumps())
    assert membership(doc2) == membership(inline_doc)
    assert doc2["totals"]["analyzed"] == doc2["totals"]["dumps"]


def test_second_run_analyzes_only_new_dumps(tmp_path):
    dumps = ci_dumps()
    fleet, db = tmp_path / "fleet", tmp_path / "t.sqlite3"
    first = dict(list(sorted(dumps.items()))[:2])
    populate(fleet, first, bad=False)
    doc1 = engine.run([str(fleet)], db_path=str(db), workers=0)
    assert doc1["totals"]["analyzed"] == 2 and doc1["previous_run"] is None
    populate(fleet, {k: v for k, v in dumps.items() if k not in first}, bad=False)
    t0 = time.monotonic()
    doc2 = engine.run([str(fleet)], db_path=str(db), workers=0)
    assert doc2["previous_run"]["id"] == doc1["run"]
    assert doc2["totals"]["analyzed"] == len(dumps) - 2
    assert doc2["totals"]["reused"] == 2
    new = {os.path.basename(d["path"]).removeprefix("vmcore-") for d in doc2["new"]["dumps"]}
    assert new == set(dumps) - set(first)
    assert doc2["totals"]["new_buckets"] == len(dumps) - 2
    old = {b["signature"]["id"] for b in doc1["buckets"]}
    assert {b["signature"]["id"] for b in doc2["buckets"] if not b["new"]} == old
    # a third run: nothing new, nothing hashed again (paths known by size and mtime)
    doc3 = engine.run([str(fleet)], db_path=str(db), workers=0)
    assert doc3["totals"]["analyzed"] == 0 and doc3["totals"]["new_dumps"] == 0
    assert doc3["totals"]["buckets"] == len(dumps)
    # --reanalyze: everything analyzed again, nothing new
    doc4 = engine.run([str(fleet)], db_path=str(db), workers=0, reanalyze=True)
    assert doc4["totals"]["analyzed"] == len(dumps)
    assert doc4["totals"]["new_dumps"] == 0 and doc4["totals"]["new_buckets"] == 0
    assert membership(doc4) == membership(doc3)
    assert time.monotonic() - t0 < 120


def test_cli_json_markdown_and_html(corpus_dir, tmp_path):
    kv = [str(Path(sys.executable).parent / "kvmcore")]
    db = str(tmp_path / "t.sqlite3")
    page = tmp_path / "t.html"
    p = subprocess.run(
        kv
        + ["triage", str(corpus_dir), "--db", db, "--workers", "0", "--json", "--html", str(page)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    _jsonschema().validate(doc, json.loads(SCHEMA.read_text()))
    assert doc["totals"]["buckets"] == len(ci_dumps())
    assert page.exists() and "<svg" in page.read_text()
    p = subprocess.run(
        kv + ["triage", str(corpus_dir), "--db", db, "--workers", "0", "--markdown"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0, p.stderr
    assert "| # | count | kind |" in p.stdout and "## Errors" in p.stdout
    assert "0 new dumps" in p.stdout  # everything came from the database
    p = subprocess.run(
        kv + ["triage", str(tmp_path / "nothing-here"), "--db", db, "--workers", "0"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert p.returncode == 0 and "no such file" in p.stdout


def test_markdown_lists_every_bucket(inline_doc):
    md = render_markdown(inline_doc)
    for b in inline_doc["buckets"]:
        assert b["signature"]["id"] in md


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if path := shutil.which(name):
            return path
    pytest.fail(
        "chromium is missing: apt-get install chromium (sample_dumps/apt-packages.txt)",
        pytrace=False,
    )


def test_html_page_renders_in_headless_chromium(inline_doc, tmp_path):
    page = tmp_path / "triage.html"
    html = render_html(inline_doc)
    page.write_text(html)
    # self-contained: nothing fetched from anywhere
    for ref in ("http://", "https://", 'src="//'):
        assert ref not in html.replace("http://www.w3.org/2000/svg", "")
    profile = tmp_path / "profile"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=3000",
        "--dump-dom",
        page.as_uri(),
    ]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    dom = p.stdout
    # the script ran to its end (it sets this last), so the DOM is the rendered page
    assert '<p id="triage-ready" hidden="">ready</p>' in dom
    assert dom.count('class="bar"') >= 1 and 'id="histogram"' in dom
    rows = dom.split('<table id="buckets"')[1].split("</table>")[0].count("<tr")
    assert rows == 1 + len(inline_doc["buckets"])
    # no console errors (chromium logs console messages as CONSOLE lines)
    console = [line for line in p.stderr.splitlines() if "CONSOLE" in line]
    assert not [c for c in console if "Uncaught" in c or "rror" in c], console
    assert "Uncaught" not in p.stderr


def test_vmlinux_by_build_id_and_by_sidecar(samples, inline_doc, tmp_path):
    """--vmlinux-dir matches the kernel by its build id; `<dump>.vmlinux` beside a dump
    is taken first; the signature is the one kallsyms and BTF gave."""
    vmlinux = samples.vmlinux("x86_64-small")
    by_dir, by_sidecar = tmp_path / "d", tmp_path / "s"
    for d in (by_dir, by_sidecar):
        d.mkdir()
        (d / "vmcore").symlink_to(COMMITTED)
    (by_sidecar / "vmcore.vmlinux").symlink_to(vmlinux)
    expected = next(
        b["signature"]["id"] for b in inline_doc["buckets"] if b["signature"]["kind"] == "sysrq"
    )
    from kvmcore.triage.db import TriageDB

    for d, how, vdir in ((by_dir, "build-id", str(vmlinux.parent)), (by_sidecar, "sidecar", None)):
        db = tmp_path / f"{how}.sqlite3"
        doc = engine.run([str(d)], db_path=str(db), workers=0, vmlinux_dir=vdir)
        assert doc["totals"]["files"] == 1  # the sidecar is not a dump of its own
        (b,) = doc["buckets"]
        assert b["signature"]["id"] == expected
        t = TriageDB(db)
        r = t.result(b["members"][0]["key"])
        t.close()
        assert r["vmlinux_match"] == how
        assert os.path.realpath(r["vmlinux"]) == os.path.realpath(vmlinux)
