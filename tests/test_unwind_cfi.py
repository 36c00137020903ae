"""DWARF CFI unwinding (kvmcore.unwind.dwarf_cfi) from the -dbg vmlinux's
.debug_frame, on the real samples.

Ground truth: readelf's own decoding of the same section (`readelf -wF`),
the relocation sections read with pyelftools, drgn's stack traces (drgn
unwinds the kernel with ORC or DWARF CFI from the vmlinux; it cannot read
i386, where the frame-pointer walk of the same dump and the manifest's sysrq
path are the references), and the manifests.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import time

import pytest

import kvmcore
from kvmcore.errors import KvmcoreError, SymbolError
from kvmcore.linux.switch_frame import switch_frame
from kvmcore.registry import get_arch
from kvmcore.unwind import dwarf_cfi, make_unwinder, unwind, unwinder_for
from kvmcore.unwind.dwarf_cfi import DebugFrame, debug_frame_of

CFI_SAMPLES = ["x86_64-kaslr", "arm64-kaslr", "i386-pae"]
DRGN_SAMPLES = ["x86_64-kaslr", "arm64-kaslr"]  # drgn reads no i386 kernel
REGISTERS = {name: get_arch(name).dwarf for name in ("x86_64", "aarch64", "i686")}
APT_HINT = "apt-get install binutils (readelf)"
# sampling of readelf's table: every STRIDE-th FDE, all of its rows
READELF_STRIDE = 23


def base(name: str | None) -> str | None:
    return name.split(".", 1)[0] if name else None


def in_order(names: list, wanted: list[str]) -> bool:
    pos = 0
    for name in names:
        if pos < len(wanted) and name and name.startswith(wanted[pos]):
            pos += 1
    return pos == len(wanted)


_DUMPS: dict[tuple[str, bool], kvmcore.Dump] = {}


def opened(samples, sid: str, with_vmlinux: bool = True):
    """One open dump per (sample, vmlinux or not) for the whole module."""
    key = (sid, with_vmlinux)
    if key not in _DUMPS:
        s = samples.get_built(sid)
        vmlinux = str(samples.vmlinux(sid)) if with_vmlinux else None
        _DUMPS[key] = kvmcore.open(str(s.file("elf")), vmlinux=vmlinux)
    return _DUMPS[key]


@pytest.fixture(scope="module", autouse=True)
def _close_dumps():
    yield
    for dump in _DUMPS.values():
        dump.close()
    _DUMPS.clear()


def task_regs(dump, manifest, who: str) -> dict[str, int]:
    """Registers of the panicking CPU, or of sleeper_a's `sleep` child."""
    if who == "panic":
        return dump.cpu_states[manifest["panic"]["cpu"]].regs
    sleeper = next(p["pid"] for p in manifest["processes"] if p["comm"] == "sleeper_a")
    child = next(
        p["pid"] for p in manifest["processes"] if p["comm"] == "sleep" and p["ppid"] == sleeper
    )
    task = dump.kernel.find_task(child)
    assert task is not None and not task.on_cpu, f"pid {child} should be sleeping"
    return switch_frame(dump, task.address)


def fresh_unwind(dump, regs, cfi: bool):
    """Backtrace with a new unwinder of the dump's arch, its CFI on or off."""
    unwinder = make_unwinder(dump)
    if not cfi:
        unwinder.cfi = None
    return unwinder.unwind(regs, 64, None)


# ------------------------------------------------------------ the section itself


def readelf_table(vmlinux) -> list[tuple[int, int, list[tuple[int, str, dict[str, str]]]]]:
    """(fde start, end, [(loc, cfa, {column: rule})]) from `readelf -wF`."""
    readelf = shutil.which("readelf")
    if readelf is None:
        pytest.fail(f"readelf not found: {APT_HINT}", pytrace=False)
    out = subprocess.run(
        [readelf, "-wF", str(vmlinux)], capture_output=True, text=True, timeout=600
    ).stdout
    fdes = []
    columns: list[str] = []
    fde_re = re.compile(
        r"^[0-9a-f]+ [0-9a-f]+ [0-9a-f]+ FDE cie=[0-9a-f]+ "
        r"pc=([0-9a-f]+)\.\.([0-9a-f]+)$"
    )
    current = None
    for line in out.splitlines():
        m = fde_re.match(line)
        if m:
            current = (int(m[1], 16), int(m[2], 16), [])
            fdes.append(current)
            columns = []
            continue
        if current is None:
            continue
        if line.startswith("   LOC"):
            columns = line.split()[2:]
            continue
        parts = line.split()
        if columns and len(parts) == len(columns) + 2 and re.fullmatch(r"[0-9a-f]+", parts[0]):
            current[2].append((int(parts[0], 16), parts[1], dict(zip(columns, parts[2:]))))
        elif not line.strip():
            current = None
    assert len(fdes) > 10000, out[:2000]
    return fdes


def rule_text(rule: tuple | None) -> str:
    """Our rule in readelf's notation."""
    if rule is None or rule[0] == dwarf_cfi.UNDEFINED:
        return "u"
    kind = rule[0]
    if kind == dwarf_cfi.OFFSET:
        return f"c{rule[1]:+d}"
    if kind == dwarf_cfi.VAL_OFFSET:
        return f"v{rule[1]:+d}"
    if kind == dwarf_cfi.REGISTER:
        return f"r{rule[1]}"
    return {dwarf_cfi.SAME: "s", dwarf_cfi.EXPRESSION: "exp", dwarf_cfi.VAL_EXPRESSION: "vexp"}[
        kind
    ]


@pytest.mark.parametrize("sid", CFI_SAMPLES)
def test_rows_match_readelf(samples, sid):
    """Every row of a sample of FDEs: CFA rule and register rules as readelf
    decodes them (columns named by readelf, mapped by the arch's DWARF numbering)."""
    vmlinux = samples.vmlinux(sid)
    dump = opened(samples, sid)
    table = debug_frame_of(dump)
    regs = REGISTERS[samples.get_built(sid).manifest["arch"]]
    number = {name: num for num, name in regs.names.items()}
    theirs = readelf_table(vmlinux)
    named = [f for f in theirs if f[0] and f[1] > f[0]]
    assert len(table) == len(named), (len(table), len(named))
    checked = 0
    for start, end, rows in named[::READELF_STRIDE]:
        fde = table.fde_for(start)
        assert fde is not None and fde[:2] == (start, end), (hex(start), fde)
        for loc, cfa, cols in rows:
            row = table.row(loc)
            if cfa == "exp":
                assert row.cfa_expr is not None, (hex(loc), row)
            else:
                reg, off = re.fullmatch(r"(\w+?)([+-]\d+)", cfa).groups()
                assert (row.cfa_reg, row.cfa_offset) == (number[reg], int(off)), (hex(loc), row)
            for col, text in cols.items():
                num = row.ra_column if col == "ra" else number[col]
                assert rule_text(row.rules.get(num)) == text, (hex(loc), col, text, row)
            checked += 1
    assert checked > 1000, checked


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "i386-pae"])
def test_relocations_are_already_applied(samples, sid):
    """ET_EXEC vmlinux with .rela/.rel.debug_frame: the section bytes already
    hold the relocated values, so the unwinder reads them as they are. RELA
    (amd64): every R_X86_64_64 value equals S + A. REL (i386): every R_386_32
    value lies in its symbol's section (S is the section's address)."""
    from elftools.elf.elffile import ELFFile

    with open(samples.vmlinux(sid), "rb") as f:
        elf = ELFFile(f)
        assert elf["e_type"] == "ET_EXEC"
        rel = elf.get_section_by_name(".rela.debug_frame") or elf.get_section_by_name(
            ".rel.debug_frame"
        )
        assert rel is not None
        data = elf.get_section_by_name(".debug_frame").data()
        symtab = elf.get_section(rel["sh_link"])
        word = 8 if elf.elfclass == 64 else 4
        fmt = "<Q" if word == 8 else "<I"
        sections = {}
        count = 0
        for r in rel.iter_relocations():
            if r["r_info_type"] != 1:  # R_X86_64_64 / R_386_32: the FDE addresses
                continue
            sym = symtab.get_symbol(r["r_info_sym"])
            (stored,) = struct.unpack_from(fmt, data, r["r_offset"])
            if rel.is_RELA():
                assert stored == (sym["st_value"] + r["r_addend"]) % (1 << 64), hex(r["r_offset"])
            else:
                shndx = sym["st_shndx"]
                if shndx not in sections:
                    sec = elf.get_section(shndx)
                    sections[shndx] = (sec["sh_addr"], sec["sh_addr"] + sec["sh_size"])
                lo, hi = sections[shndx]
                assert lo <= stored <= hi, (hex(r["r_offset"]), hex(stored), hex(lo), hex(hi))
            count += 1
        assert count > 40000, count


@pytest.mark.parametrize("sid", CFI_SAMPLES)
def test_fde_starts_at_the_function(samples, sid):
    """The FDE of sysrq_handle_crash (link address from readelf -s) ends
    exactly where the function ends: FDE addresses are link addresses. (arm64:
    the FDE starts after the two patchable-entry NOPs ftrace puts before the
    function's first instruction, 8 bytes into the symbol.)"""
    out = subprocess.run(
        ["sh", "-c", f"readelf -sW '{samples.vmlinux(sid)}' | grep -w sysrq_handle_crash"],
        capture_output=True,
        text=True,
        timeout=600,
    ).stdout
    m = re.search(r":\s+([0-9a-f]+)\s+(\d+)\s+FUNC", out)
    assert m, out
    start, size = int(m[1], 16), int(m[2])
    fde = debug_frame_of(opened(samples, sid)).fde_for(start + size - 1)
    assert fde is not None and fde[1] == start + size, (out, fde)
    assert fde[0] - start == (8 if sid.startswith("arm64") else 0), (out, fde)


def test_truncated_section_is_a_clear_error(samples):
    """The real section cut inside an entry: SymbolError naming the offset."""
    table = debug_frame_of(opened(samples, "x86_64-kaslr"))
    cut = table.data[: len(table.data) // 2 + 5]
    with pytest.raises(SymbolError, match="runs past the section"):
        DebugFrame(cut, 8, "little", "cut")
    # a CIE pointer aimed into the middle of another entry: an error, not an exception
    start, end, _cie, code_at, code_end = table.fdes[100]
    broken = DebugFrame(table.data, 8, "little", "broken")
    broken.fdes[100] = (start, end, code_at + 1, code_at, code_end)
    try:
        broken.row(start)
    except SymbolError as exc:
        assert "CIE" in str(exc) or ".debug_frame" in str(exc)


# ------------------------------------------------------------ backtraces


def drgn_pcs(samples, sid: str, who: str) -> list[int]:
    try:
        import drgn
    except ImportError:
        pytest.fail("drgn is not importable: .venv/bin/pip install drgn", pytrace=False)
    s = samples.get_built(sid)
    prog = drgn.Program()
    prog.set_core_dump(str(s.file("elf")))
    prog.load_debug_info([str(samples.vmlinux(sid))], default=False, main=False)
    if who == "panic":
        thread = prog.crashed_thread()
    else:
        m = s.manifest
        sleeper = next(p["pid"] for p in m["processes"] if p["comm"] == "sleeper_a")
        thread = prog.thread(
            next(p["pid"] for p in m["processes"] if p["comm"] == "sleep" and p["ppid"] == sleeper)
        )
    pcs = []
    is_kernel = opened(samples, sid).arch.is_kernel_address
    for frame in thread.stack_trace():
        if not is_kernel(frame.pc):
            break  # drgn goes on into user mode (and past it, on junk); kvmcore stops
        if not frame.is_inline:
            pcs.append(frame.pc)
    return pcs


@pytest.mark.parametrize("who", ["panic", "sleeper"])
@pytest.mark.parametrize("sid", DRGN_SAMPLES)
def test_cfi_backtrace_matches_drgn(samples, sid, who):
    dump = opened(samples, sid)
    bt = unwind(dump, task_regs(dump, samples.get_built(sid).manifest, who))
    assert bt.error is None, str(bt)
    ours = [f.pc for f in bt.frames if not f.guessed]
    theirs = drgn_pcs(samples, sid, who)
    assert ours == theirs, ([hex(p) for p in ours], [hex(p) for p in theirs], str(bt))
    methods = [f.method for f in bt.frames[1:]]
    assert methods.count("cfi") > len(methods) // 2, (methods, str(bt))


@pytest.mark.parametrize("sid", DRGN_SAMPLES)
def test_every_cpu_matches_drgn(samples, sid):
    """Each CPU's PRSTATUS backtrace (the other CPUs were stopped by an IPI
    taken from user mode, on arm64 through the IRQ stack) against drgn's
    trace of the task on that CPU."""
    try:
        import drgn
        from drgn.helpers.linux.percpu import per_cpu
    except ImportError:
        pytest.fail("drgn is not importable: .venv/bin/pip install drgn", pytrace=False)
    s = samples.get_built(sid)
    dump = opened(samples, sid)
    prog = drgn.Program()
    prog.set_core_dump(str(s.file("elf")))
    prog.load_debug_info([str(samples.vmlinux(sid))], default=False, main=False)
    for state in dump.cpu_states:
        theirs = []
        for frame in prog.stack_trace(per_cpu(prog["runqueues"], state.cpu).curr):
            if not dump.is_kernel_address(frame.pc):
                break
            if not frame.is_inline:
                theirs.append(frame.pc)
        bt = unwind(dump, state.regs)
        ours = [f.pc for f in bt.frames if not f.guessed]
        assert ours == theirs, (state.cpu, str(bt), [hex(p) for p in theirs])
        assert bt.error is None and bt.user_regs is not None, str(bt)
        assert [f.method for f in bt.frames[1:]].count("cfi") >= len(bt.frames) // 2, str(bt)


@pytest.mark.parametrize("who", ["panic", "sleeper"])
def test_i386_cfi_matches_frame_pointers(samples, who):
    sid = "i386-pae"
    dump = opened(samples, sid)
    regs = task_regs(dump, samples.get_built(sid).manifest, who)
    with_cfi, with_fp = fresh_unwind(dump, regs, True), fresh_unwind(dump, regs, False)
    assert with_cfi.error is None and with_fp.error is None, (str(with_cfi), str(with_fp))
    assert [f.pc for f in with_cfi.frames] == [f.pc for f in with_fp.frames], (
        str(with_cfi),
        str(with_fp),
    )
    methods = [f.method for f in with_cfi.frames[1:]]
    assert methods.count("cfi") > len(methods) // 2, str(with_cfi)
    assert "cfi" not in [f.method for f in with_fp.frames]
    names = [base(n) for n in with_cfi.functions()]
    if who == "panic":
        assert in_order(names, ["sysrq_handle_crash", "__handle_sysrq"]), str(with_cfi)
    else:
        assert in_order(names, ["schedule", "do_nanosleep"]), str(with_cfi)


@pytest.mark.parametrize("sid", CFI_SAMPLES)
def test_cfi_sleeping_task_ends_like_the_old_path(samples, sid):
    """Same dump and symbols, CFI on and off: the same frames (guessed ones aside)."""
    dump = opened(samples, sid)
    regs = task_regs(dump, samples.get_built(sid).manifest, "sleeper")
    new, old = fresh_unwind(dump, regs, True), fresh_unwind(dump, regs, False)
    assert [(f.pc, f.function) for f in new.frames if not f.guessed] == [
        (f.pc, f.function) for f in old.frames if not f.guessed
    ], (str(new), str(old))
    assert (new.user_regs is None) == (old.user_regs is None)


@pytest.mark.parametrize("sid", CFI_SAMPLES)
def test_without_vmlinux_the_old_path_gives_the_same_names(samples, sid):
    m = samples.get_built(sid).manifest
    with_vm = unwind(opened(samples, sid), task_regs(opened(samples, sid), m, "panic"))
    plain_dump = opened(samples, sid, with_vmlinux=False)
    assert unwinder_for(plain_dump).cfi is None
    plain = unwind(plain_dump, task_regs(plain_dump, m, "panic"))
    assert "cfi" not in [f.method for f in plain.frames], str(plain)
    assert [f.pc for f in plain.frames] == [f.pc for f in with_vm.frames], (
        str(plain),
        str(with_vm),
    )
    # names where the dump alone has them (i386: no module symbols without types)
    pairs = [(base(a), base(b)) for a, b in zip(plain.functions(), with_vm.functions()) if a]
    assert pairs and all(a == b for a, b in pairs), pairs
    assert in_order([b for _, b in pairs], ["sysrq_handle_crash", "__handle_sysrq"])


@pytest.mark.parametrize("sid", CFI_SAMPLES)
def test_cost_is_lazy_and_small(samples, sid):
    """Nothing is read before the first backtrace; the index is built once."""
    s = samples.get_built(sid)
    with kvmcore.open(str(s.file("elf")), vmlinux=str(samples.vmlinux(sid))) as dump:
        regs = task_regs(dump, s.manifest, "panic")
        unwinder = unwinder_for(dump)
        assert getattr(dump, dwarf_cfi._CACHE_ATTR, None) is None, "loaded before use"
        fresh_unwind(dump, regs, False)  # symbols and modules: not the CFI's cost
        assert getattr(dump, dwarf_cfi._CACHE_ATTR, None) is None, "loaded without CFI"
        t0 = time.perf_counter()
        table = debug_frame_of(dump)
        load = time.perf_counter() - t0
        assert load < 2.0, f"{sid}: .debug_frame index took {load:.2f} s"
        assert debug_frame_of(dump) is table
        t0 = time.perf_counter()
        bt = unwinder.unwind(regs, 64, None)
        walk = time.perf_counter() - t0
        assert "cfi" in [f.method for f in bt.frames]
        assert walk < 1.0, f"{sid}: first CFI backtrace took {walk:.2f} s"
        print(
            f"{sid}: {len(table)} FDEs indexed in {load * 1000:.0f} ms; "
            f"first CFI backtrace ({len(bt.frames)} frames) {walk * 1000:.0f} ms"
        )


@pytest.mark.parametrize("sid", ["x86_64-kaslr", "arm64-kaslr"])
def test_vmlinux_of_another_build_is_refused(samples, sid, tmp_path):
    """A vmlinux of another build, used anyway (force_vmlinux; the sample's
    own with its build id changed): the CFI is refused with the reason in the
    backtrace's notes, and the walk is the arch's own (no CFI frames)."""
    from patching import other_build

    s = samples.get_built(sid)
    other = other_build(samples.vmlinux(sid), tmp_path)
    with kvmcore.open(str(s.file("elf")), vmlinux=str(other), force_vmlinux=True) as wrong:
        with pytest.raises(KvmcoreError, match="build id"):
            debug_frame_of(wrong)
        bt = unwind(wrong, wrong.cpu_states[s.manifest["panic"]["cpu"]].regs)
        assert "cfi" not in [f.method for f in bt.frames], str(bt)
        assert any("DWARF CFI unavailable" in n and "build id" in n for n in bt.notes), bt.notes
