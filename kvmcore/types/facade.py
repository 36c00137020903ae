"""TypeInfo: one question-answering front over the type sources.

Sources are asked in order (BTF, DWARF, whichever was preferred first); the
VMCOREINFO helper variables answer only what no source knows. Type names are
spelled as in C: "struct task_struct", "union thread_union", "enum pid_type",
typedef and base names ("pid_t", "unsigned long"), with trailing "*" for
pointers. Member paths walk nested and anonymous structs/unions: "thread.sp",
"tasks.next", "pids[1].node".
"""

from __future__ import annotations

import re
from typing import Protocol

from ..errors import TypeInfoError
from .helpers import VmcoreInfoTypes
from .model import VOID, Member, Resolver, Type

# C spellings -> the names compilers give base types in BTF and DWARF
BASE_ALIASES = {
    "unsigned": "unsigned int",
    "signed": "int",
    "signed int": "int",
    "long": "long int",
    "signed long": "long int",
    "unsigned long": "long unsigned int",
    "short": "short int",
    "unsigned short": "short unsigned int",
    "long long": "long long int",
    "unsigned long long": "long long unsigned int",
    "bool": "_Bool",
}
_COMPONENT = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")
MAX_DEPTH = 32


class TypeSource(Protocol):
    name: str

    def lookup(self, space: str, name: str) -> Type | None: ...

    def find_enumerator(self, name: str) -> tuple[Type, int] | None: ...


def type_size(t: Type, word_size: int, depth: int = 0) -> int:
    """Size in bytes of `t`, computing arrays and pointers."""
    if depth > MAX_DEPTH:
        raise TypeInfoError(f"type nesting deeper than {MAX_DEPTH} sizing {t.c_name}")
    t = t.strip()
    if t.kind == "ptr":
        return word_size
    if t.kind == "array":
        return (t.length or 0) * type_size(t.target or VOID, word_size, depth + 1)
    if t.kind == "void":
        return 1  # as gcc's sizeof(void)
    if t.size is None:
        raise TypeInfoError(f"{t.c_name} has no size (incomplete type)")
    return t.size


def _find_member(t: Type, name: str, depth: int = 0) -> tuple[int, Member] | None:
    """(bit offset, member) of `name` in struct/union `t`, looking through
    anonymous members."""
    st = t.strip()
    if st.kind not in ("struct", "union") or depth > MAX_DEPTH:
        return None
    for m in st.members:
        if m.name == name:
            return m.bit_offset, m
    for m in st.members:
        if m.name is None:
            hit = _find_member(m.type, name, depth + 1)
            if hit:
                return m.bit_offset + hit[0], hit[1]
    return None


def _member_names(t: Type, depth: int = 0) -> list[str]:
    out: list[str] = []
    st = t.strip()
    if depth > MAX_DEPTH:
        return out
    for m in st.members:
        if m.name:
            out.append(m.name)
        else:
            out.extend(_member_names(m.type, depth + 1))
    return out


def _always(t: Type) -> Resolver:
    """A resolver answering `t` for every key: the target of a pointer type
    made from a name ("struct page *")."""
    return lambda _key: t


class TypeInfo:
    """Sizes, offsets and layouts of the dumped kernel's types."""

    def __init__(
        self,
        sources: list[TypeSource],
        helpers: VmcoreInfoTypes | None = None,
        word_size: int = 8,
        origin: str | None = None,
        notes: list[str] | None = None,
    ) -> None:
        self.sources = sources
        self.helpers = helpers
        self.word_size = word_size
        self.origin = origin
        #: why a source is missing (e.g. "no BTF: ..."), for error messages
        self.notes = notes or []

    # -- resolving names -----------------------------------------------------
    def _resolve_in(self, src: TypeSource, type_name: str) -> Type | None:
        name = " ".join(type_name.split())
        stars = 0
        while name.endswith("*"):
            stars += 1
            name = name[:-1].rstrip()
        t = self._named(src, name)
        if t is None:
            return None
        for _ in range(stars):
            t = Type("ptr", None, self.word_size, key=None, target_key=0, resolve=_always(t))
        return t

    @staticmethod
    def _named(src: TypeSource, name: str) -> Type | None:
        for space in ("struct", "union", "enum"):
            if name.startswith(space + " "):
                return src.lookup(space, name[len(space) + 1 :].strip())
        name = name.replace("const ", "").replace("volatile ", "").strip()
        if name == "void":
            return VOID
        order = [("typedef", name), ("base", BASE_ALIASES.get(name, name))]
        if name in BASE_ALIASES or " " in name:
            order.reverse()  # a C base type: do not make DWARF scan for a typedef first
        for space, key in order + [("struct", name), ("union", name), ("enum", name)]:
            t = src.lookup(space, key)
            if t is not None:
                return t
        return None

    def find(self, type_name: str) -> tuple[Type, str] | None:
        """(type, source name) from the first source that knows it."""
        for src in self.sources:
            t = self._resolve_in(src, type_name)
            if t is not None:
                return t, src.name
        return None

    def type(self, type_name: str) -> Type:
        hit = self.find(type_name)
        if hit is None:
            raise self._unknown(type_name)
        return hit[0]

    def _unknown(self, type_name: str) -> TypeInfoError:
        if not self.sources and self.notes:  # no BTF and no DWARF: say what would help
            return TypeInfoError(
                f"type {type_name!r} is unknown: {'; '.join(self.notes)}", self.origin
            )
        srcs = ", ".join(s.name for s in self.sources) or "no type source"
        extra = f" ({'; '.join(self.notes)})" if self.notes else ""
        return TypeInfoError(
            f"type {type_name!r} is unknown to {srcs}"
            f"{' and VMCOREINFO' if self.helpers else ''}{extra}",
            self.origin,
        )

    def source_of(self, type_name: str) -> str:
        """ "btf", "dwarf" or "vmcoreinfo": which source answers for the type."""
        hit = self.find(type_name)
        if hit:
            return hit[1]
        if self.helpers and self.helpers.knows(type_name):
            return "vmcoreinfo"
        raise self._unknown(type_name)

    # -- sizes and members ---------------------------------------------------
    def sizeof(self, type_name: str) -> int:
        hit = self.find(type_name)
        if hit:
            return type_size(hit[0], self.word_size)
        if self.helpers:
            size = self.helpers.sizeof(type_name)
            if size is not None:
                return size
        raise self._unknown(type_name)

    def sizeof_type(self, t: Type) -> int:
        return type_size(t, self.word_size)

    def member(self, type_name: str, member_path: str) -> tuple[int, int, Type]:
        """(bit offset, bit size, type) of a member path inside type_name."""
        t = self.type(type_name)
        return self._walk(t, type_name, member_path)

    def _walk(self, t: Type, type_name: str, member_path: str) -> tuple[int, int, Type]:
        bit_offset, bit_size = 0, 0
        cur = t
        for part in member_path.split("."):
            match = _COMPONENT.match(part.strip())
            if not match:
                raise TypeInfoError(f"bad member path {member_path!r}", self.origin)
            hit = _find_member(cur, match.group(1))
            if hit is None:
                raise TypeInfoError(
                    f"{type_name} has no member {member_path!r} "
                    f"({cur.c_name} lacks {match.group(1)!r})",
                    self.origin,
                )
            off, m = hit
            bit_offset += off
            bit_size = m.bit_size
            cur = m.type
            for idx in re.findall(r"\[(\d+)\]", match.group(2)):
                arr = cur.strip()
                if arr.kind not in ("array", "ptr") or arr.target is None:
                    raise TypeInfoError(
                        f"{type_name}.{member_path}: {arr.c_name} is not an array", self.origin
                    )
                if arr.kind == "ptr":
                    raise TypeInfoError(
                        f"{type_name}.{member_path}: indexing a pointer needs a memory read",
                        self.origin,
                    )
                cur = arr.target
                bit_offset += int(idx) * type_size(cur, self.word_size) * 8
                bit_size = 0
        return bit_offset, bit_size, cur

    def offsetof(self, type_name: str, member_path: str) -> int:
        """Byte offset of member_path ("thread.sp", "tasks.next") in type_name."""
        hit = self.find(type_name)
        if hit:
            try:
                return self._walk(hit[0], type_name, member_path)[0] // 8
            except TypeInfoError:
                if not self.helpers or self.helpers.offsetof(type_name, member_path) is None:
                    raise
        if self.helpers:
            value = self.helpers.offsetof(type_name, member_path)
            if value is not None:
                return value
        raise (
            self._unknown(type_name)
            if not hit
            else TypeInfoError(f"{type_name} has no member {member_path!r}", self.origin)
        )

    def has_member(self, type_name: str, member_path: str) -> bool:
        try:
            self.offsetof(type_name, member_path)
            return True
        except TypeInfoError:
            return False

    def members(self, type_name: str) -> list[str]:
        """Member names, with anonymous struct/union members flattened in."""
        hit = self.find(type_name)
        if hit:
            return _member_names(hit[0])
        if self.helpers and self.helpers.knows(type_name):
            return self.helpers.members(type_name)
        raise self._unknown(type_name)

    def member_type(self, type_name: str, member: str) -> Type:
        return self.member(type_name, member)[2]

    def array_length(self, type_name: str, member: str) -> int:
        hit = self.find(type_name)
        if hit:
            try:
                t = self._walk(hit[0], type_name, member)[2].strip()
                if t.kind == "array":
                    return t.length or 0
                raise TypeInfoError(
                    f"{type_name}.{member} is {t.c_name}, not an array", self.origin
                )
            except TypeInfoError:
                if not self.helpers or self.helpers.array_length(type_name, member) is None:
                    raise
        if self.helpers:
            value = self.helpers.array_length(type_name, member)
            if value is not None:
                return value
        raise self._unknown(type_name)

    # -- enums -----------------------------------------------------------------
    def enumerators(self, enum_name: str) -> dict[str, int]:
        t = self.type(enum_name if " " in enum_name else f"enum {enum_name}").strip()
        if t.kind != "enum":
            raise TypeInfoError(f"{enum_name} is {t.c_name}, not an enum", self.origin)
        return dict(t.enumerators)

    def enum_value(self, enum_name: str | None, enumerator: str) -> int:
        """Value of `enumerator`; with enum_name None, from whichever enum has it."""
        if enum_name:
            values = self.enumerators(enum_name)
            if enumerator not in values:
                raise TypeInfoError(f"{enum_name} has no enumerator {enumerator}", self.origin)
            return values[enumerator]
        for src in self.sources:
            hit = src.find_enumerator(enumerator)
            if hit:
                return hit[1]
        raise TypeInfoError(f"no enum has enumerator {enumerator}", self.origin)

    def __repr__(self) -> str:
        names = [s.name for s in self.sources] + (["vmcoreinfo"] if self.helpers else [])
        return f"<TypeInfo {'+'.join(names)}>"
