"""Source lines and inlined frames (kvmcore.unwind.srclines) on the real kdump
sample with the -dbg vmlinux. Oracle: drgn's stack_trace() (its inline frames
and frame.source()), never kvmcore's own output."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from oracles import drgn_program

import kvmcore

SID = "x86_64-kdump"
ROOT = Path(__file__).resolve().parent.parent


def _base(name: str | None) -> str | None:
    # kallsyms names the .cold part, a DWARF scope the function: compare bare names
    return name.split("+", 1)[0].split(".", 1)[0] if name else name


@pytest.fixture(scope="module")
def drgn_source_frames(samples):
    """(name, file, line, is_inline) of drgn's kernel frames, innermost first."""
    from drgn.helpers.linux.pid import find_task

    s = samples.get_built(SID)
    prog = drgn_program(str(s.file("proc-elf")), str(samples.vmlinux(SID)))
    out = []
    for frame in prog.stack_trace(find_task(prog, s.manifest["panic"]["pid"])):
        if frame.pc < 0xFFFF800000000000:
            continue  # the user-space frame drgn reads from pt_regs
        file, line, _column = frame.source()
        out.append((frame.name, file, line, frame.is_inline))
    return out


def _ours(bt):
    """The same tuples from a kvmcore backtrace: inlined functions first."""
    out = []
    for f in bt.frames:
        out.extend((i.function, i.file, i.line, True) for i in f.inlined)
        out.append((_base(f.function), f.file, f.line, False))
    return out


@pytest.mark.parametrize("fmt", ["proc-elf", "mdf-d31-l"])
def test_source_lines_and_inlined_frames_match_drgn(
    samples, drgn_source_frames, fmt, monkeypatch, tmp_path
):
    s = samples.get_built(SID)
    names = [n for n, _, _, _ in drgn_source_frames]
    # the inlined frames the issue names
    for inlined, caller in [
        ("crash_setup_regs", "__crash_kexec"),
        ("pde_write", "proc_reg_write"),
        ("do_syscall_x64", "do_syscall_64"),
    ]:
        assert names[names.index(inlined) + 1] == caller, drgn_source_frames
    with kvmcore.open(str(s.file(fmt)), vmlinux=str(samples.vmlinux(SID))) as dump:
        bt = dump.backtrace(dump.kernel.panic_task())
    ours = _ours(bt)
    _same(ours, drgn_source_frames)


def _same(ours, theirs):
    """Equal file:line and inline flags, equal names (kallsyms may name a
    label inside a function: entry_SYSCALL_64_after_hwframe)."""
    assert [(f, ln, i) for _, f, ln, i in ours] == [(f, ln, i) for _, f, ln, i in theirs], ours
    assert all(o.startswith(t) for (o, *_), (t, *_) in zip(ours, theirs)), (ours, theirs)


def test_source_lines_from_a_cold_cache_equal_the_cached(
    samples, drgn_source_frames, monkeypatch, tmp_path
):
    """A private, empty cache: the CUs are decoded from DWARF, stored, then read back."""
    from kvmcore.unwind.srclines import vmlinux_index

    monkeypatch.setenv("KVMCORE_CACHE", str(tmp_path))
    s = samples.get_built(SID)
    for run in range(2):
        with kvmcore.open(str(s.file("proc-elf")), vmlinux=str(samples.vmlinux(SID))) as dump:
            bt = dump.backtrace(dump.kernel.panic_task())
            index = vmlinux_index(dump)
            assert index is not None and index.error is None
            assert (index.decoded > 0) == (run == 0), run
        _same(_ours(bt), drgn_source_frames)
    assert list(tmp_path.glob("index/*/srclines-*"))


def test_bt_cli_prints_file_line_and_inlined(samples):
    s = samples.get_built(SID)
    cmd = [
        str(Path(sys.executable).parent / "kvmcore"),
        "bt",
        str(s.file("proc-elf")),
        str(samples.vmlinux(SID)),
    ]
    text = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT).stdout
    lines = text.splitlines()
    first = next(i for i, ln in enumerate(lines) if "crash_setup_regs" in ln)
    assert "(inlined) crash_setup_regs at arch/x86/include/asm/kexec.h:" in lines[first], text
    assert lines[first + 1].lstrip().startswith("#0 "), text
    assert "__crash_kexec+" in lines[first + 1] and " at kernel/kexec_core.c:" in lines[first + 1]
    data = json.loads(
        subprocess.run(
            cmd + ["--json"], capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout
    )
    frames = data["tasks"][0]["backtrace"]["frames"]
    assert frames[0]["file"] == "kernel/kexec_core.c" and frames[0]["line"] > 0
    assert frames[0]["inlined"][0]["function"] == "crash_setup_regs"
    from jsonschema import validate

    schema = json.loads((ROOT / "kvmcore/schema/report.schema.json").read_text())
    validate(
        {"frames": frames, "available": True},
        {"$defs": schema["$defs"], **schema["$defs"]["backtrace"]},
    )


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "s390x"])
def test_fast_line_programs_give_pyelftools_rows(samples, sid):
    """kvmcore.unwind.linetable runs the line programs of a -dbg vmlinux
    (little- and big-endian) to the rows pyelftools' own decoder gives, for
    every 50th CU."""
    import itertools

    from kvmcore.symbols.elfmap import mapped_elf_file
    from kvmcore.unwind.linetable import line_rows

    with open(str(samples.vmlinux(sid)), "rb") as f:
        dwarf = mapped_elf_file(f).get_dwarf_info(relocate_dwarf_sections=False)
        checked = 0
        for cu in itertools.islice(dwarf.iter_CUs(), 0, None, 50):
            program = dwarf.line_program_for_CU(cu)
            if program is None:
                continue
            start, end = program.program_start_offset, program.program_end_offset
            program.stream.seek(start)
            data = program.stream.read(end - start)
            ours = line_rows(data, program.header, dwarf.config.little_endian)
            theirs = [
                (e.state.address, e.state.file, e.state.line, bool(e.state.end_sequence))
                for e in program.get_entries()
                if e.state is not None
            ]
            assert ours == theirs, f"CU at {cu.cu_offset:#x}"
            checked += bool(ours)
        assert checked >= 20


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "s390x"])
def test_scanned_code_dies_are_pyelftools_ones(samples, sid):
    """kvmcore.unwind.dwarfscan finds the same top-level code DIEs (functions)
    as pyelftools' walk of each CU, for every 40th CU of a -dbg vmlinux."""
    import itertools

    from kvmcore.symbols.dwarfscan import code_die_offsets
    from kvmcore.symbols.elfmap import mapped_elf_file
    from kvmcore.unwind.srclines import _CODE_TAGS

    with open(str(samples.vmlinux(sid)), "rb") as f:
        dwarf = mapped_elf_file(f).get_dwarf_info(relocate_dwarf_sections=False)
        found = 0
        for cu in itertools.islice(dwarf.iter_CUs(), 0, 1200, 40):
            stream = dwarf.debug_info_sec.stream
            stream.seek(cu.cu_offset)
            ours = code_die_offsets(cu, stream.read(cu.size), _CODE_TAGS)
            theirs = [d.offset for d in cu.get_top_DIE().iter_children() if d.tag in _CODE_TAGS]
            assert ours == theirs, f"CU at {cu.cu_offset:#x}"
            found += len(ours)
        assert found > 100


@pytest.mark.parametrize("sid", ["i386-pae", "armhf"])
def test_scanned_type_dies_are_pyelftools_ones(samples, sid):
    """The DWARF type index (kvmcore.types.dwarf, for kernels without BTF)
    finds each CU's named types by skipping through .debug_info
    (kvmcore.symbols.dwarfscan): the same offsets, tags, names and
    declarations as pyelftools' walk, for every 60th CU of the -dbg vmlinux."""
    import itertools

    from kvmcore.symbols.elfmap import mapped_elf_file
    from kvmcore.types.dwarf import _TYPE_TAGS, _type_dies

    with open(str(samples.vmlinux(sid)), "rb") as f:
        dwarf = mapped_elf_file(f).get_dwarf_info(relocate_dwarf_sections=False)
        named = 0
        for cu in itertools.islice(dwarf.iter_CUs(), 0, 1500, 60):
            theirs = []
            for die in cu.get_top_DIE().iter_children():
                if die.tag in _TYPE_TAGS:
                    name = die.attributes.get("DW_AT_name")
                    text = name.value.decode("latin-1") if name is not None else None
                    theirs.append(
                        (die.offset, die.tag, text, "DW_AT_declaration" in die.attributes)
                    )
            assert _type_dies(dwarf, cu.cu_offset) == (cu.size, theirs), f"CU at {cu.cu_offset:#x}"
            named += sum(1 for _, _, name, _ in theirs if name)
        assert named > 100
