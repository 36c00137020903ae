"""`python -m bench.objects [DUMP] [--repeat N]`: the kernel model's own readers
(member offsets from the type facade, one read per structure) against the
same work through typed Objects (kvmcore.objects: `task.comm.string()`,
`list_for_each_entry`), in one process on one dump (default: the cached
x86_64-kaslr sample). Each side must give the same answer; the figure is
the CPU time per walk, median of N (issue 15: "the model's own code moves onto
typed objects where that keeps its speed").

Two paths: the module list (name, base, size, taints and the section
addresses of each module: kvmcore.linux.modules.read_modules) and the task
fields ps shows (pid, tgid, comm, state, cpu: kvmcore.linux.tasks.TaskReader)."""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import kvmcore
from kvmcore.linux.modules import Module, _sections, read_modules
from kvmcore.linux.tasks import TaskReader, state_char
from kvmcore.objects import list_for_each_entry


def modules_by_objects(dump: kvmcore.Dump) -> list[Module]:
    """read_modules's answer, through Objects."""
    head = dump.cast("struct list_head *", dump.symbols.lookup("modules")).deref()
    old_layout = dump.types.has_member("struct module", "core_layout")
    out = []
    for entry in list_for_each_entry("struct module", head, "list"):
        mod = entry.deref().read_()  # one read per module, as read_modules
        core = mod.core_layout if old_layout else mod.mem[0]
        sections = {}
        attrs = mod.sect_attrs
        if attrs.value():
            attrs = attrs.deref().read_()
            for i in range(attrs.nsections.value()):
                attr = attrs.attrs[i]
                # .member(): `address` is also the Object's own attribute
                sections[attr.battr.attr.name.string()] = attr.member("address").value()
        module = Module(
            mod.name.string(),
            entry.value(),
            core.base.value(),
            core.size.value(),
            mod.taints.value(),
        )
        module.sections = sections
        out.append(module)
    return out


def modules_by_offsets(dump: kvmcore.Dump) -> list[Module]:
    """read_modules without the module kallsyms (Objects do not read those here)."""
    out = []
    for m in read_modules(dump.kernel):
        copy = Module(m.name, m.address, m.base, m.size, m.taints)
        copy.sections = _sections(dump, dump.types, m.address)
        out.append(copy)
    return out


def tasks_by_offsets(dump: kvmcore.Dump, addresses: list[int]) -> list[tuple]:
    reader = TaskReader(dump, lambda _t: {})  # the model's reader (offsets, one read per task)
    out = []
    for a in addresses:
        t = reader.read(a)
        out.append((t.pid, t.tgid, t.comm, t.state, t.cpu))
    return out


def tasks_by_objects(dump: kvmcore.Dump, addresses: list[int]) -> list[tuple]:
    state_member = "__state" if dump.types.has_member("struct task_struct", "__state") else "state"
    out = []
    for a in addresses:
        t = dump.cast("struct task_struct *", a).deref().read_()  # one read per task
        out.append(
            (
                t.pid.value(),
                t.tgid.value(),
                t.comm.string(),
                state_char(t.member(state_member).value(), t.exit_state.value()),
                t.member("thread_info.cpu").value(),
            )
        )
    return out


def _time(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    result = fn()  # warm: types resolved, pages cached, as after the first command
    times = []
    for _ in range(repeat):
        t0 = time.process_time()  # CPU time: the machine is shared
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times), result


def run(path: str, repeat: int) -> list[dict[str, Any]]:
    dump = kvmcore.open(path)
    addresses = [t.address for t in dump.kernel.tasks()]
    rows = []
    for name, count, offsets, objects in (
        ("module list", None, lambda: modules_by_offsets(dump), lambda: modules_by_objects(dump)),
        (
            "task fields (ps)",
            len(addresses),
            lambda: tasks_by_offsets(dump, addresses),
            lambda: tasks_by_objects(dump, addresses),
        ),
    ):
        t_off, a = _time(offsets, repeat)
        t_obj, b = _time(objects, repeat)
        if a != b:
            raise SystemExit(f"{name}: the two readers disagree:\n{a}\n{b}")
        rows.append(
            {
                "path": name,
                "items": count if count is not None else len(a),
                "offsets_ms": t_off * 1e3,
                "objects_ms": t_obj * 1e3,
                "ratio": t_obj / t_off,
            }
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.objects", description=__doc__)
    ap.add_argument("dump", nargs="?", help="default: the cached x86_64-kaslr ELF sample")
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args(argv)
    path = args.dump
    if path is None:
        from sample_dumps.catalog import load_samples

        path = str(load_samples()["x86_64-kaslr"].file("elf"))
    print("| path | items | offsets (model today) | typed Objects | Objects/offsets |")
    print("|---|---|---|---|---|")
    for r in run(path, args.repeat):
        print(
            f"| {r['path']} | {r['items']} | {r['offsets_ms']:.2f} ms | "
            f"{r['objects_ms']:.2f} ms | {r['ratio']:.1f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
