"""Types for gdb from BTF (issue 16 item 1): `kvmcore symfile` writes DWARF 4
made from the dump's BTF, with the per-CPU and well-known globals, and gdb
with only that file (no vmlinux) prints kernel structures.

The facts gdb prints are checked against drgn reading the same dump with the
Debian -dbg vmlinux (tests/oracles.py) and against the sample's manifest;
the DWARF itself is checked with pyelftools."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from elftools.elf.elffile import ELFFile
from oracles import drgn_program, gdb_binary

PY = sys.executable
COMMITTED = Path(__file__).resolve().parent.parent / "sample_dumps/committed/x86_64-small"


def write_symfile(dump_path, out) -> str:
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "symfile", str(dump_path), "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "DWARF of" in p.stdout, p.stdout
    return p.stdout


def kernel_offset(line: str) -> int:
    m = re.search(r"symbol-file -o (0x[0-9a-f]+)", line)
    return int(m[1], 16) if m else 0


# ------------------------------------------------------------------ the DWARF itself


def dies_by_name(path) -> tuple[dict, dict, object]:
    """(name -> DIE) of the named types and variables, (offset -> DIE), the DWARF."""
    with open(path, "rb") as f:
        elf = ELFFile(f)
        dwarf = elf.get_dwarf_info()
        cus = list(dwarf.iter_CUs())
        assert len(cus) == 1 and cus[0]["version"] == 4
        cu = cus[0]
        names, offsets = {}, {}
        for die in cu.iter_DIEs():
            offsets[die.offset] = die
            if "DW_AT_name" in die.attributes and die.tag != "DW_TAG_member":
                key = (die.tag, die.attributes["DW_AT_name"].value.decode())
                names.setdefault(key, die)
        return names, offsets, cu


@pytest.fixture(scope="module")
def committed_symfile(tmp_path_factory):
    out = tmp_path_factory.mktemp("btfdwarf") / "vmlinux.sym"
    line = write_symfile(COMMITTED / "vmcore.mdf-d31-c", out)
    return out, line


def test_dwarf_parses_and_every_reference_lands_on_a_die(committed_symfile):
    # (not in the fast tier: pyelftools walks ~36k DIEs, about 9 s)
    path, _ = committed_symfile
    names, offsets, cu = dies_by_name(path)
    base = cu.cu_offset
    refs = 0
    for die in offsets.values():
        attr = die.attributes.get("DW_AT_type")
        if attr is not None:
            assert attr.form == "DW_FORM_ref4"
            assert attr.value + base in offsets, die
            refs += 1
    assert refs > 50_000
    # each BTF type once: no two struct DIEs with the same name and size
    seen = set()
    for die in offsets.values():
        if die.tag == "DW_TAG_structure_type" and "DW_AT_byte_size" in die.attributes:
            key = (
                die.attributes.get("DW_AT_name") and die.attributes["DW_AT_name"].value,
                die.attributes["DW_AT_byte_size"].value,
                die.offset,
            )
            assert key not in seen
            seen.add(key)


@pytest.mark.fast
def test_dwarf_list_head_bitfields_and_variables(committed_symfile):
    path, line = committed_symfile
    names, offsets, cu = dies_by_name(path)
    lh = names[("DW_TAG_structure_type", "list_head")]
    members = [
        (m.attributes["DW_AT_name"].value, m.attributes["DW_AT_data_member_location"].value)
        for m in lh.iter_children()
    ]
    assert members == [(b"next", 0), (b"prev", 8)]
    assert lh.attributes["DW_AT_byte_size"].value == 16
    # a bitfield: sk_buff's cloned:1 (DW_AT_data_bit_offset + DW_AT_bit_size)
    skb = names[("DW_TAG_structure_type", "sk_buff")]
    cloned = next(
        m
        for m in skb.iter_children()
        if m.attributes.get("DW_AT_name") and m.attributes["DW_AT_name"].value == b"cloned"
    )
    assert cloned.attributes["DW_AT_bit_size"].value == 1
    assert "DW_AT_data_bit_offset" in cloned.attributes
    # variables: the well-known globals at link addresses (DW_OP_addr), the
    # per-CPU ones as their offsets (x86_64: below the kernel half)
    import kvmcore

    with kvmcore.open(str(COMMITTED / "vmcore.mdf-d31-c")) as dump:
        uts = dump.vmcoreinfo.symbol("init_uts_ns")
        offset = int(dump.vmcoreinfo.get("KERNELOFFSET"), 16)
    var = names[("DW_TAG_variable", "init_uts_ns")]
    loc = var.attributes["DW_AT_location"].value
    assert loc[0] == 0x03 and int.from_bytes(bytes(loc[1:9]), "little") == uts - offset
    rq = names[("DW_TAG_variable", "runqueues")]
    loc = rq.attributes["DW_AT_location"].value
    assert loc[0] == 0x0E and int.from_bytes(bytes(loc[1:9]), "little") < 1 << 32
    for name in ("init_task", "jiffies"):
        assert ("DW_TAG_variable", name) in names


@pytest.mark.fast
def test_uleb_sleb_and_forward_references():
    from kvmcore.symbols import dwarfgen as d

    assert d.uleb(624485) == bytes([0xE5, 0x8E, 0x26])
    assert d.sleb(-123456) == bytes([0xC0, 0xBB, 0x78])
    assert d.sleb(63) == b"\x3f" and d.sleb(64) == b"\xc0\x00" and d.sleb(-64) == b"\x40"
    w = d.DieWriter(8)
    w.die(d.DW_TAG_compile_unit, [(d.DW_AT_name, d.DW_FORM_strp, "x")], children=True)
    w.die(d.DW_TAG_pointer_type, [(d.DW_AT_type, d.DW_FORM_ref4, "s")], key="p")
    w.die(
        d.DW_TAG_structure_type,
        [(d.DW_AT_name, d.DW_FORM_strp, "s"), (d.DW_AT_byte_size, d.DW_FORM_udata, 8)],
        children=True,
        key="s",
    )
    w.die(
        d.DW_TAG_member,
        [
            (d.DW_AT_name, d.DW_FORM_strp, "self"),
            (d.DW_AT_type, d.DW_FORM_ref4, "p"),
            (d.DW_AT_data_member_location, d.DW_FORM_udata, 0),
        ],
    )
    info, abbrev, strs = w.finish()
    assert int.from_bytes(info[:4], "little") == len(info) - 4
    p_off, s_off = w.offset_of("p"), w.offset_of("s")
    assert int.from_bytes(info[p_off + 1 : p_off + 5], "little") == s_off
    with pytest.raises(ValueError):
        w2 = d.DieWriter(8)
        w2.die(d.DW_TAG_pointer_type, [(d.DW_AT_type, d.DW_FORM_ref4, "nowhere")])
        w2.finish()


# ------------------------------------------------------------------ gdb on the real samples


def gdb(arch: str, commands: list[str], symfile, offset: int | None, dump=None, core=None) -> str:
    """gdb with only `symfile`: `symbol-file -o offset` when offset is given
    (else gdb FILE, and the server's qOffsets moves it), on `kvmcore serve`
    (dump) or on a `kvmcore core` file (core)."""
    args = [
        gdb_binary(arch),
        "-nx",
        "-batch",
        "-ex",
        "set width 0",
        "-ex",
        "set height 0",
        "-ex",
        "set remotetimeout 60",
    ]
    if offset is not None:
        args += ["-ex", f"symbol-file -o {offset:#x} {symfile}"]
    if dump is not None:
        args += ["-ex", f"target remote | {PY} -m kvmcore.gdbserver --stdio {dump}"]
    for i, c in enumerate(commands):
        args += ["-ex", f"echo =={i}==\\n", "-ex", c]
    args += ["-ex", f"echo =={len(commands)}==\\n"]
    if core is not None:
        args += ["-c", str(core)]
    if offset is None:
        args.append(str(symfile))
    p = subprocess.run(args, capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL)
    return p.stdout + p.stderr


def answers(out: str, n: int) -> list[str]:
    parts = []
    for i in range(n):
        chunk = out.split(f"=={i}==\n", 1)[1].split(f"=={i + 1}==\n", 1)[0]
        parts.append(chunk.strip())
    return parts


def value(answer: str) -> str:
    m = re.match(r"^\$\d+ = (.*)$", answer, re.S)
    assert m, answer
    return m[1]


def drgn_facts(dump, vmlinux, pid: int) -> dict:
    from drgn.helpers.linux.pid import find_task

    prog = drgn_program(str(dump), str(vmlinux))
    ts = prog.type("struct task_struct")
    task = find_task(prog, pid)
    members = {}
    anonymous = 0
    for m in ts.members:
        if m.name is None:
            anonymous += 1
        else:
            members[m.name] = m.bit_offset // 8
    facts = {
        "size": ts.size,
        "members": members,
        "anonymous": anonymous,
        "task": task.value_(),
        "init_task": prog["init_task"].address_,
        "jiffies": prog["jiffies"].value_(),
    }
    with contextlib.suppress(KeyError):
        facts["runqueues"] = prog["runqueues"].address_
    return facts


def ptype_o_members(text: str) -> tuple[dict[str, int], int]:
    """The top-level members of a `ptype/o struct` output: name -> byte offset,
    and the number of anonymous ones. Each line is a 27-column /* offset |
    size */ comment, then 4 spaces per nesting level; a nested aggregate's
    offset is on its opening line, its name (if any) on its closing one,
    indented to its level past the comment column."""
    members: dict[str, int] = {}
    anonymous = 0
    pending: int | None = None
    for line in text.splitlines()[1:]:
        m = re.match(r"^/\* *(\d+)(?:: *\d+)? *\| *\d+ \*/( +)(\S.*)$", line)
        if m:
            if len(m[2]) != 4:
                continue  # inside a nested aggregate
            off, decl = int(m[1]), m[3]
            if decl.endswith("{"):
                pending = off
                continue
            fn = re.search(r"\(\*(\w+)\)\(.*\);$", decl)
            name = re.search(r"(\w+)(?:\[\d*\])*(?: : \d+)?;$", decl)
            members[(fn or name)[1]] = off  # type: ignore[index]
            continue
        closing = re.match(r"^( +)\}(.*);$", line)
        if closing and len(closing[1]) == 27 + 4:
            tail = closing[2].strip()
            if tail:
                members[re.match(r"(\w+)", tail)[1]] = pending  # type: ignore[index]
            else:
                anonymous += 1
            pending = None
    return members, anonymous


@pytest.fixture(scope="module", params=["x86_64-kaslr", "arm64-kaslr"])
def run(request, samples, tmp_path_factory):
    sid = request.param
    s = samples.get_built(sid)
    arch = s.manifest["arch"]
    dump = s.file("elf")
    sym = tmp_path_factory.mktemp(sid) / "vmlinux.sym"
    line = write_symfile(dump, sym)
    offset = kernel_offset(line)
    assert s.manifest["kaslr"] and offset
    facts = drgn_facts(dump, samples.vmlinux(sid), s.manifest["panic"]["pid"])
    task = facts["task"]
    commands = [
        "ptype/o struct task_struct",
        "p init_task.comm",
        f"p ((struct task_struct *){task:#x})->comm",
        "p sizeof(struct task_struct)",
        "p/x (unsigned long)&init_task",
        "p/d jiffies",
        f"p *(struct task_struct *){task:#x}",
        "p/x (unsigned long)&runqueues",
        f"p ((struct task_struct *){task:#x})->pid",
    ]
    out = gdb(arch, commands, sym, offset, dump=dump)
    return {
        "sid": sid,
        "sample": s,
        "arch": arch,
        "dump": dump,
        "sym": sym,
        "offset": offset,
        "facts": facts,
        "commands": commands,
        "out": out,
        "answers": answers(out, len(commands)),
    }


def test_ptype_task_struct_lists_drgns_members(run):
    got, anonymous = ptype_o_members(run["answers"][0])
    want = run["facts"]["members"]
    assert got == want, (sorted(set(got.items()) ^ set(want.items())), run["answers"][0][-2000:])
    assert anonymous == run["facts"]["anonymous"]
    assert len(want) > 100


def test_init_task_comm_and_address(run):
    a = run["answers"]
    assert value(a[1]).startswith('"swapper/0\\000'), a[1]
    assert int(value(a[4]), 16) == run["facts"]["init_task"], a[4]


def test_panicking_task_comm_by_cast(run):
    panic = run["sample"].manifest["panic"]
    a = run["answers"]
    assert value(a[2]).startswith(f'"{panic["comm"]}\\000'), a[2]
    assert int(value(a[8])) == panic["pid"], a[8]
    whole = value(a[6])
    assert f'comm = "{panic["comm"]}\\000' in whole and f"pid = {panic['pid']}," in whole


def test_sizeof_task_struct_is_drgns(run):
    assert int(value(run["answers"][3])) == run["facts"]["size"]


def test_jiffies(run):
    got = int(value(run["answers"][5]))
    # the dump is the machine stopped: jiffies no longer moves
    assert got == run["facts"]["jiffies"], run["answers"][5]


def test_per_cpu_variable_is_its_offset(run):
    want = run["facts"].get("runqueues")
    a = run["answers"][7]
    if run["arch"] == "aarch64":
        # arm64's kallsyms has no data symbols: no per-CPU variable has an
        # address (gdb's error goes to stderr, after the echoed markers)
        assert not a.startswith("$"), a
        assert 'No symbol "runqueues" in current context.' in run["out"]
        return
    assert int(value(a), 16) == want, a


def test_without_symbol_file_offset_qoffsets_places_variables(run):
    """gdb FILE, then target remote: the server's qOffsets moves the file's
    .text, where the DW_OP_addr variables live, by the KASLR offset."""
    cmds = ["p init_task.comm", "p/x (unsigned long)&init_task", "p/d jiffies"]
    out = gdb(run["arch"], cmds, run["sym"], None, dump=run["dump"])
    a = answers(out, len(cmds))
    assert value(a[0]).startswith('"swapper/0\\000'), out[-2000:]
    assert int(value(a[1]), 16) == run["facts"]["init_task"]
    assert int(value(a[2])) == run["facts"]["jiffies"]


def test_with_a_kvmcore_core_file(run, tmp_path):
    """`kvmcore core DUMP -o FILE`, then gdb -ex 'symbol-file -o OFF SYMFILE' -c FILE."""
    core = tmp_path / "vmcore.core"
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "core", str(run["dump"]), "-o", str(core)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    assert kernel_offset(p.stdout) == run["offset"]
    task = run["facts"]["task"]
    cmds = [
        "p init_task.comm",
        f"p ((struct task_struct *){task:#x})->comm",
        "p/d jiffies",
        "p sizeof(struct task_struct)",
    ]
    out = gdb(run["arch"], cmds, run["sym"], run["offset"], core=core)
    core.unlink()
    a = answers(out, len(cmds))
    assert value(a[0]).startswith('"swapper/0\\000'), out[-2000:]
    assert value(a[1]).startswith(f'"{run["sample"].manifest["panic"]["comm"]}\\000'), a[1]
    assert int(value(a[2])) == run["facts"]["jiffies"]
    assert int(value(a[3])) == run["facts"]["size"]


def test_symfile_line_uses_symbol_file_offset(run):
    """The printed gdb command line loads the whole file with symbol-file -o."""
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "symfile", str(run["dump"]), "-o", str(run["sym"]) + ".2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert f"symbol-file -o {run['offset']:#x} " in p.stdout, p.stdout
    m = re.search(r"DWARF of (\d+) BTF types and (\d+) variables \((\d+) bytes\)", p.stdout)
    assert m and int(m[1]) > 20_000 and int(m[2]) >= 4, p.stdout
