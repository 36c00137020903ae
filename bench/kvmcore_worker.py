"""`python -m bench.kvmcore_worker seq|rand DUMP`: kvmcore's side of the read
benchmark. Each chunk is one `dump.read(va, size, zero_excluded=True,
excluded=spans)`: pages the dump filtered out read as zeros and are counted
from `spans`, where drgn's loop (bench/drgn_worker.py) retries page by page
after a fault."""

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

    def read_filled(va: int, size: int) -> tuple[bytes, int]:
        # filtered pages read as zeros and listed (no exception per page)
        spans: list[tuple[int, int]] = []
        data = dump.read(va, size, zero_excluded=True, excluded=spans)
        return data, sum(-(-n // readplan.PAGE) for _, n in spans) if spans else 0

    readplan.emit(readplan.run(mode, dump.read, (KvmcoreError,), direct_map, read_filled))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
