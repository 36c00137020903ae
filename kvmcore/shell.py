"""`kvmcore shell DUMP [VMLINUX]`: a crash-like prompt over the command table.

Every command of kvmcore.commands (ps, bt, dmesg, p, struct, rd, list, ...),
plus:
  set [PID]          show or set the current task (commands that take a pid use it)
  py                 Python with `dump` bound (IPython when installed)
  help [COMMAND]     the commands, or one command's usage
  q, quit, exit      leave
  CMD | SHELLCMD     the output piped to a shell command, as crash does (`ps | grep sh`)

At a terminal it uses prompt_toolkit: line editing, history (in the cache
directory), completion of command names, symbols and struct/union/typedef
names. Fed from a pipe (`kvmcore shell DUMP < cmds`), it runs the commands one
by one and prints each one's output, as `crash -s < cmds` does. An error is
one line and the shell goes on.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, TextIO

from . import commands
from .cachedir import cache_root
from .errors import KvmcoreError
from .textsafe import printable

if TYPE_CHECKING:
    from .dump import Dump

BUILTINS = ("set", "py", "help", "q", "quit", "exit")
PROMPT = "kvmcore> "


class Shell:
    """One dump's interactive session: runs lines, keeps the current task."""

    def __init__(self, dump: Dump, out: TextIO | None = None) -> None:
        self.dump = dump
        self.out = out or sys.stdout
        #: the task `set PID` chose; commands taking a pid default to it
        self.pid: int | None = None
        self.done = False

    # -- one line --------------------------------------------------------------
    def run_line(self, line: str) -> None:
        """Run one command line; errors become one line on the output."""
        line = line.strip()
        if not line or line.startswith("#"):
            return
        command, pipe = _split_pipe(line)
        try:
            text = self.execute(command)
        except KvmcoreError as exc:
            text = f"{command.split()[0]}: error: {printable(exc.message)}"
        except (KeyboardInterrupt, RecursionError) as exc:
            text = f"{command.split()[0]}: interrupted ({type(exc).__name__})"
        if text is None:
            return
        if pipe:
            result = subprocess.run(
                pipe, shell=True, input=text + "\n", text=True, capture_output=True, check=False
            )
            self.out.write(result.stdout + result.stderr)
        else:
            self.out.write(text + "\n")
        self.out.flush()

    def execute(self, line: str) -> str | None:
        """The text of one command (no pipe)."""
        try:
            words = shlex.split(line)
        except ValueError as exc:
            raise KvmcoreError(f"cannot split the line: {exc}") from None
        name, args = words[0], words[1:]
        if name in ("q", "quit", "exit"):
            self.done = True
            return None
        if name == "help":
            return self.help(args[0] if args else None)
        if name == "set":
            return self.set_context(args)
        if name == "py":
            self.python()
            return None
        cmd = commands.COMMANDS.get(name)
        if cmd is None:
            raise KvmcoreError(f"unknown command {name!r}; try `help`")
        kwargs = cmd.parse(args)
        if (
            self.pid is not None
            and "pid" not in kwargs
            and any(p.name == "pid" for p in cmd.params)
            and not kwargs.get("all_tasks")
        ):
            kwargs["pid"] = self.pid
        return cmd.run(self.dump, **kwargs)

    # -- builtins -----------------------------------------------------------------
    def help(self, name: str | None) -> str:
        if name:
            cmd = commands.COMMANDS.get(name)
            if cmd is None:
                raise KvmcoreError(f"unknown command {name!r}")
            lines = [f"{cmd.usage()}", f"  {cmd.help}"]
            lines += [f"  {p.usage():<24} {p.help}" for p in cmd.params]
            return "\n".join(lines)
        width = max(len(n) for n in commands.COMMANDS)
        lines = [f"{n:<{width}}  {c.help}" for n, c in commands.COMMANDS.items()]
        lines += [
            "",
            "set [PID]   the current task",
            "py          Python with `dump` bound",
            "q           quit",
            "CMD | SHELLCMD  pipe the output to a shell command",
        ]
        return "\n".join(lines)

    def set_context(self, args: list[str]) -> str:
        if not args:
            if self.pid is None:
                return "no current task (set PID)"
            return f"current task: PID {self.pid}"
        try:
            pid = int(args[0], 0)
        except ValueError:
            raise KvmcoreError(f"set: not a pid: {args[0]!r}") from None
        task = self.dump.kernel.find_task(pid)
        if task is None:
            raise KvmcoreError(f"set: no task with pid {pid}")
        self.pid = pid
        return (
            f'    PID: {task.pid}\n COMMAND: "{printable(task.comm)}"\n'
            f"    TASK: {task.address:#x}\n     CPU: {task.cpu}"
        )

    def python(self) -> None:
        """An interactive Python with `dump` (and kvmcore) bound; back with ^D."""
        import kvmcore

        names: dict[str, Any] = {"dump": self.dump, "kvmcore": kvmcore}
        try:
            from IPython import start_ipython  # optional: used when installed
        except ImportError:
            import code

            code.interact(banner="Python with `dump` bound; ^D returns to kvmcore", local=names)
        else:
            start_ipython(argv=[], user_ns=names)

    # -- loops --------------------------------------------------------------------
    def run_lines(self, lines: Iterable[str], echo: bool = False) -> None:
        """Run commands one by one (a script, a pipe)."""
        for line in lines:
            if echo and line.strip():
                self.out.write(f"{PROMPT}{line.rstrip()}\n")
            self.run_line(line)
            if self.done:
                break

    def interact(self) -> None:
        """The prompt, with prompt_toolkit's editing, history and completion."""
        from prompt_toolkit import PromptSession
        from prompt_toolkit.history import FileHistory

        history = cache_root() / "shell_history"
        try:
            history.parent.mkdir(parents=True, exist_ok=True)
            session: PromptSession[str] = PromptSession(
                history=FileHistory(str(history)), completer=Completer(self.dump)
            )
        except OSError:
            session = PromptSession(completer=Completer(self.dump))
        while not self.done:
            try:
                line = session.prompt(PROMPT)
            except KeyboardInterrupt:
                continue
            except EOFError:
                break
            self.run_line(line)


def _split_pipe(line: str) -> tuple[str, str | None]:
    """(command, shell command) at the first `|` outside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "|":
            return line[:i].strip(), line[i + 1 :].strip() or None
    return line, None


def _completer_base() -> type:
    from prompt_toolkit.completion import Completer as Base

    return Base


class Completer(_completer_base()):  # type: ignore[misc]
    """Completes command names, then symbols and type names."""

    def __init__(self, dump: Dump) -> None:
        self.dump = dump
        self._symbols: list[str] | None = None
        self._types: dict[str, list[str]] = {}

    def _type_names(self, space: str) -> list[str]:
        if space not in self._types:
            names: set[str] = set()
            for source in self.dump.types.sources:
                lister = getattr(source, "names", None)  # BTF lists its names; DWARF does not
                if lister is not None:
                    names.update(lister(space))
            self._types[space] = sorted(names)
        return self._types[space]

    def _symbol_names(self) -> list[str]:
        if self._symbols is None:
            try:
                self._symbols = self.dump.symbols.names()
            except KvmcoreError:
                self._symbols = []
        return self._symbols

    def get_completions(self, document: Any, complete_event: Any) -> Iterable[Any]:
        from prompt_toolkit.completion import Completion

        text = document.text_before_cursor
        words = text.split()
        word = document.get_word_before_cursor(WORD=True)
        if len(words) == 0 or (len(words) == 1 and not text.endswith(" ")):
            pool: Iterable[str] = [*commands.COMMANDS, *BUILTINS]
        else:
            previous = words[-2] if word else words[-1]
            if words[0] in ("struct", "union") and len(words) <= 2:
                pool = self._type_names(words[0])
            elif previous in ("struct", "union", "enum"):
                pool = self._type_names(previous)
            else:
                pool = self._symbol_names()
        shown = 0
        for name in pool:
            if name.startswith(word):
                yield Completion(name, start_position=-len(word))
                shown += 1
                if shown >= 200:
                    break


def run_shell(dump: Dump, stdin: TextIO | None = None, out: TextIO | None = None) -> None:
    """A prompt at a terminal; from a pipe, run its commands one by one."""
    stdin = stdin or sys.stdin
    shell = Shell(dump, out)
    if stdin.isatty():
        shell.interact()
    else:
        shell.run_lines(stdin, echo=True)
