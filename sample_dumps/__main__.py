"""python -m sample_dumps build [--only ID,...] [--with-dbg] [--force] [--commit-copy]
python -m sample_dumps build --memory-mb MB [--extra-tasks N]   (scale sample, under $CACHE/scale/)
python -m sample_dumps list
python -m sample_dumps corpus [--tier ci|full] [--kinds K,...] [--copies N] [--arch amd64|arm64]
                              [--force] [--list]
                              (the triage corpus, under $CACHE/corpus/: corpus.py)"""

from __future__ import annotations

import argparse
import sys

from . import cache_root
from .table import BY_ID, SAMPLES, default_ids
from .util import log


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sample_dumps",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build (or verify cached) samples")
    b.add_argument("--only", help="comma-separated sample IDs (default: all default rows)")
    b.add_argument(
        "--with-dbg",
        action="store_true",
        help="also fetch the kernels' -dbg packages (vmlinux + System.map)",
    )
    b.add_argument("--force", action="store_true", help="rebuild even if cached")
    b.add_argument(
        "--commit-copy",
        action="store_true",
        help="copy samples marked commit_copy (x86_64-small) into sample_dumps/committed/",
    )
    b.add_argument(
        "--memory-mb",
        type=int,
        help="build one scale sample x86_64-m<MB>-t<N> (under $CACHE/scale/) with this "
        "guest memory",
    )
    b.add_argument(
        "--extra-tasks",
        type=int,
        default=0,
        help="with --memory-mb: init starts this many extra sleep processes",
    )
    sub.add_parser("list", help="list cached samples and their files")
    c = sub.add_parser(
        "corpus",
        help="build (or verify cached) the triage corpus: kernels "
        "crashed in many ways, several dumps of each (corpus.py)",
    )
    c.add_argument(
        "--tier",
        choices=("ci", "full"),
        default="full",
        help="ci: one dump of each of 4 kinds; full: every kind, --copies each",
    )
    c.add_argument("--kinds", help="comma-separated crash kinds (default: the tier's)")
    c.add_argument("--copies", type=int, default=3, help="dumps per kind in the full tier")
    c.add_argument("--force", action="store_true", help="rebuild even if cached")
    c.add_argument("--list", action="store_true", help="list the built corpus dumps")
    c.add_argument(
        "--arch",
        choices=("amd64", "arm64"),
        default="amd64",
        help="the guest architecture (arm64: crashmod cross-built with aarch64-linux-gnu-gcc-12)",
    )
    args = ap.parse_args(argv)
    cache = cache_root()

    if args.cmd == "corpus":
        from .corpus import KINDS, build_corpus, load_corpus

        if args.list:
            for cid, (path, m) in load_corpus(cache).items():
                print(
                    f"{cid:28} {m['crash']['kind']:11} {m['files']['kdump-zlib']['size']:>10}  "
                    f"{path}"
                )
            print("kinds: " + ", ".join(KINDS))
            return 0
        kinds = args.kinds.split(",") if args.kinds else None
        failed = build_corpus(cache, args.tier, kinds, args.copies, args.force, args.arch)
        return 1 if failed else 0

    if args.cmd == "list":
        from .catalog import load_samples

        samples = load_samples(cache)
        print(f"cache: {cache}")
        for sid in [s.id for s in SAMPLES]:
            s = samples.get(sid)
            if s is None:
                print(f"{sid}: not built")
                continue
            m = s.manifest
            print(
                f"{sid}: {m['kernel_release']} ({m['kernel_package']} {m['kernel_version']}) "
                f"kaslr={m['kaslr']} {m['qemu']['memory_mb']}MB smp={m['qemu']['smp']} "
                f"built {m['build']['date']} in {m['build']['seconds']}s"
            )
            for fmt, e in m["files"].items():
                print(f"    {fmt:12} {e['size']:>12}  {s.dir / e['path']}")
            print(f"    vmlinux      {s.vmlinux() or '-'}")
            print(f"    System.map   {s.system_map() or '-'}")
        return 0

    from .build import build_sample, commit_copy

    if args.memory_mb:
        from .table import scale_spec

        spec = scale_spec(args.memory_mb, args.extra_tasks)
        return 0 if build_sample(spec, cache, force=args.force) else 1
    ids = args.only.split(",") if args.only else default_ids()
    unknown = [i for i in ids if i not in BY_ID]
    if unknown:
        ap.error(f"unknown sample IDs {unknown}; known: {', '.join(BY_ID)}")
    failed = []
    for sid in ids:
        try:
            build_sample(BY_ID[sid], cache, force=args.force, with_dbg=args.with_dbg)
            if args.commit_copy and BY_ID[sid].commit_copy:
                commit_copy(BY_ID[sid], cache)
        except Exception as e:  # report, continue with the other samples
            log(f"{sid}: FAILED: {e}")
            failed.append(sid)
    if failed:
        log(f"failed: {', '.join(failed)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
