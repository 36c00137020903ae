"""The contract every fuzz input is held to, and how a breach is named.

* only kvmcore.errors.KvmcoreError subclasses may escape a parser: any other
  exception is a finding (a traceback);
* no input may run longer than its time limit (SIGALRM): a hang;
* no input may exhaust the worker's address space (RLIMIT_AS): a memory blow-up;
* the seed dump files are never written (their sha256 before and after).

A failure is named by its kind, the exception type and the innermost frame
inside kvmcore (file:function:line), so one bug found a thousand times
counts once.
"""

from __future__ import annotations

import hashlib
import os
import resource
import signal
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field

from kvmcore.errors import KvmcoreError

TIME_LIMIT = 10.0  # seconds per input
MEMORY_LIMIT = 4 << 30  # RLIMIT_AS of a worker process

OK, ERROR, TRACEBACK, HANG, MEMORY = "ok", "kvmcore-error", "traceback", "hang", "memory"


class Hang(BaseException):
    """Raised by the SIGALRM handler: a BaseException, so that no
    `except Exception` in kvmcore can swallow it."""


@dataclass
class Outcome:
    kind: str  # OK, ERROR, TRACEBACK, HANG or MEMORY
    key: str = ""  # kind|exception type|innermost kvmcore frame
    text: str = ""  # the traceback (or the error's message)


@dataclass
class Tally:
    """What one target's inputs came to."""

    inputs: int = 0
    errors: int = 0  # inputs refused with a KvmcoreError (fine)
    failures: dict[str, int] = field(default_factory=dict)  # key -> times seen
    examples: dict[str, str] = field(default_factory=dict)  # key -> one traceback
    samples: dict[str, str] = field(default_factory=dict)  # key -> hex of one input (short)

    def add(self, outcome: Outcome, data: bytes | None = None) -> bool:
        """Count `outcome`; True when it is a failure not seen before."""
        self.inputs += 1
        if outcome.kind == ERROR:
            self.errors += 1
        if outcome.kind in (OK, ERROR):
            return False
        new = outcome.key not in self.failures
        self.failures[outcome.key] = self.failures.get(outcome.key, 0) + 1
        if new:
            self.examples[outcome.key] = outcome.text
            if data is not None and len(data) <= 4096:
                self.samples[outcome.key] = bytes(data).hex()
        return new

    def by_kind(self, kind: str) -> int:
        return sum(1 for k in self.failures if k.startswith(kind + "|"))

    def as_dict(self) -> dict:
        return {
            "inputs": self.inputs,
            "errors": self.errors,
            "failures": self.failures,
            "examples": self.examples,
            "samples": self.samples,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Tally:
        return cls(d["inputs"], d["errors"], d["failures"], d["examples"], d.get("samples", {}))


def innermost_kvmcore_frame(tb) -> str:
    """file:function:line of the deepest traceback frame inside kvmcore/."""
    where = "harness"  # no kvmcore frame: the fault is in fuzz/ itself
    for frame in traceback.extract_tb(tb):
        path = os.path.abspath(frame.filename)
        if f"{os.sep}kvmcore{os.sep}" in path and f"{os.sep}.venv{os.sep}" not in path:
            rel = path[path.rindex(f"{os.sep}kvmcore{os.sep}") + 1 :]
            where = f"{rel}:{frame.name}:{frame.lineno}"
    return where


def _on_alarm(_signum, _frame) -> None:
    raise Hang()


def limit_memory(limit: int = MEMORY_LIMIT) -> None:
    """Cap this (worker) process's address space."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))


def check(fn: Callable[[bytes], object], data: bytes, time_limit: float = TIME_LIMIT) -> Outcome:
    """Run `fn(data)` under the contract and say how it ended."""
    old = signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, time_limit)
    try:
        try:
            fn(data)
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    except Hang as exc:
        where = innermost_kvmcore_frame(exc.__traceback__)
        return Outcome(HANG, f"{HANG}|Hang|{where}", traceback.format_exc())
    except KvmcoreError as exc:
        return Outcome(ERROR, "", str(exc))
    except MemoryError as exc:
        where = innermost_kvmcore_frame(exc.__traceback__)
        return Outcome(MEMORY, f"{MEMORY}|MemoryError|{where}", traceback.format_exc())
    except Exception as exc:  # the finding: anything else escaped
        where = innermost_kvmcore_frame(exc.__traceback__)
        return Outcome(
            TRACEBACK, f"{TRACEBACK}|{type(exc).__name__}|{where}", traceback.format_exc()
        )
    finally:
        signal.signal(signal.SIGALRM, old)
    return Outcome(OK)


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
