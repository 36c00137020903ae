"""`python -m bench.kvmcore_worker seq|rand DUMP`: kvmcore's side of the read benchmark."""

from __future__ import annotations

import sys

import kvmcore
from kvmcore.errors import KvmcoreError

from . import readplan


def main(argv: list[str]) -> int:
    mode, path = argv
    dump = kvmcore.open(path)
    # page_offset_base holds the (KASLR-randomised) start of the direct map
    direct_map = dump.read_u64(dump.symbols.lookup("page_offset_base"))
    readplan.emit(readplan.run(mode, dump.read, (KvmcoreError,), direct_map))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
