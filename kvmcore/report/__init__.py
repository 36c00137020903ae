"""Reports: the crash report (`analyze`). The per-command views (ps, dmesg,
mods, sys, bt, ...) are in kvmcore.commands."""

from .collect import SCHEMA_VERSION, build_report

__all__ = ["SCHEMA_VERSION", "build_report"]
