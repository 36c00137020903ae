"""`kvmcore`'s entry point. Errors become one line on stderr and an exit status:
2 bad input, 3 unsupported format or arch, 4 missing symbols or types,
5 unreadable address, 1 other kvmcore errors, 70 internal errors.

The common command lines (a table command or `analyze` on a dump) are parsed
by cli/fastpath.py without importing typer, whose parsing costs more than
most commands' work; anything else (help, usage errors, the other commands)
goes to the typer app in cli/app.py."""

from __future__ import annotations

import gc
import os
import sys
from typing import Any

from kvmcore.errors import KvmcoreError
from kvmcore.textsafe import printable

EXIT_INTERNAL = 70
#: allocations between young-generation collections (Python's default: 700),
#: for the commands that keep the cycle collector (those typer parses: serve,
#: shell, triage of many dumps). A command makes many objects that live to its
#: end (tasks, frames, rows) and few cycles: each collection scans the young
#: objects for nothing. The threshold bounds what cycles wait.
GC_YOUNG_THRESHOLD = 20_000


def main() -> None:
    """Console-script entry: run the command, turning errors into one line each.

    A line the fast path takes (a table command or `analyze` on one dump) is
    the whole of the process, so it runs with the cycle collector off. A run
    of each such command found no cyclic garbage to collect, only a few dozen
    objects left over from the imports: what a command keeps to its end is
    freed by reference counting, and every collection scanned it for nothing
    (`ps` at 10,000 tasks: 6 ms in collections during the walk). At the end
    everything is frozen, so the collection the interpreter makes as it exits
    does not scan it either (14 ms at 10,000 tasks, 7 ms at 170)."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 20, 20)
    try:
        from . import fastpath

        gc.disable()
        if not fastpath.run(sys.argv[1:]):
            gc.enable()
            from .app import run_app

            run_app()
    except KvmcoreError as exc:
        print(f"kvmcore: error: {printable(str(exc))}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("kvmcore: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    except Exception as exc:  # genuine bugs
        if os.environ.get("KVMCORE_DEBUG"):
            raise
        print(
            f"kvmcore: internal error: {type(exc).__name__}: {exc} "
            "(set KVMCORE_DEBUG=1 for a traceback)",
            file=sys.stderr,
        )
        sys.exit(EXIT_INTERNAL)
    finally:
        gc.freeze()  # the process ends here: its exit's collection need not scan all this


def __getattr__(name: str) -> Any:
    """`app`, the typer app, imported when asked for (tests, typer's tooling)."""
    if name == "app":
        from .app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
