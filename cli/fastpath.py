"""The common command lines, parsed without typer.

typer (with click and, since typer 0.2x, pydantic to coerce each parameter)
costs 0.1-0.2 s to parse one command line, more than `info` or `dmesg` take
to answer. A table command (`ps`, `bt`, `p`, `kmem`, ...) or `analyze` on a
dump is read here instead, from the same command table the typer app is
built from (kvmcore.commands), and run through the same code (cli/actions.py).

This parser takes only what it is sure of: known option spellings as
``--opt VALUE``, ``--opt=VALUE`` or ``-o VALUE``, flags, and positionals in
order. Anything else (``--help``, an unknown or combined option, a value
starting with ``-``, ``--``, an empty word, too many or too few arguments)
returns False, and typer parses the line, giving its help or its usage
error. KVMCORE_CLI_FAST=0 sends every line to typer."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kvmcore import commands

from . import actions

#: the options every table command takes: dest, takes a value
_COMMON = {
    "--force-vmlinux": ("force_vmlinux", False),
    "--arch": ("arch", True),
    "--json": ("json_out", False),
    "--system-map": ("system_map", True),
}


@dataclass
class Spec:
    """A command line's shape: option spellings -> (dest, takes a value), and
    the positionals in order as (dest, required)."""

    options: dict[str, tuple[str, bool]]
    positionals: list[tuple[str, bool]]
    defaults: dict[str, Any] = field(default_factory=dict)


def _table_spec(cmd: commands.Command, vmlinux_positional: bool) -> Spec:
    options = dict(_COMMON)
    positionals = [("dump", True)]
    defaults: dict[str, Any] = {
        "force_vmlinux": False,
        "arch": None,
        "json_out": False,
        "system_map": None,
        "vmlinux": None,
    }
    for p in cmd.params:
        # typer is given numbers as text, converted by the table (cli/app.py's _arg)
        default = str(p.default) if p.type is int and p.default is not None else p.default
        defaults[p.name] = default
        if p.positional:
            positionals.append((p.name, p.required))
        else:
            for flag in p.flags:
                options[flag] = (p.name, p.type is not bool)
    if vmlinux_positional:
        positionals.append(("vmlinux", False))
    else:
        options["--vmlinux"] = ("vmlinux", True)
    return Spec(options, positionals, defaults)


_ANALYZE = Spec(
    options={
        **_COMMON,
        "--format": ("fmt", True),
        "--log-lines": ("log_lines", True),
    },
    positionals=[("dump", False), ("vmlinux", False)],
    defaults={
        "dump": None,
        "vmlinux": None,
        "force_vmlinux": False,
        "arch": None,
        "json_out": False,
        "fmt": "auto",
        "log_lines": str(commands.ANALYZE.param("log_lines").default),
        "system_map": None,
    },
)


def parse(spec: Spec, words: list[str]) -> dict[str, Any] | None:
    """The values of `words` by `spec`, or None when this parser is not sure."""
    values = dict(spec.defaults)
    free: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if not word:
            return None
        if not word.startswith("-"):
            free.append(word)
            continue
        flag, eq, value = word.partition("=") if word.startswith("--") else (word, "", "")
        if flag not in spec.options:
            return None
        dest, takes_value = spec.options[flag]
        if not takes_value:
            if eq:
                return None
            values[dest] = True
            continue
        if not eq:
            if i >= len(words):
                return None
            value = words[i]
            i += 1
        if not value or value.startswith("-"):
            return None
        values[dest] = value
    if len(free) > len(spec.positionals):
        return None
    for (dest, _), word in zip(spec.positionals, free):
        values[dest] = word
    if any(required for _, required in spec.positionals[len(free) :]):
        return None
    return values


def _path(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def run(argv: list[str]) -> bool:
    """Run `argv` (the words after `kvmcore`) when it is a line this parser
    takes; False, having done nothing, when typer should parse it."""
    if os.environ.get("KVMCORE_CLI_FAST", "1") in ("0", "off", "no"):
        return False
    partial = False
    while argv and argv[0] == "--partial":
        partial, argv = True, argv[1:]
    if not argv:
        return False
    name, words = argv[0], argv[1:]
    if name == "analyze":
        values = parse(_ANALYZE, words)
        if values is None:
            return False
        actions.PARTIAL["value"] = partial
        actions.run_analyze(
            _path(values["dump"]),
            _path(values["vmlinux"]),
            values["force_vmlinux"],
            values["arch"],
            values["json_out"],
            values["fmt"],
            values["log_lines"],
            _path(values["system_map"]),
        )
        return True
    cmd = next((c for c in commands.VIEW if c.name == name), None)
    view = cmd is not None
    if cmd is None:
        cmd = next((c for c in commands.EXPLORE if c.name == name), None)
    if cmd is None:
        return False
    values = parse(_table_spec(cmd, vmlinux_positional=view), words)
    if values is None:
        return False
    actions.PARTIAL["value"] = partial
    kwargs = {p.name: values[p.name] for p in cmd.params}
    for p in cmd.params:
        if p.type is int and kwargs[p.name] is not None:
            kwargs[p.name] = actions.int_arg(cmd, p.name, kwargs[p.name])
    actions.run_command(
        cmd,
        Path(values["dump"]),
        _path(values["vmlinux"]),
        values["arch"],
        _path(values["system_map"]),
        values["json_out"],
        values["force_vmlinux"],
        **kwargs,
    )
    return True
