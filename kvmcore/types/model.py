"""The small type model every type source (BTF, DWARF) produces.

Types refer to each other lazily (a struct holding a pointer to itself is
the rule in a kernel), so `target` and member types are resolved on access
through the source that made them.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator

Resolver = Callable[[Hashable], "Type | None"]

#: kinds that only wrap another type without changing its layout
TRANSPARENT = frozenset({"typedef", "const", "volatile", "restrict", "type_tag"})
QUALIFIERS = frozenset({"const", "volatile", "restrict", "type_tag"})


class Member:
    """A struct/union member (or a function parameter). `bit_offset` counts
    from the start of the enclosing struct; `bit_size` is 0 unless a bitfield."""

    __slots__ = ("name", "bit_offset", "bit_size", "_key", "_resolve")

    def __init__(
        self,
        name: str | None,
        type_key: Hashable,
        bit_offset: int,
        bit_size: int,
        resolve: Resolver,
    ) -> None:
        self.name = name or None
        self.bit_offset = bit_offset
        self.bit_size = bit_size
        self._key = type_key
        self._resolve = resolve

    @property
    def type(self) -> Type:
        return self._resolve(self._key) or VOID

    @property
    def type_key(self) -> Hashable:
        """The member's type as its source names it (a BTF type id, ...)."""
        return self._key

    @property
    def offset(self) -> int:
        """Byte offset (of the containing unit for a bitfield)."""
        return self.bit_offset // 8

    def __repr__(self) -> str:
        bits = f":{self.bit_size}" if self.bit_size else ""
        return f"<Member {self.name}{bits} @bit {self.bit_offset}>"


class Type:
    """One type. kind is one of: void int float ptr array struct union enum fwd
    typedef const volatile restrict type_tag func func_proto var datasec decl_tag.

    `size` is in bytes (None where the kind has none), `length` is an array's
    element count, `members` lists a struct/union's members (a function
    prototype's parameters), `enumerators` an enum's names -> values,
    `signed` applies to int and enum."""

    __slots__ = (
        "kind",
        "name",
        "size",
        "length",
        "members",
        "enumerators",
        "signed",
        "bit_size",
        "_key",
        "_target_key",
        "_resolve",
        "__weakref__",
    )

    def __init__(
        self,
        kind: str,
        name: str | None = None,
        size: int | None = None,
        *,
        key: Hashable = None,
        target_key: Hashable = None,
        resolve: Resolver | None = None,
        length: int | None = None,
        members: list[Member] | None = None,
        enumerators: dict[str, int] | None = None,
        signed: bool = False,
        bit_size: int | None = None,
    ) -> None:
        self.kind = kind
        self.name = name or None
        self.size = size
        self.length = length
        self.members = members if members is not None else []
        self.enumerators = enumerators if enumerators is not None else {}
        self.signed = signed
        self.bit_size = bit_size
        self._key = key
        self._target_key = target_key
        self._resolve = resolve

    @property
    def target(self) -> Type | None:
        """What a ptr/array/typedef/qualifier points at; a func's return type."""
        if self._target_key is None or self._resolve is None:
            return None
        return self._resolve(self._target_key) or VOID

    @property
    def key(self) -> Hashable:
        """How the source that made this type names it (a BTF type id, ...)."""
        return self._key

    @property
    def target_key(self) -> Hashable:
        """The source's name for `target` (None when there is none; 0 is
        BTF's void)."""
        return self._target_key

    def strip(self, limit: int = 64) -> Type:
        """This type with typedefs and qualifiers peeled off."""
        t: Type = self
        for _ in range(limit):
            if t.kind not in TRANSPARENT:
                return t
            nxt = t.target
            if nxt is None:
                return t
            t = nxt
        return t

    def member(self, name: str) -> Member | None:
        for m in self.members:
            if m.name == name:
                return m
        return None

    def iter_members(self) -> Iterator[Member]:
        return iter(self.members)

    @property
    def c_name(self) -> str:
        """The name as C spells it: "struct list_head", "u64", "int *"..."""
        if self.kind in ("struct", "union", "enum"):
            return f"{self.kind} {self.name}" if self.name else f"{self.kind} <anonymous>"
        if self.kind == "fwd":
            return f"struct {self.name}"
        if self.kind == "ptr":
            tgt = self.target
            return (tgt.c_name if tgt else "void") + " *"
        if self.kind == "array":
            tgt = self.target
            return f"{tgt.c_name if tgt else 'void'}[{self.length}]"
        if self.kind in QUALIFIERS:
            tgt = self.target
            return f"{self.kind} {tgt.c_name if tgt else 'void'}"
        return self.name or self.kind

    def __repr__(self) -> str:
        return f"<Type {self.kind} {self.c_name} size={self.size}>"


VOID = Type("void", "void", None)
