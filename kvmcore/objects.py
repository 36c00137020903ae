"""Typed objects: kernel memory read through the dump's types, as drgn's
Object is, from BTF, DWARF or the VMCOREINFO helpers alike.

    task = dump.object("init_task")              # a global variable (BTF VAR / symbol)
    task.comm.string()                           # 'swapper/0'
    task.tasks.next                              # a struct list_head * (an Object)
    for t in list_for_each_entry("struct task_struct", task.tasks.address_of(), "tasks"):
        print(t.pid.value(), t.comm.string())
    dump.cast("struct task_struct *", addr).deref().pid.value()

An Object has a type and either an address (an lvalue in memory) or a value
(a pointer made by `address_of`, a cast of a number). Members, array
elements and dereferences make new Objects without reading; `value()`,
`string()`, `int()` read. Every collection walk here is bounded and
cycle-checked: a corrupt list ends with a WalkError, never a hang.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .errors import TypeInfoError, WalkError
from .types.model import Type

if TYPE_CHECKING:
    from .dump import Dump

#: the most entries one walk yields before it is taken for a loop
MAX_ENTRIES = 1 << 20
MAX_STRING = 1 << 16
MAX_VALUE_DEPTH = 8
_PART = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)((?:\[\d+\])*)$")


def _pointer_to(t: Type) -> Type:
    """A pointer type to `t` (types from BTF or DWARF rarely have one ready)."""
    return Type("ptr", None, None, key=("ptr-to", id(t)), target_key=0, resolve=lambda _k: t)


class Object:
    """A value of a C type in the dumped kernel's memory."""

    __slots__ = ("_bit_offset", "_bit_size", "_dump", "_snap", "_value", "address", "type")

    def __init__(
        self,
        dump: Dump,
        type_: Type,
        address: int | None = None,
        value: int | None = None,
        bit_offset: int = 0,
        bit_size: int = 0,
        snapshot: tuple[int, bytes] | None = None,
    ) -> None:
        if (address is None) == (value is None):
            raise TypeInfoError("an Object has either an address or a value")
        self._dump = dump
        self.type = type_
        #: where the object lives (None for a value such as `&x`)
        self.address = address
        self._value = value
        self._bit_offset = bit_offset
        self._bit_size = bit_size
        #: (address, bytes) read by read_() of this object or of one holding it
        self._snap = snapshot

    def _read(self, address: int, length: int) -> bytes:
        """Memory at `address`: from the snapshot when it holds it."""
        snap = self._snap
        if snap is not None:
            at = address - snap[0]
            if at >= 0 and at + length <= len(snap[1]):
                return snap[1][at : at + length]
        return self._dump.read(address, length)

    def read_(self) -> Object:
        """This object with its bytes read now, in one read: its members' values
        then come from those bytes (as drgn's Object.read_()); one read of a
        task_struct instead of one per member read."""
        if self.address is None:
            return self
        data = self._dump.read(self.address, self.sizeof())
        return Object(
            self._dump,
            self.type,
            address=self.address,
            bit_offset=self._bit_offset,
            bit_size=self._bit_size,
            snapshot=(self.address, data),
        )

    # -- describing ------------------------------------------------------------
    @property
    def type_name(self) -> str:
        return self.type.c_name

    @property
    def _kind(self) -> str:
        return self.type.strip().kind

    def sizeof(self) -> int:
        return self._dump.types.sizeof_type(self.type)

    def __repr__(self) -> str:
        if self._kind == "ptr" or self.address is None:
            return (
                f"({self.type_name}){self.value():#x}"
                if self._kind in ("ptr", "int")
                else f"({self.type_name}){self.value()!r}"
            )
        return f"*({self.type_name} *){self.address:#x}"

    # -- navigating ------------------------------------------------------------
    def member(self, path: str) -> Object:
        """A member by C path: "comm", "thread.sp", "pids[1].node", through
        anonymous structs and unions, and through pointers (as `->`)."""
        obj = self
        for part in path.replace("->", ".").split("."):
            m = _PART.match(part.strip())
            if not m:
                raise TypeInfoError(f"bad member path {path!r}", self._dump.path)
            obj = obj._member(m.group(1))
            for index in re.findall(r"\[(\d+)\]", m.group(2)):
                obj = obj[int(index)]
        return obj

    def _member(self, name: str) -> Object:
        obj = self.deref() if self._kind == "ptr" else self
        t = obj.type.strip()
        if t.kind not in ("struct", "union"):
            raise TypeInfoError(
                f"{obj.type_name} has no members (looking for {name!r})", self._dump.path
            )
        hit = _find_member(t, name)
        if hit is None:
            raise TypeInfoError(f"{obj.type_name} has no member {name!r}", self._dump.path)
        bit_offset, member = hit
        if obj.address is None:
            raise TypeInfoError(f"{obj.type_name} is a value, not in memory", self._dump.path)
        start = obj.address * 8 + bit_offset
        if member.bit_size:
            return Object(
                self._dump,
                member.type,
                address=start // 8,
                bit_offset=start % 8,
                bit_size=member.bit_size,
                snapshot=obj._snap,
            )
        return Object(self._dump, member.type, address=start // 8, snapshot=obj._snap)

    def __getattr__(self, name: str) -> Object:
        if name.startswith("_"):
            raise AttributeError(name)
        return self._member(name)

    def __getitem__(self, index: int) -> Object:
        t = self.type.strip()
        target = t.target
        if t.kind not in ("array", "ptr") or target is None:
            raise TypeInfoError(f"{self.type_name} cannot be indexed", self._dump.path)
        size = self._dump.types.sizeof_type(target)
        if t.kind == "array":
            if t.length is not None and t.length and not 0 <= index < t.length:
                raise TypeInfoError(f"index {index} out of {self.type_name}", self._dump.path)
            if self.address is None:
                raise TypeInfoError(f"{self.type_name} is not in memory", self._dump.path)
            return Object(
                self._dump, target, address=self.address + index * size, snapshot=self._snap
            )
        return Object(self._dump, target, address=self.value() + index * size)

    def deref(self) -> Object:
        """What a pointer points at (`*p`)."""
        t = self.type.strip()
        if t.kind != "ptr":
            raise TypeInfoError(f"{self.type_name} is not a pointer", self._dump.path)
        target = t.target
        if target is None or target.strip().kind == "void":
            raise TypeInfoError("cannot dereference a void pointer; cast it first", self._dump.path)
        return Object(self._dump, target, address=self.value())

    def address_of(self) -> Object:
        """`&x`: a pointer value to this object."""
        if self.address is None or self._bit_size:
            raise TypeInfoError(f"cannot take the address of {self.type_name}", self._dump.path)
        return Object(self._dump, _pointer_to(self.type), value=self.address)

    def cast(self, type_name: str) -> Object:
        """This object's value (or, for a struct, its memory) as `type_name`."""
        t = self._dump.types.type(type_name)
        if self.address is not None and self._kind not in ("int", "ptr", "enum"):
            return Object(self._dump, t, address=self.address)
        return Object(self._dump, t, value=self.value())

    # -- reading -----------------------------------------------------------------
    def value(self, depth: int = 0) -> Any:
        """An int for integers, enums and pointers (bool for _Bool), bytes for
        char arrays, a list for other arrays, a dict for structs and unions."""
        if self._value is not None:
            return self._value
        assert self.address is not None
        dump = self._dump
        t = self.type.strip()
        if t.kind in ("int", "enum", "ptr"):
            size = dump.word_size if t.kind == "ptr" else (t.size or dump.word_size)
            if self._bit_size:
                nbytes = (self._bit_offset + self._bit_size + 7) // 8
                raw = int.from_bytes(self._read(self.address, nbytes), dump.byteorder)
                if dump.byteorder == "little":
                    bits = (raw >> self._bit_offset) & ((1 << self._bit_size) - 1)
                else:
                    shift = nbytes * 8 - self._bit_offset - self._bit_size
                    bits = (raw >> shift) & ((1 << self._bit_size) - 1)
                if t.signed and bits >> (self._bit_size - 1):
                    bits -= 1 << self._bit_size
                return bits
            signed = t.signed and t.kind != "ptr"
            v = int.from_bytes(self._read(self.address, size), dump.byteorder, signed=signed)
            return bool(v) if t.kind == "int" and t.name == "_Bool" else v
        if t.kind == "float":
            import struct

            fmt = {4: "f", 8: "d"}.get(t.size or 0)
            if fmt is None:
                raise TypeInfoError(f"{t.c_name} of {t.size} bytes", dump.path)
            order = "<" if dump.byteorder == "little" else ">"
            return struct.unpack(order + fmt, self._read(self.address, t.size or 0))[0]
        if depth >= MAX_VALUE_DEPTH:
            return f"<{self.type_name} at {self.address:#x}>"
        if t.kind == "array":
            target = (t.target or t).strip()
            if target.kind == "int" and target.size == 1:
                return self._read(self.address, self.sizeof())
            return [self[i].value(depth + 1) for i in range(t.length or 0)]
        if t.kind in ("struct", "union"):
            out: dict[str, Any] = {}
            for m in t.members:
                if m.name is None:  # anonymous: its members read as this struct's
                    sub = Object(
                        dump, m.type, address=self.address + m.bit_offset // 8, snapshot=self._snap
                    )
                    value = sub.value(depth + 1)
                    if isinstance(value, dict):
                        out.update(value)
                    continue
                out[m.name] = self._member(m.name).value(depth + 1)
            return out
        raise TypeInfoError(f"cannot read a value of {self.type_name}", dump.path)

    def string(self, limit: int = MAX_STRING) -> str:
        """A char array up to its first NUL, or the C string a char pointer
        points at."""
        t = self.type.strip()
        if t.kind == "array":
            raw = self.value()
            if not isinstance(raw, bytes):
                raise TypeInfoError(f"{self.type_name} is not a char array", self._dump.path)
            return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
        if t.kind == "ptr":
            return self._dump.read_cstring(self.value(), limit)
        raise TypeInfoError(f"{self.type_name} is not a string", self._dump.path)

    def __int__(self) -> int:
        v = self.value()
        if not isinstance(v, int):
            raise TypeInfoError(f"{self.type_name} is not an integer", self._dump.path)
        return int(v)

    __index__ = __int__

    def __bool__(self) -> bool:
        return bool(int(self))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Object):
            return (self.type_name, self.address, self._value) == (
                other.type_name,
                other.address,
                other._value,
            )
        if isinstance(other, int):
            return int(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash((self.type_name, self.address, self._value))


#: _find_member's answers per struct type (task_struct has ~250 members: a
#: scan per access was most of an Object member's cost)
_MEMBERS: weakref.WeakKeyDictionary[Type, dict[str, tuple[int, Any] | None]] = (
    weakref.WeakKeyDictionary()
)


def _find_member(t: Type, name: str, depth: int = 0) -> tuple[int, Any] | None:
    """(bit offset, member) of `name` in struct/union `t`, through anonymous members."""
    if depth == 0:
        known = _MEMBERS.get(t)
        if known is None:
            known = _MEMBERS[t] = {}
        elif name in known:
            return known[name]
        hit = known[name] = _scan_members(t, name, 0)
        return hit
    return _scan_members(t, name, depth)


def _scan_members(t: Type, name: str, depth: int) -> tuple[int, Any] | None:
    if depth > 32:
        return None
    for m in t.members:
        if m.name == name:
            return m.bit_offset, m
    for m in t.members:
        if m.name is None:
            inner = m.type.strip()
            if inner.kind in ("struct", "union"):
                hit = _scan_members(inner, name, depth + 1)
                if hit:
                    return m.bit_offset + hit[0], hit[1]
    return None


# -- making objects ---------------------------------------------------------------
#: Types of globals the commands use. Kernels' BTF records only per-CPU
#: variables (pahole emits no VAR for other globals before 1.26's global_var
#: feature), so without DWARF these are known by name, as crash knows them.
WELL_KNOWN_GLOBALS = {
    "init_task": "struct task_struct",
    "init_uts_ns": "struct uts_namespace",
    "init_mm": "struct mm_struct",
    "init_pid_ns": "struct pid_namespace",
    "init_net": "struct net",
    "jiffies": "unsigned long",
    "jiffies_64": "u64",
    "modules": "struct list_head",
    "super_blocks": "struct list_head",
    "slab_caches": "struct list_head",
    "net_namespace_list": "struct list_head",
    "totalram_pages": "atomic_long_t",
    "nr_cpu_ids": "unsigned int",
    "panic_cpu": "atomic_t",
    "tainted_mask": "unsigned long",
}


def object_of(dump: Dump, name: str) -> Object:
    """The global variable `name`: its address from the symbols, its type from
    BTF's VAR records (or a DWARF type source that knows variables)."""
    address = dump.resolve_symbol(name)
    if address is None:
        raise TypeInfoError(
            f"no symbol {name!r} (kallsyms may lack data symbols: give the "
            "vmlinux or --system-map)",
            dump.path,
        )
    for source in dump.types.sources:
        var = source.lookup("var", name)
        if var is not None and var.target is not None:
            return Object(dump, var.target, address=address)
    known = WELL_KNOWN_GLOBALS.get(name)
    if known is not None:
        return Object(dump, dump.types.type(known), address=address)
    known = ", ".join(s.name for s in dump.types.sources) or "no type source"
    raise TypeInfoError(f"the type of {name!r} is unknown to {known}; use dump.cast", dump.path)


def cast(dump: Dump, type_name: str, value: int) -> Object:
    """`(type_name)value`: a pointer (or integer) value, or for a struct type
    the struct at address `value`."""
    t = dump.types.type(type_name)
    if t.strip().kind in ("struct", "union", "array"):
        return Object(dump, t, address=value)
    return Object(dump, t, value=value & ((1 << (dump.word_size * 8)) - 1))


def container_of(
    ptr: Object | int, type_name: str, member: str, dump: Dump | None = None
) -> Object:
    """The `type_name *` whose `member` is at `ptr` (the kernel's container_of)."""
    if isinstance(ptr, Object):
        dump = ptr._dump
        address = ptr.value() if ptr._kind == "ptr" else ptr.address
    else:
        address = ptr
    if dump is None or address is None:
        raise TypeInfoError("container_of needs a pointer object, or an address and the dump")
    offset = dump.types.offsetof(type_name, member)
    t = dump.types.type(type_name)
    return Object(dump, _pointer_to(t), value=address - offset)


# -- the kernel's collections --------------------------------------------------------
def _address(obj: Object | int) -> int:
    if isinstance(obj, int):
        return obj
    return obj.value() if obj._kind == "ptr" else obj.address  # type: ignore[return-value]


def list_for_each(head: Object, dump: Dump | None = None) -> Iterator[int]:
    """Addresses of the nodes of the circular `struct list_head` list at
    `head` (a list_head or a pointer to one), head excluded."""
    dump = dump or head._dump
    start = _address(head)
    off_next = dump.types.offsetof("struct list_head", "next")
    seen = {start}
    node = dump.read_ptr(start + off_next)
    while node != start:
        if node in seen or len(seen) > MAX_ENTRIES:
            raise WalkError(
                f"list at {start:#x} loops or runs past {MAX_ENTRIES} entries (node {node:#x})",
                dump.path,
            )
        if node == 0:
            raise WalkError(f"list at {start:#x} has a NULL next pointer", dump.path)
        seen.add(node)
        yield node
        node = dump.read_ptr(node + off_next)


def list_for_each_entry(type_name: str, head: Object, member: str) -> Iterator[Object]:
    """Each `type_name *` whose `member` is a node of the list at `head`."""
    for node in list_for_each(head):
        yield container_of(node, type_name, member, head._dump)


def hlist_for_each_entry(type_name: str, head: Object, member: str) -> Iterator[Object]:
    """Each `type_name *` on the `struct hlist_head` at `head`."""
    dump = head._dump
    first = dump.read_ptr(_address(head) + dump.types.offsetof("struct hlist_head", "first"))
    off_next = dump.types.offsetof("struct hlist_node", "next")
    seen: set[int] = set()
    node = first
    while node:
        if node in seen or len(seen) > MAX_ENTRIES:
            raise WalkError(f"hlist at {_address(head):#x} loops (node {node:#x})", dump.path)
        seen.add(node)
        yield container_of(node, type_name, member, dump)
        node = dump.read_ptr(node + off_next)


def rbtree_inorder(root: Object) -> Iterator[int]:
    """Addresses of the `struct rb_node`s of the `struct rb_root` at `root`, in order."""
    dump = root._dump
    types = dump.types
    off_left = types.offsetof("struct rb_node", "rb_left")
    off_right = types.offsetof("struct rb_node", "rb_right")
    node = dump.read_ptr(_address(root) + types.offsetof("struct rb_root", "rb_node"))
    stack: list[int] = []
    count = 0
    while stack or node:
        while node:
            if len(stack) > 64:  # a red-black tree of 2^32 nodes is 64 deep
                raise WalkError(f"rbtree at {_address(root):#x} is deeper than 64", dump.path)
            stack.append(node)
            node = dump.read_ptr(node + off_left)
        node = stack.pop()
        count += 1
        if count > MAX_ENTRIES:
            raise WalkError(
                f"rbtree at {_address(root):#x} has over {MAX_ENTRIES} nodes", dump.path
            )
        yield node
        node = dump.read_ptr(node + off_right)


def rbtree_for_each_entry(type_name: str, root: Object, member: str) -> Iterator[Object]:
    for node in rbtree_inorder(root):
        yield container_of(node, type_name, member, root._dump)


XA_CHUNK_SHIFT = 6  # CONFIG_BASE_SMALL=0


def xa_for_each(xa: Object) -> Iterator[tuple[int, int]]:
    """(index, entry) of every present entry of the `struct xarray` at `xa`
    (also what an `idr`'s idr_rt holds): lib/xarray.c's layout, where an
    internal entry (low bits 10, above 4096) points at a `struct xa_node`."""
    dump = xa._dump
    types = dump.types
    head = dump.read_ptr(_address(xa) + types.offsetof("struct xarray", "xa_head"))
    off_shift = types.offsetof("struct xa_node", "shift")
    off_slots = types.offsetof("struct xa_node", "slots")
    count = 0

    def is_node(entry: int) -> bool:
        return entry & 3 == 2 and entry > 4096

    def walk(entry: int, base: int, depth: int) -> Iterator[tuple[int, int]]:
        nonlocal count
        if depth > 16:
            raise WalkError(f"xarray at {_address(xa):#x} nests deeper than 16", dump.path)
        if not is_node(entry):
            if entry and entry & 3 != 2:  # value or pointer entries; skip retry/sibling marks
                count += 1
                if count > MAX_ENTRIES:
                    raise WalkError(f"xarray at {_address(xa):#x} is too large", dump.path)
                yield base, entry
            return
        node = entry - 2
        shift = dump.read_u8(node + off_shift)
        slots = dump.read_ptrs(node + off_slots, 1 << XA_CHUNK_SHIFT)
        for i, slot in enumerate(slots):
            if slot:
                yield from walk(slot, base + (i << shift), depth + 1)

    yield from walk(head, 0, 0)


def per_cpu_ptr(obj: Object, cpu: int) -> Object:
    """The CPU's copy of a per-CPU variable (`obj` as its symbol places it, or a
    `__percpu` pointer): address + __per_cpu_offset[cpu]."""
    dump = obj._dump
    base = dump.resolve_symbol("__per_cpu_offset")
    if base is None:
        raise TypeInfoError("per-CPU offsets need the __per_cpu_offset symbol", dump.path)
    offset = dump.read_ptr(base + cpu * dump.word_size)
    mask = (1 << (dump.word_size * 8)) - 1
    if obj._kind == "ptr":
        target = obj.type.strip().target
        assert target is not None
        return Object(dump, target, address=(obj.value() + offset) & mask)
    assert obj.address is not None
    return Object(dump, obj.type, address=(obj.address + offset) & mask)


# maple tree (lib/maple_tree.c, 6.1+): an entry with low bits 10 above 4096 is a node;
# its type sits in bits 3-6, the node at the entry with its low byte cleared
MAPLE_NODE_MASK = 0xFF
MAPLE_DENSE, MAPLE_LEAF_64, MAPLE_RANGE_64, MAPLE_ARANGE_64 = range(4)
MAPLE_HEIGHT_MAX = 31


def mt_for_each(mt: Object) -> Iterator[tuple[int, int, int]]:
    """(first, last, entry) of every present entry of the `struct maple_tree` at
    `mt` (a VMA tree `mm->mm_mt`, `sparse_irqs`), in index order, as drgn's
    mt_for_each reads them: a node's data ends at its metadata's `end`, or at
    the last pivot; bounded in depth and size and cycle-checked."""
    dump = mt._dump
    types = dump.types
    where = _address(mt)
    root = dump.read_ptr(where + types.offsetof("struct maple_tree", "ma_root"))
    top = (1 << (dump.word_size * 8)) - 1
    layout = {}
    for kinds, name, struct in (
        ((MAPLE_LEAF_64, MAPLE_RANGE_64), "mr64", "struct maple_range_64"),
        ((MAPLE_ARANGE_64,), "ma64", "struct maple_arange_64"),
    ):
        t = types.type(struct).strip()
        hit = _find_member(t, "slot")
        slots = (hit[1].type.strip().length or 0) if hit else 0
        if slots < 2:
            raise TypeInfoError(f"{struct} has no slot array", dump.path)
        base = types.offsetof("struct maple_node", name)
        for kind in kinds:
            layout[kind] = (
                base + types.offsetof(struct, "pivot"),
                base + types.offsetof(struct, "slot"),
                base
                + types.offsetof(struct, "meta")
                + types.offsetof("struct maple_metadata", "end"),
                slots,
            )
    seen: set[int] = set()
    count = 0

    def is_node(entry: int) -> bool:
        return entry & 3 == 2 and entry > 4096

    def walk(entry: int, lo: int, hi: int, depth: int) -> Iterator[tuple[int, int, int]]:
        nonlocal count
        if depth > MAPLE_HEIGHT_MAX:
            raise WalkError(
                f"maple tree at {where:#x} is deeper than {MAPLE_HEIGHT_MAX}", dump.path
            )
        node = entry & ~MAPLE_NODE_MASK
        kind = (entry >> 3) & 0xF
        if node in seen:
            raise WalkError(f"maple tree at {where:#x} loops (node {node:#x})", dump.path)
        seen.add(node)
        if kind not in layout:
            raise WalkError(f"maple tree at {where:#x}: node {node:#x} of type {kind}", dump.path)
        off_pivot, off_slot, off_end, nslots = layout[kind]
        pivots = dump.read_ptrs(node + off_pivot, nslots - 1)
        slots = dump.read_ptrs(node + off_slot, nslots)
        if kind == MAPLE_ARANGE_64 or not pivots[-1]:
            end = dump.read_u8(node + off_end)
        elif pivots[-1] == hi:
            end = nslots - 2
        else:
            end = nslots - 1
        if end >= nslots:
            raise WalkError(f"maple tree at {where:#x}: node {node:#x} ends at {end}", dump.path)
        first = lo
        for i in range(end + 1):
            last = pivots[i] if i < end else hi
            slot = slots[i]
            if kind == MAPLE_LEAF_64:
                if slot and not (slot & 3 == 2 and slot < 4096):  # skip NULL and zero entries
                    count += 1
                    if count > MAX_ENTRIES:
                        raise WalkError(f"maple tree at {where:#x} is too large", dump.path)
                    yield first, last, slot
            elif slot:
                if not is_node(slot):
                    raise WalkError(f"maple tree at {where:#x}: bad child {slot:#x}", dump.path)
                yield from walk(slot, first, last, depth + 1)
            first = last + 1

    if is_node(root):
        yield from walk(root, 0, top, 0)
    elif root:
        yield 0, 0, root
