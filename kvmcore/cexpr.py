"""C expressions over a dump, as crash's and gdb's `p` take them: symbols,
numbers, members (`.`, `->`), indexes, casts, `&`, `*`, `sizeof`, + - * / and
parentheses; evaluated to typed Objects (kvmcore.objects) or plain ints.

    evaluate(dump, "init_task.comm")
    evaluate(dump, "((struct task_struct *)0xffff888003d10000)->pid")
    evaluate(dump, "&init_task.tasks")
    evaluate(dump, "sizeof(struct task_struct)")

A name that is no symbol but an enumerator (TASK_COMM_LEN is not one; PIDTYPE_PID
is) evaluates to its value.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from .errors import KvmcoreError, TypeInfoError
from .objects import Object, cast

if TYPE_CHECKING:
    from .dump import Dump

Value = Object | int

_TOKEN = re.compile(
    r"\s*(?:(0[xX][0-9a-fA-F]+|\d+)|([A-Za-z_][A-Za-z0-9_]*)|(->|[().\[\]*&+\-/~]))"
)
_TYPE_WORDS = {
    "struct",
    "union",
    "enum",
    "unsigned",
    "signed",
    "char",
    "short",
    "int",
    "long",
    "void",
    "const",
    "volatile",
    "_Bool",
    "bool",
}
MAX_TOKENS = 512


class ExpressionError(KvmcoreError):
    """An expression that does not parse or cannot be evaluated."""

    exit_code = 2


def tokenize(text: str) -> list[str]:
    out: list[str] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ExpressionError(f"cannot parse {text!r} at {text[pos : pos + 10]!r}")
        out.append(m.group(m.lastindex or 0))
        pos = m.end()
        if len(out) > MAX_TOKENS:
            raise ExpressionError(f"expression longer than {MAX_TOKENS} tokens")
    return out


class _Parser:
    def __init__(self, dump: Dump, text: str) -> None:
        self.dump = dump
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    # -- tokens ------------------------------------------------------------------
    def peek(self, ahead: int = 0) -> str | None:
        i = self.pos + ahead
        return self.tokens[i] if i < len(self.tokens) else None

    def take(self, want: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (want is not None and tok != want):
            raise ExpressionError(
                f"in {self.text!r}: expected {want or 'more'}, got {tok or 'the end'}"
            )
        self.pos += 1
        return tok

    # -- grammar -----------------------------------------------------------------
    def parse(self) -> Value:
        value = self.additive()
        if self.peek() is not None:
            raise ExpressionError(f"in {self.text!r}: unexpected {self.peek()!r}")
        return value

    def additive(self) -> Value:
        left = self.multiplicative()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = self.multiplicative()
            left = self._arith(op, left, right)
        return left

    def multiplicative(self) -> Value:
        left = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = self.unary()
            a, b = _int(left), _int(right)
            if op == "/" and b == 0:
                raise ExpressionError(f"in {self.text!r}: division by zero")
            left = a * b if op == "*" else a // b
        return left

    def unary(self) -> Value:
        tok = self.peek()
        if tok == "*":
            self.take()
            v = self.unary()
            if not isinstance(v, Object):
                raise ExpressionError(f"in {self.text!r}: * needs a pointer, not a number")
            return v.deref()
        if tok == "&":
            self.take()
            v = self.unary()
            if not isinstance(v, Object):
                raise ExpressionError(f"in {self.text!r}: & needs an object")
            return v.address_of()
        if tok == "-":
            self.take()
            return -_int(self.unary())
        if tok == "~":
            self.take()
            return ~_int(self.unary())
        if tok == "(" and self._type_follows(1):
            self.take("(")
            type_name = self.type_name()
            self.take(")")
            v = self.unary()
            if isinstance(v, Object):
                return v.cast(type_name)
            return cast(self.dump, type_name, v)
        if tok == "sizeof":
            self.take()
            self.take("(")
            if self._type_follows(0):
                type_name = self.type_name()
                self.take(")")
                return self.dump.types.sizeof(type_name)
            v = self.additive()
            self.take(")")
            if not isinstance(v, Object):
                raise ExpressionError(f"in {self.text!r}: sizeof of a number")
            return v.sizeof()
        return self.postfix()

    def postfix(self) -> Value:
        v = self.primary()
        while self.peek() in (".", "->", "["):
            op = self.take()
            if op == "[":
                index = _int(self.additive())
                self.take("]")
                if not isinstance(v, Object):
                    raise ExpressionError(f"in {self.text!r}: a number cannot be indexed")
                v = v[index]
                continue
            name = self.take()
            if not isinstance(v, Object):
                raise ExpressionError(f"in {self.text!r}: a number has no member {name!r}")
            v = v.member(name)
        return v

    def primary(self) -> Value:
        tok = self.take()
        if tok == "(":
            v = self.additive()
            self.take(")")
            return v
        if tok[0].isdigit():
            return int(tok, 0)
        if re.match(r"[A-Za-z_]", tok):
            return self._name(tok)
        raise ExpressionError(f"in {self.text!r}: unexpected {tok!r}")

    def _name(self, name: str) -> Value:
        if self.dump.resolve_symbol(name) is not None:
            return self.dump.object(name)
        try:
            return self.dump.types.enum_value(None, name)
        except KvmcoreError:
            pass
        raise ExpressionError(f"no symbol or enumerator {name!r}")

    # -- types -------------------------------------------------------------------
    def _type_follows(self, ahead: int) -> bool:
        tok = self.peek(ahead)
        if tok is None:
            return False
        if tok in _TYPE_WORDS:
            return True
        nxt = self.peek(ahead + 1)
        # `(name)` or `(name *)` where name is a typedef, not a symbol
        if re.match(r"[A-Za-z_]", tok) and nxt in (")", "*"):
            return self.dump.types.find(tok) is not None
        return False

    def type_name(self) -> str:
        words: list[str] = []
        while (tok := self.peek()) is not None and re.match(r"[A-Za-z_]", tok):
            words.append(self.take())
        stars = 0
        while self.peek() == "*":
            self.take()
            stars += 1
        if not words:
            raise ExpressionError(f"in {self.text!r}: expected a type name")
        return " ".join(words) + (" " + "*" * stars if stars else "")

    def _arith(self, op: str, left: Value, right: Value) -> Value:
        if isinstance(left, Object) and left.type.strip().kind == "ptr":
            target = left.type.strip().target
            size = self.dump.types.sizeof_type(target) if target is not None else 1
            delta = _int(right) * max(size, 1)
            value = left.value() + (delta if op == "+" else -delta)
            return Object(
                self.dump, left.type, value=value & ((1 << (self.dump.word_size * 8)) - 1)
            )
        a, b = _int(left), _int(right)
        return a + b if op == "+" else a - b


def _int(v: Value) -> int:
    if isinstance(v, int):
        return v
    try:
        return int(v)
    except TypeInfoError:
        raise ExpressionError(f"{v.type_name} is not a number") from None


def evaluate(dump: Dump, text: str) -> Value:
    """The value of C expression `text` in the dumped kernel."""
    if not text.strip():
        raise ExpressionError("an empty expression")
    return _Parser(dump, text).parse()


def parse_type(dump: Dump, text: str) -> str:
    """A type name as written (`struct task_struct`, `task_struct`, `u64 *`),
    normalized to one the type sources know."""
    name = " ".join(text.split())
    if dump.types.find(name) is not None:
        return name
    for space in ("struct", "union", "enum"):
        if dump.types.find(f"{space} {name}") is not None:
            return f"{space} {name}"
    raise TypeInfoError(f"type {text!r} is unknown", dump.path)
