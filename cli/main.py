"""`kvmcore`'s entry point. Errors become one line on stderr and an exit status:
2 bad input, 3 unsupported format or arch, 4 missing symbols or types,
5 unreadable address, 1 other kvmcore errors, 70 internal errors.

The common command lines (a table command or `analyze` on a dump) are parsed
by cli/fastpath.py without importing typer, whose parsing costs more than
most commands' work; anything else (help, usage errors, the other commands)
goes to the typer app in cli/app.py."""

from __future__ import annotations

import os
import sys
from typing import Any

from kvmcore.errors import KvmcoreError
from kvmcore.textsafe import printable

EXIT_INTERNAL = 70


def main() -> None:
    """Console-script entry: run the command, turning errors into one line each."""
    try:
        from . import fastpath

        if not fastpath.run(sys.argv[1:]):
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


def __getattr__(name: str) -> Any:
    """`app`, the typer app, imported when asked for (tests, typer's tooling)."""
    if name == "app":
        from .app import app

        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    main()
