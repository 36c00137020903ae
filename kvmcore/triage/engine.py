"""The triage run: find the dumps, hash them, analyze what the database lacks
(in this process, on a local Dask cluster or on a running one), group the results
by signature.

Engines (``run(..., scheduler=, workers=)``):

* ``workers=0``: in this process, one dump after the other (no Dask needed);
* default: a local Dask cluster, one worker process per core (``workers=N`` for N);
* ``scheduler="tcp://HOST:PORT"``: a running Dask cluster; its workers read the
  dumps by the paths given here, so they must see the same file system, and must
  have kvmcore installed.

Workers send back only :func:`.analyze.analyze_dump`'s compact result. A worker that
dies mid-run loses nothing: the scheduler gives its tasks to another worker (Dask
retries the tasks of lost workers up to ``distributed.scheduler.allowed-failures``
times), the analysis is idempotent, and results are kept by content key, so each dump
comes out once.
"""

from __future__ import annotations

import contextlib
import datetime
import fnmatch
import hashlib
import os
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

from .. import __version__
from ..errors import KvmcoreError
from .analyze import VmlinuxIndex, analyze_dump, index_vmlinux_dir
from .db import TriageDB
from .hashing import full_hash, quick_hash

SCHEMA_VERSION = 1
DEFAULT_EXCLUDE = ("*.vmlinux", "*.json", "*.log", "*.cpio.gz", "*.sock", ".*")

Progress = Callable[[str, int, int], None]  # (stage, done, total)


def discover(
    paths: Iterable[str], include: Iterable[str] = (), exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> tuple[list[str], list[dict[str, Any]]]:
    """Regular files under `paths` (files and directories, recursively, symlinks
    followed), absolute, sorted; and an error row for each path that does not exist."""
    inc, exc = list(include), list(exclude)
    files: set[str] = set()
    missing: list[dict[str, Any]] = []

    def wanted(name: str) -> bool:
        if any(fnmatch.fnmatch(name, p) for p in exc):
            return False
        return not inc or any(fnmatch.fnmatch(name, p) for p in inc)

    for p in paths:
        ap = os.path.abspath(p)
        if os.path.isdir(ap):
            for root, dirs, names in os.walk(ap, followlinks=True):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for n in names:
                    full = os.path.join(root, n)
                    if wanted(n) and os.path.isfile(full):
                        files.add(full)
        elif os.path.isfile(ap):
            files.add(ap)  # named explicitly: taken whatever its name
        else:
            missing.append(
                {
                    "key": f"missing:{ap}",
                    "path": ap,
                    "ok": False,
                    "error": "no such file or directory",
                    "exit_code": 6,
                }
            )
    return sorted(files), missing


def resolve_keys(
    files: list[str], db: TriageDB
) -> tuple[dict[str, str], dict[str, str], list[dict[str, Any]]]:
    """{path: content key}, {path: how it was hashed} and error rows for files that
    cannot be read. See hashing.py for the policy."""
    keys: dict[str, str] = {}
    how: dict[str, str] = {}
    errors: list[dict[str, Any]] = []
    quick: dict[str, str] = {}
    stats: dict[str, os.stat_result] = {}
    for f in files:
        try:
            st = os.stat(f)
            stats[f] = st
            known = db.known_path(f, st.st_size, st.st_mtime_ns)
            if known:
                keys[f], how[f] = known, "database"
                continue
            quick[f] = quick_hash(f)
        except OSError as exc:
            errors.append(
                {
                    "key": f"unreadable:{f}",
                    "path": f,
                    "ok": False,
                    "error": f"cannot read: {exc.strerror or exc}",
                    "exit_code": 7,
                }
            )
    groups: dict[str, list[str]] = defaultdict(list)
    for f, q in quick.items():
        groups[q].append(f)
    for q, members in groups.items():
        seen = [(p, k) for p, k in db.paths_of_key_prefix(q) if p not in members]
        if len(members) == 1 and not seen:
            keys[members[0]], how[members[0]] = q, "quick"
            continue
        # a collision: the full sha256 decides (the database's quick-keyed dump too,
        # when its file is still there; if it is gone the quick hash is trusted)
        db_full: dict[str, str] = {}
        for p, k in seen:
            if k.startswith("sha256:"):
                db_full[k] = k
            elif os.path.isfile(p):
                with contextlib.suppress(OSError):
                    db_full[full_hash(p)] = k
            else:
                db_full[f"gone:{k}"] = k
        for f in members:
            try:
                fh = full_hash(f)
            except OSError as exc:
                errors.append(
                    {
                        "key": f"unreadable:{f}",
                        "path": f,
                        "ok": False,
                        "error": f"cannot read: {exc.strerror or exc}",
                        "exit_code": 7,
                    }
                )
                continue
            if fh in db_full:
                keys[f] = db_full[fh]
            elif not any(k.startswith("sha256:") or os.path.isfile(p) for p, k in seen) and seen:
                keys[f] = seen[0][1]  # the other file is gone: trust the quick hash
            else:
                keys[f] = fh
            how[f] = "full"
    for f, k in keys.items():
        st = stats[f]
        db.remember_path(f, k, st.st_size, st.st_mtime_ns)
    db.commit()
    return keys, how, errors


def _dask_key(key: str) -> str:
    return "kvmcore-triage-" + hashlib.sha1(key.encode()).hexdigest()


def analyze_all(
    todo: list[tuple[str, str]],
    *,
    index: VmlinuxIndex | None,
    scheduler: str | None,
    workers: int | None,
    progress: Progress | None = None,
    on_result: Callable[[dict[str, Any], Any], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """Analyze [(path, key)]; {key: result} and a description of the engine.
    `on_result(result, client)` is called as each result arrives (client: the Dask
    client, or None in process)."""
    results: dict[str, dict[str, Any]] = {}
    total = len(todo)
    note = progress or (lambda *_: None)
    if workers == 0 and scheduler is None:
        engine: dict[str, Any] = {"kind": "inline", "workers": 0}
        for i, (path, key) in enumerate(todo):
            r = analyze_dump(path, key, index)
            results[key] = r
            note("analyzing", i + 1, total)
            if on_result:
                on_result(r, None)
        return results, engine
    if not todo:
        return results, {
            "kind": "scheduler" if scheduler else "local",
            "address": scheduler,
            "workers": 0,
        }
    import logging

    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError as exc:
        raise KvmcoreError(
            f"the Dask engine needs dask[distributed] ({exc}): pip install 'kvmcore[triage]', "
            "or analyze in this process with --workers 0"
        ) from None

    cluster = None
    if scheduler:
        client = Client(scheduler, timeout="30s")
        engine = {"kind": "scheduler", "address": scheduler}
    else:
        n = workers or os.cpu_count() or 1
        cluster = LocalCluster(
            n_workers=n,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            silence_logs=logging.ERROR,
        )
        client = Client(cluster)
        engine = {"kind": "local", "address": cluster.scheduler_address}
    try:
        engine["workers"] = len(client.scheduler_info().get("workers", {}))
        futures = [
            client.submit(analyze_dump, path, key, index, key=_dask_key(key), pure=False)
            for path, key in todo
        ]
        done = 0
        for fut in as_completed(futures):
            try:
                r = fut.result()
            except Exception as exc:  # noqa: BLE001 - a task the cluster gave up on
                path, key = todo[futures.index(fut)]
                r = {
                    "key": key,
                    "path": path,
                    "ok": False,
                    "exit_code": 1,
                    "error": f"the cluster could not analyze it: {type(exc).__name__}: {exc}",
                }
            if r["key"] not in results:
                results[r["key"]] = r
                done += 1
                note("analyzing", done, total)
                if on_result:
                    on_result(r, client)
        engine["workers_at_end"] = len(client.scheduler_info().get("workers", {}))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results, engine


def _when(r: dict[str, Any]) -> tuple[float | None, str]:
    ct = r.get("crash_time")
    if isinstance(ct, (int, float)) and ct > 0:
        return float(ct), "crash_time"
    mt = r.get("mtime")
    return (float(mt), "mtime") if isinstance(mt, (int, float)) else (None, "unknown")


def _iso(t: float | None) -> str | None:
    if t is None:
        return None
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def _headline_text(r: dict[str, Any]) -> str:
    h = r.get("headline") or {}
    who = f"{h.get('comm')}[{h.get('pid')}]" if h.get("pid") is not None else "?"
    return f"{h.get('panic_message') or '(no panic message)'} — {who} on CPU {h.get('cpu')}"


def run(
    paths: list[str],
    *,
    db_path: str | None = None,
    vmlinux_dir: str | None = None,
    scheduler: str | None = None,
    workers: int | None = None,
    include: Iterable[str] = (),
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    reanalyze: bool = False,
    progress: Progress | None = None,
    on_result: Callable[[dict[str, Any], Any], None] | None = None,
) -> dict[str, Any]:
    """One triage run; the triage document (kvmcore/schema/triage.schema.json)."""
    t0 = time.monotonic()
    note = progress or (lambda *_: None)
    db = TriageDB(db_path)
    try:
        engine_name = "scheduler" if scheduler else ("inline" if workers == 0 else "local")
        run_id, previous = db.start_run([os.path.abspath(p) for p in paths], engine_name)
        note("finding dumps", 0, 0)
        files, errors = discover(paths, include, exclude)
        note("hashing", 0, len(files))
        keys, how, unreadable = resolve_keys(files, db)
        errors += unreadable
        by_key: dict[str, list[str]] = defaultdict(list)
        for f in files:
            if f in keys:
                by_key[keys[f]].append(f)
        index = index_vmlinux_dir(vmlinux_dir) if vmlinux_dir else None
        stored: dict[str, dict[str, Any]] = {}
        todo: list[tuple[str, str]] = []
        for key, fs in sorted(by_key.items()):
            old = None if reanalyze else db.result(key)
            if old is not None:
                stored[key] = old
            else:
                todo.append((fs[0], key))
        t_an = time.monotonic()
        fresh, engine = analyze_all(
            todo,
            index=index,
            scheduler=scheduler,
            workers=workers,
            progress=progress,
            on_result=on_result,
        )
        analyze_seconds = time.monotonic() - t_an
        for key, r in fresh.items():
            r["quick"] = next(
                (quick_hash(p) for p in by_key[key][:1] if how.get(p) == "full"),
                key if key.startswith("quick:") else None,
            )
            r["hash"] = how.get(by_key[key][0], "quick")
            # a dump analyzed again (--reanalyze) keeps the run that first saw it
            r["run"] = db.first_run(key) or run_id
            db.store({k: v for k, v in r.items() if k != "run"}, r["run"])
        db.commit()
        results = {**stored, **fresh}
        doc = build_document(
            results,
            by_key,
            errors,
            db=db,
            run_id=run_id,
            previous=previous,
            engine=engine,
            inputs=paths,
        )
        doc["totals"]["analyzed"] = len(fresh)
        doc["totals"]["reused"] = len(stored)
        doc["seconds"] = {
            "total": round(time.monotonic() - t0, 2),
            "analyze": round(analyze_seconds, 2),
        }
        db.finish_run(run_id, len(files), len(fresh))
        doc["db"] = str(db.path)
        return doc
    finally:
        db.close()


def build_document(
    results: dict[str, dict[str, Any]],
    by_key: dict[str, list[str]],
    errors: list[dict[str, Any]],
    *,
    db: TriageDB,
    run_id: int,
    previous: dict[str, Any] | None,
    engine: dict[str, Any],
    inputs: list[str],
) -> dict[str, Any]:
    buckets: dict[str, dict[str, Any]] = {}
    error_rows = list(errors)
    new_dumps: list[dict[str, Any]] = []
    for key in sorted(results):
        r = results[key]
        paths = by_key.get(key, [r.get("path")])
        is_new = r.get("run") == run_id
        if is_new:
            new_dumps.append({"key": key, "path": paths[0]})
        if not r.get("ok"):
            error_rows.append(
                {
                    "key": key,
                    "path": paths[0],
                    "paths": paths,
                    "ok": False,
                    "error": r.get("error") or "unknown error",
                    "exit_code": r.get("exit_code"),
                    "new": is_new,
                }
            )
            continue
        sig = r["signature"]
        b = buckets.get(sig["id"])
        if b is None:
            first_run = db.signature_first_run(sig["id"])
            b = buckets[sig["id"]] = {
                "signature": sig,
                "count": 0,
                "members": [],
                "kernels": set(),
                "architectures": set(),
                "new": first_run == run_id,
            }
        t, src = _when(r)
        b["count"] += 1
        if r.get("release"):
            b["kernels"].add(r["release"])
        if r.get("arch"):
            b["architectures"].add(r["arch"])
        b["members"].append(
            {
                "key": key,
                "path": paths[0],
                "paths": paths,
                "time": _iso(t),
                "epoch": t,
                "time_source": src,
                "release": r.get("release"),
                "arch": r.get("arch"),
                "kaslr_offset": r.get("kaslr_offset"),
                "headline": _headline_text(r),
                "new": is_new,
                "_r": r,
            }
        )
    out_buckets = []
    for b in buckets.values():
        members = sorted(b["members"], key=lambda m: (m["epoch"] or 0, m["path"]))
        times = [m["epoch"] for m in members if m["epoch"] is not None]
        rep = members[0]["_r"]
        for m in members:
            m.pop("_r")
        out_buckets.append(
            {
                "signature": b["signature"],
                "count": b["count"],
                "first_seen": _iso(min(times)) if times else None,
                "last_seen": _iso(max(times)) if times else None,
                "kernels": sorted(b["kernels"]),
                "architectures": sorted(b["architectures"]),
                "new": b["new"],
                "representative": {
                    "key": rep["key"],
                    "path": members[0]["path"],
                    "headline": _headline_text(rep),
                    "backtrace": rep.get("backtrace") or [],
                    "title": b["signature"].get("title"),
                    "log_tail": rep.get("log_tail") or [],
                },
                "members": members,
            }
        )
    out_buckets.sort(key=lambda b: (-b["count"], b["first_seen"] or "", b["signature"]["id"]))
    files = sum(len(v) for v in by_key.values())
    doc = {
        "schema_version": SCHEMA_VERSION,
        "kvmcore_version": __version__,
        "generated": _iso(time.time()),
        "run": run_id,
        "previous_run": None
        if previous is None
        else {
            "id": previous["id"],
            "finished": _iso(previous["finished"]),
            "files": previous["files"],
            "new_dumps": previous["new_dumps"],
        },
        "engine": engine,
        "inputs": [os.path.abspath(p) for p in inputs],
        "totals": {
            "files": files + len([e for e in errors if e["key"].startswith("missing:")]),
            "dumps": len(results),
            "duplicates": files - len(by_key),
            "buckets": len(out_buckets),
            "errors": len(error_rows),
            "new_dumps": len(new_dumps),
            "new_buckets": sum(1 for b in out_buckets if b["new"]),
        },
        "buckets": out_buckets,
        "errors": error_rows,
        "new": {
            "dumps": new_dumps,
            "buckets": [b["signature"]["id"] for b in out_buckets if b["new"]],
        },
    }
    return doc
