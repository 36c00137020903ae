"""`python -m kvmcore.gdbserver DUMP [VMLINUX] [--listen HOST:PORT] [--stdio] [--module-dir D]`."""

from __future__ import annotations

import argparse
import sys

from .. import open as open_dump
from ..errors import KvmcoreError
from .server import serve


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m kvmcore.gdbserver", description="serve a crash dump read-only to gdb"
    )
    ap.add_argument("dump")
    ap.add_argument("vmlinux", nargs="?")
    ap.add_argument("--listen", default="127.0.0.1:1234", metavar="HOST:PORT")
    ap.add_argument("--stdio", action="store_true", help="talk to gdb on stdin/stdout")
    ap.add_argument("--module-dir", metavar="DIR", help="module debug files (.ko) for gdb")
    args = ap.parse_args(argv)
    try:
        dump = open_dump(args.dump, args.vmlinux, module_dir=args.module_dir)
        serve(dump, listen=args.listen, stdio=args.stdio)
    except KvmcoreError as exc:
        print(f"kvmcore: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
