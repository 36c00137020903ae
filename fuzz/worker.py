"""One target's campaign, in its own process (run by fuzz.campaign):
address space capped, each input under SIGALRM, its tally written as JSON.

    python -m fuzz.worker --target NAME --seconds S --seed N --engine atheris|random --out FILE
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

os.environ["KVMCORE_INDEX_CACHE"] = "0"  # mutated BTF/kallsyms must not reach the shared cache


def _import_all() -> None:
    """Import every kvmcore and arches module (under atheris's instrumentation:
    libFuzzer's coverage is of these modules only)."""
    import importlib
    import pkgutil

    for top in ("kvmcore", "arches"):
        pkg = importlib.import_module(top)
        for info in pkgutil.walk_packages(pkg.__path__, top + "."):
            if not info.name.endswith("__main__"):
                importlib.import_module(info.name)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--seconds", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--engine", choices=("atheris", "random"), default="atheris")
    ap.add_argument(
        "--runs", type=int, default=0, help="stop after this many inputs (0: time only)"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    if args.engine == "atheris":
        try:
            import atheris
        except ImportError:
            args.engine = "random"
        else:
            with atheris.instrument_imports(include=["kvmcore", "arches"]):
                _import_all()

    from .contract import Tally, check, limit_memory
    from .targets import TARGETS

    limit_memory()
    tgt = TARGETS[args.target]
    seeds = tgt.seeds()
    for s in seeds:  # warm every cache (seed files, hot pages) before timing
        check(tgt.run, s)
    tally = Tally()
    state = {"last": 0.0}

    def flush(force: bool = False) -> None:
        now = time.monotonic()
        if force or now - state["last"] > 1.0:
            state["last"] = now
            tmp = args.out + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"target": args.target, "engine": args.engine, **tally.as_dict()}, f)
            os.replace(tmp, args.out)

    def one(data: bytes) -> None:
        if tally.add(check(tgt.run, data), data):
            flush(True)
        else:
            flush()

    for s in seeds:
        one(s)
    if args.engine == "random":
        rng = random.Random(args.seed)
        pool = list(seeds)
        end = time.monotonic() + args.seconds
        while time.monotonic() < end and not (args.runs and tally.inputs >= args.runs):
            data = __import__("fuzz.mutate", fromlist=["mutate"]).mutate(rng.choice(pool), rng)
            one(data)
        flush(True)
        return 0

    import atheris

    corpus = tempfile.mkdtemp(prefix=f"kvmcore-fuzz-{args.target}-")
    for i, s in enumerate(seeds):
        with open(os.path.join(corpus, f"seed{i}"), "wb") as f:
            f.write(s)
    max_len = max(len(s) for s in seeds) + 4096

    deadline = time.monotonic() + args.seconds

    def test_one(data: bytes) -> None:
        one(data)
        if (args.runs and tally.inputs >= args.runs) or time.monotonic() > deadline:
            flush(True)
            os._exit(0)

    libfuzzer = [
        sys.argv[0],
        f"-max_total_time={int(args.seconds) + 30}",  # a backstop: test_one stops first,
        f"-seed={args.seed + 1}",
        "-timeout=0",  # SIGALRM is ours (fuzz.contract)
        "-rss_limit_mb=0",  # RLIMIT_AS is the memory bound
        "-malloc_limit_mb=0",
        f"-max_len={max_len}",
        f"-artifact_prefix={corpus}/",
        "-print_final_stats=0",
        "-close_fd_mask=1",  # libFuzzer's own chatter goes to stderr
        corpus,
    ]
    atheris.Setup(libfuzzer, test_one)
    try:
        atheris.Fuzz()
    finally:
        flush(True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
