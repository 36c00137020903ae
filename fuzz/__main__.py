"""python -m fuzz --minutes N [--target NAME ...] [--seed S]
[--engine atheris|random] [--json FILE]"""

from __future__ import annotations

import argparse
import json
import sys

from . import campaign
from .targets import TARGETS


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__)
    ap.add_argument("--minutes", type=float, default=1.0, help="the whole campaign's length")
    ap.add_argument(
        "--target",
        action="append",
        choices=sorted(TARGETS),
        help="fuzz only this target (repeatable); default: all",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--engine",
        choices=("atheris", "random"),
        default=None,
        help="default: atheris when installed, else the built-in mutator",
    )
    ap.add_argument("--json", help="also write the figures here")
    ap.add_argument("--list", action="store_true", help="list the targets and exit")
    args = ap.parse_args(argv)
    if args.list:
        for t in TARGETS.values():
            print(f"{t.name:11} {t.doc.splitlines()[0] if t.doc else ''}")
        return 0
    names = args.target or list(TARGETS)
    res = campaign.run(
        args.minutes * 60,
        names,
        args.seed,
        args.engine,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(res.report())
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "engine": res.engine,
                    "seconds": res.seconds,
                    "hashes_unchanged": res.hashes_unchanged,
                    "targets": {n: t.as_dict() for n, t in res.tallies.items()},
                },
                f,
                indent=1,
            )
    return 1 if res.failures() or not res.hashes_unchanged else 0


if __name__ == "__main__":
    sys.exit(main())
