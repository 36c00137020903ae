"""Reports: the crash report (`analyze`) and the per-command views (ps, dmesg,
mods, sys, bt) that the CLI and gdb's `monitor` share."""
from .collect import SCHEMA_VERSION, build_report

__all__ = ["SCHEMA_VERSION", "build_report"]
