"""Exploration commands in crash's vocabulary, over typed objects: `p`,
`struct`/`union`, `whatis`, `rd`, `list`, `task`, `runq`, `vtop`, `ptov`.
Each is a `data(dump, ...) -> dict` (what `--json` prints) and a
`text(data) -> str` (what crash users read), registered in the command table
(kvmcore.commands) like every other command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .cexpr import ExpressionError, evaluate, parse_type
from .errors import KvmcoreError, TypeInfoError
from .objects import Object, list_for_each, per_cpu_ptr
from .textsafe import printable
from .types.model import Type

if TYPE_CHECKING:
    from .dump import Dump

MAX_PRINT_DEPTH = 4
MAX_ARRAY_PRINT = 64
MAX_RD_BYTES = 1 << 20
MAX_LIST = 1 << 16


# -- printing values as gdb/crash do ------------------------------------------------
def format_value(obj: Object | int, depth: int = 0, indent: int = 0) -> str:
    """gdb's spelling of a value: numbers in decimal, pointers as
    `(type *) 0x...`, char arrays as strings, structs as { member = value }."""
    if isinstance(obj, int):
        return str(obj)
    t = obj.type.strip()
    pad = "  " * (indent + 1)
    try:
        if t.kind == "ptr":
            return f"({obj.type_name}) {obj.value():#x}"
        if t.kind in ("int", "float"):
            return str(obj.value())
        if t.kind == "enum":
            v = obj.value()
            names = [n for n, val in t.enumerators.items() if val == v]
            return names[0] if names else str(v)
        if t.kind == "array":
            target = (t.target or t).strip()
            if target.kind == "int" and target.size == 1:
                return repr(obj.string())[1:-1].join('""')
            n = min(t.length or 0, MAX_ARRAY_PRINT)
            items = [format_value(obj[i], depth + 1, indent + 1) for i in range(n)]
            more = ", ..." if (t.length or 0) > n else ""
            return "{" + ", ".join(items) + more + "}"
        if t.kind in ("struct", "union"):
            if depth >= MAX_PRINT_DEPTH:
                return "{...}"
            lines = []
            for m in t.members:
                if m.name is None:
                    inner = Object(obj._dump, m.type, address=obj.address + m.bit_offset // 8)  # type: ignore[operator]
                    lines.append(f"{pad}{format_value(inner, depth + 1, indent + 1)},")
                    continue
                value = format_value(obj.member(m.name), depth + 1, indent + 1)
                lines.append(f"{pad}{m.name} = {value},")
            return "{\n" + "\n".join(lines) + "\n" + "  " * indent + "}"
    except KvmcoreError as exc:
        return f"<unreadable: {exc.message}>"
    return f"<{obj.type_name}>"


def _json_value(v: Object | int) -> Any:
    if isinstance(v, int):
        return v
    try:
        raw = v.value()
    except KvmcoreError as exc:
        return {"unreadable": exc.message}
    return _jsonable(raw)


def _jsonable(raw: Any) -> Any:
    if isinstance(raw, bytes):
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")
    if isinstance(raw, dict):
        return {k: _jsonable(v) for k, v in raw.items()}
    if isinstance(raw, list):
        return [_jsonable(v) for v in raw]
    return raw


# -- p ---------------------------------------------------------------------------------
def p_data(dump: Dump, expression: str) -> dict[str, Any]:
    """The value of a C expression (crash's and gdb's `p`)."""
    v = evaluate(dump, expression)
    if isinstance(v, int):
        return {
            "expression": expression,
            "type": "int",
            "address": None,
            "value": v,
            "text": str(v),
        }
    return {
        "expression": expression,
        "type": v.type_name,
        "address": f"{v.address:#x}" if v.address is not None else None,
        "value": _json_value(v),
        "text": format_value(v),
    }


def p_text(data: dict[str, Any]) -> str:
    return f"$1 = {data['text']}"


# -- struct / union / whatis -------------------------------------------------------------
def _layout(
    dump: Dump, t: Type, offsets: bool, indent: int = 1, base: int = 0, depth: int = 0
) -> list[str]:
    pad = "    " * indent
    out: list[str] = []
    for m in t.strip().members:
        mt = m.type
        off = base + m.bit_offset // 8
        prefix = f"  [{off:#x}]" if offsets else ""
        bits = f" : {m.bit_size}" if m.bit_size else ""
        inner = mt.strip()
        if m.name is None and inner.kind in ("struct", "union") and depth < 8:
            out.append(f"{prefix}{pad}{inner.kind} {{")
            out += _layout(dump, inner, offsets, indent + 1, off, depth + 1)
            out.append(f"{'  ' + ' ' * (len(prefix) - 2) if offsets else ''}{pad}}};")
            continue
        out.append(f"{prefix}{pad}{_declare(mt, m.name or '')}{bits};")
    return out


def _declare(t: Type, name: str) -> str:
    """`type name` with C's array and pointer spelling: `char comm[16]`."""
    suffix = ""
    while t.kind == "array" and t.target is not None:
        suffix += f"[{t.length or ''}]"
        t = t.target
    return f"{t.c_name} {name}{suffix}".replace("* ", "*") if name else t.c_name


def struct_data(
    dump: Dump,
    type_name: str,
    address: str | None = None,
    offsets: bool = False,
    kind: str = "struct",
) -> dict[str, Any]:
    """A struct's layout, or its members' values at an address (crash's `struct`)."""
    name = type_name if type_name.startswith(f"{kind} ") else f"{kind} {type_name}"
    t = dump.types.type(name)
    if t.strip().kind != kind:
        raise TypeInfoError(f"{name} is {t.strip().c_name}, not a {kind}", dump.path)
    out: dict[str, Any] = {
        "type": name,
        "size": dump.types.sizeof(name),
        "members": [
            {
                "name": m.name,
                "offset": m.bit_offset // 8,
                "bit_offset": m.bit_offset,
                "bit_size": m.bit_size,
                "type": m.type.c_name,
            }
            for m in t.strip().members
        ],
    }
    if address is None:
        lines = [f"{name} {{"] + _layout(dump, t, offsets) + ["}", f"SIZE: {out['size']}"]
        out["text"] = "\n".join(lines)
        return out
    addr = _address_arg(dump, address)
    obj = Object(dump, t, address=addr)
    out["address"] = f"{addr:#x}"
    out["value"] = _json_value(obj)
    out["text"] = f"{name} {format_value(obj)}"
    return out


def union_data(
    dump: Dump, type_name: str, address: str | None = None, offsets: bool = False
) -> dict[str, Any]:
    return struct_data(dump, type_name, address, offsets, kind="union")


def whatis_data(dump: Dump, name: str) -> dict[str, Any]:
    """A symbol's type, or a type's definition (crash's `whatis`)."""
    if dump.resolve_symbol(name) is not None:
        try:
            obj = dump.object(name)
            return {
                "name": name,
                "kind": "symbol",
                "type": obj.type_name,
                "text": f"{_declare(obj.type, name)};",
            }
        except TypeInfoError as exc:
            return {"name": name, "kind": "symbol", "type": None, "text": exc.message}
    type_name = parse_type(dump, name)
    t = dump.types.type(type_name)
    st = t.strip()
    if st.kind in ("struct", "union"):
        text = struct_data(dump, type_name, kind=st.kind)["text"]
    elif st.kind == "enum":
        body = ",\n".join(f"    {k} = {v}" for k, v in st.enumerators.items())
        text = f"{st.c_name} {{\n{body}\n}};"
    else:
        text = f"typedef {st.c_name} {type_name};" if t.kind == "typedef" else st.c_name
    return {
        "name": name,
        "kind": "type",
        "type": t.c_name,
        "size": dump.types.sizeof_type(t),
        "text": text,
    }


def text_of(data: dict[str, Any]) -> str:
    return str(data["text"])


# -- rd -------------------------------------------------------------------------------------
def _address_arg(dump: Dump, text: str) -> int:
    """An address given as a number, a symbol (its address, typed or not), or
    an expression (`&x`, a pointer member, ...)."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text.isidentifier():
        address = dump.resolve_symbol(text)
        if address is not None:
            return address
    v = evaluate(dump, text)
    if isinstance(v, int):
        return v
    if v.type.strip().kind == "ptr":
        return int(v.value())
    if v.address is None:
        raise ExpressionError(f"{text!r} has no address")
    return v.address


def rd_data(
    dump: Dump,
    address: str,
    count: int = 1,
    bits8: bool = False,
    bits16: bool = False,
    bits32: bool = False,
    bits64: bool = False,
    symbols: bool = False,
    ascii_only: bool = False,
    physical: bool = False,
) -> dict[str, Any]:
    """Memory as words (-8/-16/-32/-64 bits; default the word size), with
    ASCII, or with `symbols` each word named when it is a kernel symbol, or
    with `ascii_only` as a string (crash's `rd`)."""
    chosen = [w for w, on in ((1, bits8), (2, bits16), (4, bits32), (8, bits64)) if on]
    if len(chosen) > 1:
        raise KvmcoreError("rd: give one of -8, -16, -32, -64")
    width = chosen[0] if chosen else dump.word_size
    addr = _address_arg(dump, address)
    if ascii_only:
        text = dump.read_cstring(addr, min(max(count, 1) * 1024, MAX_RD_BYTES))
        return {
            "address": f"{addr:#x}",
            "ascii": text,
            "words": [],
            "width": width,
            "symbols": symbols,
            "physical": physical,
        }
    nbytes = count * width
    if not 0 < nbytes <= MAX_RD_BYTES:
        raise KvmcoreError(f"rd: {count} words of {width} bytes: at most {MAX_RD_BYTES} bytes")
    raw = dump.read_phys(addr, nbytes) if physical else dump.read(addr, nbytes)
    words = [int.from_bytes(raw[i : i + width], dump.byteorder) for i in range(0, nbytes, width)]
    names: list[str | None] = []
    if symbols:
        table = dump.symbols
        for w in words:
            name = table.symbolize(w) if dump.is_kernel_address(w) else None
            names.append(None if not name or name.startswith("0x") else name)
    return {
        "address": f"{addr:#x}",
        "width": width,
        "words": words,
        "names": names,
        "bytes": raw.hex(),
        "physical": physical,
        "symbols": symbols,
    }


def rd_text(data: dict[str, Any]) -> str:
    if "ascii" in data:
        return f"{data['address']}:  {printable(data['ascii'])}"
    width, words = data["width"], data["words"]
    per_line = max(1, 16 // width)
    addr = int(data["address"], 16)
    raw = bytes.fromhex(data["bytes"])
    lines = []
    for i in range(0, len(words), per_line):
        chunk = words[i : i + per_line]
        if data.get("symbols"):
            cells = [data["names"][i + j] or f"{w:0{width * 2}x}" for j, w in enumerate(chunk)]
            tail = ""
        else:
            cells = [f"{w:0{width * 2}x}" for w in chunk]
            b = raw[i * width : (i + len(chunk)) * width]
            tail = "   " + "".join(chr(c) if 32 <= c < 127 else "." for c in b)
        lines.append(f"{addr + i * width:x}:  " + " ".join(cells) + tail)
    return "\n".join(lines)


# -- list --------------------------------------------------------------------------------------
def list_data(
    dump: Dump, start: str, member: str | None = None, fields: str | None = None, head: bool = False
) -> dict[str, Any]:
    """Walk a `struct list_head` list (crash's `list`): from `start` (an
    address or expression of a list_head; with `head`, the head itself is not
    an entry), entries located by `member` ("task_struct.tasks"), each with
    the `fields` asked for ("pid,comm")."""
    addr = _address_arg(dump, start)
    nodes = list(list_for_each(Object(dump, dump.types.type("struct list_head"), address=addr)))
    if not head:
        nodes = [addr] + nodes
    if len(nodes) > MAX_LIST:
        raise KvmcoreError(f"list: more than {MAX_LIST} entries")
    type_name, entries = _entries(dump, nodes, member, fields)
    return {"start": f"{addr:#x}", "type": type_name, "entries": entries}


def _entries(
    dump: Dump, nodes: list[int], member: str | None, fields: str | None
) -> tuple[str | None, list[dict[str, Any]]]:
    """Each node as an entry: with `member` ("task_struct.tasks") the address of
    the structure holding it, with `fields` those members' values."""
    type_name = offset = None
    if member:
        struct, _, path = member.partition(".")
        type_name = parse_type(dump, struct)
        offset = dump.types.offsetof(type_name, path)
    entries = []
    for node in nodes:
        entry: dict[str, Any] = {"node": f"{node:#x}"}
        if type_name is not None and offset is not None:
            base = node - offset
            entry["address"] = f"{base:#x}"
            if fields:
                obj = Object(dump, dump.types.type(type_name), address=base)
                for f in fields.split(","):
                    entry[f.strip()] = format_value(obj.member(f.strip()))
        entries.append(entry)
    return type_name, entries


def tree_data(
    dump: Dump,
    root: str,
    kind: str = "rbtree",
    member: str | None = None,
    fields: str | None = None,
) -> dict[str, Any]:
    """Walk a tree (crash's `tree`): an rbtree (`struct rb_root`, nodes in order)
    or an xarray / radix tree (`struct xarray`, its present entries in index
    order); entries located by `member` and shown with `fields` as `list` does."""
    from .objects import rbtree_inorder, xa_for_each

    addr = _address_arg(dump, root)
    if kind in ("rbtree", "rb"):
        nodes = list(rbtree_inorder(Object(dump, dump.types.type("struct rb_root"), address=addr)))
        indexes: list[int | None] = [None] * len(nodes)
    elif kind in ("xarray", "radix", "ra", "xa"):
        found = list(xa_for_each(Object(dump, dump.types.type("struct xarray"), address=addr)))
        indexes = [i for i, _ in found]
        nodes = [e for _, e in found]
    else:
        raise KvmcoreError(f"tree: unknown kind {kind!r} (rbtree, xarray)")
    if len(nodes) > MAX_LIST:
        raise KvmcoreError(f"tree: more than {MAX_LIST} entries")
    type_name, entries = _entries(dump, nodes, member, fields)
    for entry, index in zip(entries, indexes):
        if index is not None:
            entry["index"] = index
    return {"root": f"{addr:#x}", "kind": kind, "type": type_name, "entries": entries}


def list_text(data: dict[str, Any]) -> str:
    out = []
    for e in data["entries"]:
        out.append(e.get("address", e["node"]).removeprefix("0x"))
        out += [f"  {k} = {v}" for k, v in e.items() if k not in ("node", "address")]
    return "\n".join(out)


# -- task, runq, vtop, ptov ------------------------------------------------------------------
def task_data(dump: Dump, pid: int | None = None, fields: str | None = None) -> dict[str, Any]:
    """A task's `struct task_struct` (crash's `task`): the panicking task by default."""
    kernel = dump.kernel
    task = kernel.panic_task() if pid is None else kernel.find_task(pid)
    if task is None:
        raise KvmcoreError(
            f"no task with pid {pid}"
            if pid is not None
            else "the panicking task is not known; give a pid",
            dump.path,
        )
    obj = Object(dump, dump.types.type("struct task_struct"), address=task.address)
    header = (
        f"PID: {task.pid}  TASK: {task.address:#x}  CPU: {task.cpu}  "
        f'COMMAND: "{printable(task.comm)}"'
    )
    if fields:
        body = "\n".join(
            f"  {f.strip()} = {format_value(obj.member(f.strip()))}" for f in fields.split(",")
        )
        values = {f.strip(): _json_value(obj.member(f.strip())) for f in fields.split(",")}
    else:
        body = f"struct task_struct {format_value(obj)}"
        values = None
    return {
        "pid": task.pid,
        "address": f"{task.address:#x}",
        "cpu": task.cpu,
        "comm": task.comm,
        "fields": values,
        "text": f"{header}\n{body}",
    }


def runq_data(dump: Dump) -> dict[str, Any]:
    """Each CPU's run queue: the current task and the tasks queued on the CFS
    tree (crash's `runq`)."""
    from .objects import rbtree_for_each_entry

    cpus = []
    runqueues = dump.object("runqueues")
    for cpu in range(dump.kernel.nr_cpus):
        rq = per_cpu_ptr(runqueues, cpu)
        curr = rq.curr.deref()
        queued = []
        root = rq.cfs.tasks_timeline.rb_root
        for se in rbtree_for_each_entry("struct sched_entity", root, "run_node"):
            task = Object(
                dump,
                dump.types.type("struct task_struct"),
                address=se.value() - dump.types.offsetof("struct task_struct", "se"),
            )
            queued.append(
                {
                    "pid": task.pid.value(),
                    "comm": task.comm.string(),
                    "address": f"{task.address:#x}",
                }
            )
        cpus.append(
            {
                "cpu": cpu,
                "rq": f"{rq.address:#x}",
                "nr_running": rq.nr_running.value(),
                "current": {
                    "pid": curr.pid.value(),
                    "comm": curr.comm.string(),
                    "address": f"{curr.address:#x}",
                },
                "cfs": queued,
            }
        )
    return {"cpus": cpus}


def runq_text(data: dict[str, Any]) -> str:
    out = []
    for c in data["cpus"]:
        cur = c["current"]
        out.append(f"CPU {c['cpu']} RUNQUEUE: {c['rq']}")
        out.append(
            f"  CURRENT: PID: {cur['pid']:<6} TASK: {cur['address']}  "
            f'COMMAND: "{printable(cur["comm"])}"'
        )
        out.append("  CFS RB_ROOT:" + ("" if c["cfs"] else " [no tasks queued]"))
        out += [
            f"    [{t['pid']:>5}] PID: {t['pid']:<6} TASK: {t['address']}  "
            f'COMMAND: "{printable(t["comm"])}"'
            for t in c["cfs"]
        ]
        out.append("")
    return "\n".join(out).rstrip()


def vtop_data(dump: Dump, address: str) -> dict[str, Any]:
    """Where a kernel virtual address lives (crash's `vtop`)."""
    addr = _address_arg(dump, address)
    t = dump.translate(addr)
    where = (
        f"FILE OFFSET: {t.file_offset:#x}" if t.file_offset is not None else "(stored compressed)"
    )
    return {
        "virtual": f"{addr:#x}",
        "physical": f"{t.pa:#x}",
        "page_size": t.page_size,
        "file_offset": t.file_offset,
        "text": f"VIRTUAL           PHYSICAL\n{addr:<16x}  {t.pa:x}\n"
        f"PAGE SIZE: {t.page_size:#x}  {where}",
    }


def ptov_data(dump: Dump, address: str) -> dict[str, Any]:
    """The direct-map alias of a physical address (crash's `ptov`)."""
    pa = int(address, 0)
    va = dump.linear_map_address(pa)
    if va is None:
        page_offset = dump.resolve_symbol("page_offset_base")
        if page_offset is not None:
            va = dump.read_ptr(page_offset) + pa
    if va is None:
        raise KvmcoreError(f"ptov: the direct map of this {dump.arch.name} kernel is unknown")
    return {
        "physical": f"{pa:#x}",
        "virtual": f"{va:#x}",
        "text": f"VIRTUAL           PHYSICAL\n{va:<16x}  {pa:x}",
    }
