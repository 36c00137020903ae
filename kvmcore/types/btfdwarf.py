"""The kernel's BTF as DWARF 4 (`.debug_info`, `.debug_abbrev`, `.debug_str`),
for the symbol file `kvmcore symfile` writes: gdb then knows the kernel's
types, and the global variables it is given, with no vmlinux.

One compilation unit; one DIE per BTF type (keyed by its id, referenced with
DW_FORM_ref4), in id order. What is written: base types (int, float, with
char and bool encodings), structs and unions (members at
DW_AT_data_member_location, bitfields with DW_AT_data_bit_offset and
DW_AT_bit_size), enums, forward declarations (DW_AT_declaration), typedefs,
pointers, const/volatile/restrict, arrays (a DW_TAG_subrange_type with
DW_AT_count) and function prototypes (DW_TAG_subroutine_type with their
formal parameters, `...` as DW_TAG_unspecified_parameters) - those only when
some other type or variable uses them: BTF has a prototype for each of the
kernel's functions, which gdb does not need without the functions' code
ranges. Type tags (`__user`, `__rcu` as btf_type_tag) are looked through:
DWARF 4 has no such DIE. BTF's FUNC records (functions) are not written,
nor DECL_TAGs.

Variables are given by the caller (`Variable`): a name, a BTF type id and a
DWARF location expression (DW_OP_addr for a link address gdb relocates,
a constant for a per-CPU offset it must not move).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ..symbols import dwarfgen as d
from .btf import BtfTypes

PRODUCER = "kvmcore symfile (from the kernel's BTF)"

_QUALIFIER_TAGS = {
    "const": d.DW_TAG_const_type,
    "volatile": d.DW_TAG_volatile_type,
    "restrict": d.DW_TAG_restrict_type,
}
#: kinds written whether or not anything refers to them
_ROOT_KINDS = frozenset(
    {
        "int",
        "float",
        "ptr",
        "array",
        "struct",
        "union",
        "enum",
        "enum64",
        "fwd",
        "typedef",
        "const",
        "volatile",
        "restrict",
    }
)
_BTF_INT_SIGNED, _BTF_INT_CHAR, _BTF_INT_BOOL = 1, 2, 4


@dataclass(frozen=True)
class Variable:
    name: str
    type_id: int
    location: bytes  # a DWARF location expression (dwarfgen.DieWriter.addr_expr/const_expr)


@dataclass
class DwarfSections:
    info: bytes
    abbrev: bytes
    strings: bytes
    types: int  # DIEs for BTF types
    variables: int

    def sections(self) -> dict[str, bytes]:
        return {".debug_info": self.info, ".debug_abbrev": self.abbrev, ".debug_str": self.strings}


class _Translator:
    def __init__(self, btf: BtfTypes, writer: d.DieWriter) -> None:
        self.btf = btf
        self.w = writer
        self._alias: dict[int, int] = {}

    def ref(self, tid: object) -> int:
        """The id whose DIE stands for BTF type `tid`: type tags looked
        through; 0 for void (no DW_AT_type)."""
        if not isinstance(tid, int):
            return 0
        hit = self._alias.get(tid)
        if hit is not None:
            return hit
        seen = 0
        cur = tid
        while cur and self.btf.kind_of(cur) == "type_tag" and seen < 64:
            t = self.btf.type_by_id(cur)
            cur = t.target_key if t is not None and isinstance(t.target_key, int) else 0
            seen += 1
        if cur and self.btf.kind_of(cur) in (None, "func", "var", "datasec", "decl_tag"):
            cur = 0
        self._alias[tid] = cur
        return cur

    def reachable(self, roots: Iterable[int]) -> list[int]:
        """Every type to write, in id order: the root kinds, the variables'
        types, and what they refer to."""
        btf = self.btf
        keep: set[int] = set()
        stack = [tid for tid in range(1, len(btf) + 1) if btf.kind_of(tid) in _ROOT_KINDS]
        stack += [self.ref(r) for r in roots]
        while stack:
            tid = stack.pop()
            if not tid or tid in keep:
                continue
            keep.add(tid)
            t = btf.type_by_id(tid)
            if t is None:
                continue
            if t.target_key is not None:
                stack.append(self.ref(t.target_key))
            for m in t.members:
                stack.append(self.ref(m.type_key))
            if t.kind == "array":
                stack.append(self.ref(self.btf.array_index_type(tid)))
        return sorted(keep)

    def type_attr(self, tid: object) -> list[d.Attr]:
        r = self.ref(tid)
        return [(d.DW_AT_type, d.DW_FORM_ref4, r)] if r else []

    def emit(self, tid: int) -> None:
        t = self.btf.type_by_id(tid)
        if t is None:
            return
        w, kind = self.w, self.btf.kind_of(tid)
        name: list[d.Attr] = [(d.DW_AT_name, d.DW_FORM_strp, t.name)] if t.name else []
        if kind == "int":
            enc = self.btf.int_encoding(tid)
            size = t.size or 0
            if enc & _BTF_INT_BOOL:
                ate = d.DW_ATE_boolean
            elif size == 1 and (enc & _BTF_INT_CHAR or "char" in (t.name or "")):
                ate = d.DW_ATE_signed_char if enc & _BTF_INT_SIGNED else d.DW_ATE_unsigned_char
            else:
                ate = d.DW_ATE_signed if enc & _BTF_INT_SIGNED else d.DW_ATE_unsigned
            w.die(
                d.DW_TAG_base_type,
                name
                + [
                    (d.DW_AT_byte_size, d.DW_FORM_udata, size),
                    (d.DW_AT_encoding, d.DW_FORM_data1, ate),
                ],
                key=tid,
            )
        elif kind == "float":
            w.die(
                d.DW_TAG_base_type,
                name
                + [
                    (d.DW_AT_byte_size, d.DW_FORM_udata, t.size or 0),
                    (d.DW_AT_encoding, d.DW_FORM_data1, d.DW_ATE_float),
                ],
                key=tid,
            )
        elif kind == "ptr":
            w.die(
                d.DW_TAG_pointer_type,
                [(d.DW_AT_byte_size, d.DW_FORM_data1, w.address_size)]
                + self.type_attr(t.target_key),
                key=tid,
            )
        elif kind in _QUALIFIER_TAGS:
            w.die(_QUALIFIER_TAGS[kind], self.type_attr(t.target_key), key=tid)
        elif kind == "typedef":
            w.die(d.DW_TAG_typedef, name + self.type_attr(t.target_key), key=tid)
        elif kind == "array":
            w.die(d.DW_TAG_array_type, self.type_attr(t.target_key), children=True, key=tid)
            w.die(
                d.DW_TAG_subrange_type,
                self.type_attr(self.btf.array_index_type(tid))
                + [(d.DW_AT_count, d.DW_FORM_udata, t.length or 0)],
            )
            w.end()
        elif kind in ("struct", "union"):
            tag = d.DW_TAG_structure_type if kind == "struct" else d.DW_TAG_union_type
            attrs = name + [(d.DW_AT_byte_size, d.DW_FORM_udata, t.size or 0)]
            w.die(tag, attrs, children=bool(t.members), key=tid)
            for m in t.members:
                self.member(m.name, m.type_key, m.bit_offset, m.bit_size)
            if t.members:
                w.end()
        elif kind in ("enum", "enum64"):
            attrs = name + [(d.DW_AT_byte_size, d.DW_FORM_udata, t.size or 0)]
            if not t.enumerators:
                w.die(
                    d.DW_TAG_enumeration_type,
                    attrs + [(d.DW_AT_declaration, d.DW_FORM_flag_present, True)],
                    key=tid,
                )
                return
            w.die(d.DW_TAG_enumeration_type, attrs, children=True, key=tid)
            for ename, value in t.enumerators.items():
                form = d.DW_FORM_sdata if value < 0 else d.DW_FORM_udata
                w.die(
                    d.DW_TAG_enumerator,
                    [(d.DW_AT_name, d.DW_FORM_strp, ename), (d.DW_AT_const_value, form, value)],
                )
            w.end()
        elif kind == "fwd":
            tag = d.DW_TAG_union_type if t.enumerators.get("union") else d.DW_TAG_structure_type
            w.die(tag, name + [(d.DW_AT_declaration, d.DW_FORM_flag_present, True)], key=tid)
        elif kind == "func_proto":
            params = t.members
            w.die(
                d.DW_TAG_subroutine_type,
                [(d.DW_AT_prototyped, d.DW_FORM_flag_present, True)] + self.type_attr(t.target_key),
                children=bool(params),
                key=tid,
            )
            for p in params:
                if p.type_key == 0 and p is params[-1]:  # `...`
                    w.die(d.DW_TAG_unspecified_parameters)
                else:
                    w.die(d.DW_TAG_formal_parameter, self.type_attr(p.type_key))
            if params:
                w.end()

    def member(self, name: str | None, type_key: object, bit_offset: int, bit_size: int) -> None:
        attrs: list[d.Attr] = [(d.DW_AT_name, d.DW_FORM_strp, name)] if name else []
        attrs += self.type_attr(type_key)
        if not bit_size and isinstance(type_key, int) and self.btf.kind_of(type_key) == "int":
            # a bitfield of a struct without kind_flag: the bits are the int's own
            t = self.btf.type_by_id(type_key)
            if t is not None and t.bit_size and t.size and t.bit_size < 8 * t.size:
                bit_size = t.bit_size
        if bit_size:
            attrs += [
                (d.DW_AT_data_bit_offset, d.DW_FORM_udata, bit_offset),
                (d.DW_AT_bit_size, d.DW_FORM_udata, bit_size),
            ]
        elif bit_offset % 8:
            attrs.append((d.DW_AT_data_bit_offset, d.DW_FORM_udata, bit_offset))
        else:
            attrs.append((d.DW_AT_data_member_location, d.DW_FORM_udata, bit_offset // 8))
        self.w.die(d.DW_TAG_member, attrs)


def btf_to_dwarf(
    btf: BtfTypes,
    variables: Iterable[Variable] = (),
    address_size: int = 8,
    byteorder: str = "<",
) -> DwarfSections:
    """The DWARF of `btf`'s types and of `variables` (one per name: the first wins)."""
    w = d.DieWriter(address_size, byteorder)
    tr = _Translator(btf, w)
    unique: dict[str, Variable] = {}
    for v in variables:
        if v.name not in unique and tr.ref(v.type_id):
            unique.setdefault(v.name, v)
    w.die(
        d.DW_TAG_compile_unit,
        [
            (d.DW_AT_producer, d.DW_FORM_strp, PRODUCER),
            (d.DW_AT_language, d.DW_FORM_data1, d.DW_LANG_C89),
            (d.DW_AT_name, d.DW_FORM_strp, "<kernel BTF>"),
            # no code, but a range of one byte at 1 (0 is
            # "no range" to gdb): a unit with a range is
            # not given its variables' addresses in gdb's
            # address map, which would take the unit for
            # the owner of those addresses and warn "pc
            # ... in address map, but not in symtab"
            (d.DW_AT_low_pc, d.DW_FORM_addr, 1),
            (d.DW_AT_high_pc, d.DW_FORM_data1, 1),
        ],
        children=True,
    )
    ids = tr.reachable(v.type_id for v in unique.values())
    for tid in ids:
        tr.emit(tid)
    for v in unique.values():
        w.die(
            d.DW_TAG_variable,
            [
                (d.DW_AT_name, d.DW_FORM_strp, v.name),
                (d.DW_AT_type, d.DW_FORM_ref4, tr.ref(v.type_id)),
                (d.DW_AT_external, d.DW_FORM_flag_present, True),
                (d.DW_AT_location, d.DW_FORM_exprloc, v.location),
            ],
        )
    w.end()
    info, abbrev, strs = w.finish()
    return DwarfSections(info, abbrev, strs, len(ids), len(unique))
