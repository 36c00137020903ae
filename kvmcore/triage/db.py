"""The triage database: an embedded SQLite file of results keyed by content hash.

Default: ``<cache root>/triage.sqlite3`` (``kvmcore.cachedir.cache_root()``); ``--db PATH``
for one shared by a team (SQLite on a local or network file system that locks).

Tables:

``results``  one row per distinct dump (its content key, :mod:`.hashing`): the compact
             result as JSON, its signature id, the run that analyzed it
``paths``    path -> key, with the size and mtime it had when hashed: an unchanged file
             is not hashed again
``runs``     one row per triage run: when, what it was given, how many dumps were new
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from ..cachedir import cache_root

SCHEMA = """
CREATE TABLE IF NOT EXISTS results (
    key TEXT PRIMARY KEY,
    signature TEXT,
    ok INTEGER NOT NULL,
    result TEXT NOT NULL,
    first_path TEXT NOT NULL,
    run INTEGER NOT NULL,
    analyzed_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_signature ON results(signature);
CREATE TABLE IF NOT EXISTS paths (
    path TEXT PRIMARY KEY,
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    inputs TEXT NOT NULL,
    files INTEGER,
    new_dumps INTEGER,
    engine TEXT
);
"""


def default_path() -> Path:
    return cache_root() / "triage.sqlite3"


class TriageDB:
    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path else default_path()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.executescript(SCHEMA)
        self.conn.commit()

    def close(self) -> None:
        self.conn.close()

    # --- runs
    def start_run(self, inputs: list[str], engine: str) -> tuple[int, dict[str, Any] | None]:
        """A new run's id, and the previous run (or None)."""
        prev = self.conn.execute(
            "SELECT id, started, finished, files, new_dumps FROM runs "
            "WHERE finished IS NOT NULL ORDER BY id DESC LIMIT 1"
        ).fetchone()
        cur = self.conn.execute(
            "INSERT INTO runs(started, inputs, engine) VALUES (?, ?, ?)",
            (time.time(), json.dumps(inputs), engine),
        )
        self.conn.commit()
        last = None
        if prev:
            last = {
                "id": prev[0],
                "started": prev[1],
                "finished": prev[2],
                "files": prev[3],
                "new_dumps": prev[4],
            }
        return int(cur.lastrowid or 0), last

    def finish_run(self, run: int, files: int, new_dumps: int) -> None:
        self.conn.execute(
            "UPDATE runs SET finished=?, files=?, new_dumps=? WHERE id=?",
            (time.time(), files, new_dumps, run),
        )
        self.conn.commit()

    # --- paths
    def known_path(self, path: str, size: int, mtime_ns: int) -> str | None:
        row = self.conn.execute(
            "SELECT key, size, mtime_ns FROM paths WHERE path=?", (path,)
        ).fetchone()
        if row and row[1] == size and row[2] == mtime_ns:
            return str(row[0])
        return None

    def paths_of_key_prefix(self, quick: str) -> list[tuple[str, str]]:
        """(path, key) of the files seen with this quick hash (their key is the quick
        hash itself, or a full hash decided after a collision)."""
        rows = self.conn.execute(
            "SELECT p.path, p.key FROM paths p JOIN results r ON r.key = p.key "
            "WHERE json_extract(r.result, '$.quick') = ?",
            (quick,),
        ).fetchall()
        return [(str(a), str(b)) for a, b in rows]

    def remember_path(self, path: str, key: str, size: int, mtime_ns: int) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO paths(path, key, size, mtime_ns) VALUES (?, ?, ?, ?)",
            (path, key, size, mtime_ns),
        )

    # --- results
    def result(self, key: str) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT result, run FROM results WHERE key=?", (key,)).fetchone()
        if not row:
            return None
        out: dict[str, Any] = json.loads(row[0])
        out["run"] = row[1]
        return out

    def store(self, result: dict[str, Any], run: int) -> None:
        sig = (result.get("signature") or {}).get("id")
        self.conn.execute(
            "INSERT OR REPLACE INTO results(key, signature, ok, result, first_path, run, "
            "analyzed_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                result["key"],
                sig,
                1 if result.get("ok") else 0,
                json.dumps(result),
                result["path"],
                run,
                time.time(),
            ),
        )

    def first_run(self, key: str) -> int | None:
        row = self.conn.execute("SELECT run FROM results WHERE key=?", (key,)).fetchone()
        return int(row[0]) if row else None

    def signature_first_run(self, sig: str) -> int | None:
        row = self.conn.execute("SELECT MIN(run) FROM results WHERE signature=?", (sig,)).fetchone()
        return int(row[0]) if row and row[0] is not None else None

    def commit(self) -> None:
        self.conn.commit()
