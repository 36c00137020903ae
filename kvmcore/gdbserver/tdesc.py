"""Target descriptions (`qXfer:features:read:target.xml`) built from an
architecture's `GdbTarget` (kvmcore.cpu), plus the register block codec for
`g` and `p` replies.

An architecture declares only its registers; the XML, the `g` layout and the
custom types gdb's features expect (flags, vectors) come from here.
"""

from __future__ import annotations

from xml.sax.saxutils import quoteattr

from ..cpu import GdbRegister, GdbTarget
from ..registry import Arch

# Custom types named by gdb's standard features; gdb does not predefine them,
# so a description that uses one must define it. Built from the field lists.
_FLAGS = {
    "i386_eflags": (
        4,
        [
            "CF",
            None,
            "PF",
            None,
            "AF",
            None,
            "ZF",
            "SF",
            "TF",
            "IF",
            "DF",
            "OF",
            None,
            None,
            "NT",
            None,
            "RF",
            "VM",
            "AC",
            "VIF",
            "VIP",
            "ID",
        ],
    ),
    "i386_mxcsr": (
        4,
        [
            "IE",
            "DE",
            "ZE",
            "OE",
            "UE",
            "PE",
            "DAZ",
            "IM",
            "DM",
            "ZM",
            "OM",
            "UM",
            "PM",
            None,
            None,
            "FZ",
        ],
    ),
    "cpsr_flags": (
        4,
        {
            "SP": 0,
            "EL": (2, 3),
            "nRW": 4,
            "F": 6,
            "I": 7,
            "A": 8,
            "D": 9,
            "SSBS": 12,
            "BTYPE": (10, 11),
            "IL": 20,
            "SS": 21,
            "PAN": 22,
            "UAO": 23,
            "DIT": 24,
            "TCO": 25,
            "V": 28,
            "C": 29,
            "Z": 30,
            "N": 31,
        },
    ),
}
_VECTORS = {
    "vec128": [
        ("v4_float", "ieee_single", 4),
        ("v2_double", "ieee_double", 2),
        ("v16_int8", "int8", 16),
        ("v8_int16", "int16", 8),
        ("v4_int32", "int32", 4),
        ("v2_int64", "int64", 2),
    ]
}


def _type_xml(type_id: str) -> str:
    if type_id in _FLAGS:
        size, fields = _FLAGS[type_id]
        items = (
            fields.items()
            if isinstance(fields, dict)
            else ((n, i) for i, n in enumerate(fields) if n)
        )
        lines = [f'  <flags id="{type_id}" size="{size}">']
        for name, bits in items:
            start, end = bits if isinstance(bits, tuple) else (bits, bits)
            lines.append(f'    <field name="{name}" start="{start}" end="{end}"/>')
        lines.append("  </flags>")
        return "\n".join(lines)
    if type_id in _VECTORS:
        lines = []
        for field, elem, count in _VECTORS[type_id]:
            lines.append(f'  <vector id="{type_id}_{field}" type="{elem}" count="{count}"/>')
        lines.append(f'  <union id="{type_id}">')
        for field, _, _ in _VECTORS[type_id]:
            lines.append(f'    <field name="{field}" type="{type_id}_{field}"/>')
        lines.append('    <field name="uint128" type="uint128"/>')
        lines.append("  </union>")
        return "\n".join(lines)
    return ""


def _feature_of(target: GdbTarget, reg: GdbRegister) -> str:
    if reg.feature:
        return reg.feature
    if target.features:
        return target.features[0]
    return f"org.gnu.gdb.{target.arch}.core"


def target_xml(arch: Arch) -> str:
    """The whole description as one document (no xi:include, so one qXfer)."""
    target = arch.gdb
    if target is None or not target.registers:
        return ""
    features: dict[str, list[GdbRegister]] = {}
    for reg in target.registers:
        features.setdefault(_feature_of(target, reg), []).append(reg)
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', "<target>"]
    if target.arch:
        out.append(f"<architecture>{target.arch}</architecture>")
    # a kernel, not a process of its OS: gdb's OS-less ABI takes the server's
    # library list (qXfer:libraries: modules, gdbserver.unwindlib's rows),
    # where GNU/Linux's would look for the dynamic linker's
    out.append("<osabi>none</osabi>")
    regnum = 0
    for name, regs in features.items():
        out.append(f"<feature name={quoteattr(name)}>")
        for type_id in dict.fromkeys(r.type for r in regs):
            xml = _type_xml(type_id)
            if xml:
                out.append(xml)
        for reg in regs:
            group = f" group={quoteattr(reg.group)}" if reg.group else ""
            out.append(
                f'  <reg name={quoteattr(reg.name)} bitsize="{reg.bitsize}" '
                f'type={quoteattr(reg.type)} regnum="{regnum}"{group}/>'
            )
            regnum += 1
        out.append("</feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


class RegisterCodec:
    """Encodes register dicts as the hex of `g`/`p` replies, in tdesc order;
    a register the dict lacks is sent as `xx..` (unavailable)."""

    def __init__(self, arch: Arch) -> None:
        self.byteorder = arch.byteorder
        self.regs = list(arch.gdb.registers) if arch.gdb else []

    def encode_one(self, regs: dict[str, int], index: int) -> str:
        reg = self.regs[index]
        size = (reg.bitsize + 7) // 8
        value = regs.get(reg.source or reg.name)
        if value is None:
            return "xx" * size
        return (value & ((1 << (size * 8)) - 1)).to_bytes(size, self.byteorder).hex()

    def encode_all(self, regs: dict[str, int]) -> str:
        return "".join(self.encode_one(regs, i) for i in range(len(self.regs)))
