"""`kvmcore analyze` end to end, as a user runs it (the installed console
script, output piped), on the real sample dumps; facts from the manifests."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, sample_files

KVMCORE = Path(sys.executable).with_name("kvmcore")
SCHEMA = ROOT / "kvmcore" / "schema" / "report.schema.json"
# one file of each kind per sample: ELF, QEMU's flattened kdump, filtered kdump. Kernels
# with BTF only (x86_64, arm64): with no vmlinux, i386's 686-pae kernel has no types.
REPORT_FILES = [
    (sid, fmt)
    for arch in ("x86_64", "aarch64")
    for sid, fmt in sample_files(arch=arch)
    if fmt in ("elf", "kdump-zlib", "mdf-d31-c", "proc-elf", "mdf-d31-l")
]


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    if not KVMCORE.exists():
        pytest.fail(
            f"{KVMCORE} is missing: install kvmcore into this venv (pip install -e .)",
            pytrace=False,
        )
    p = subprocess.run(
        [str(KVMCORE), *args], capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


@pytest.fixture(scope="module")
def reports(samples):
    """(sid, fmt) -> (text report, json report), computed once per file."""
    cache = {}

    def get(sid: str, fmt: str):
        if (sid, fmt) not in cache:
            path = str(samples.get_built(sid).file(fmt))
            cache[sid, fmt] = (
                run("analyze", path).stdout,
                json.loads(run("analyze", path, "--json").stdout),
            )
        return cache[sid, fmt]

    return get


@pytest.mark.parametrize("sid,fmt", REPORT_FILES)
def test_headline_names_the_panic(samples, reports, sid, fmt):
    m = samples.get_built(sid).manifest
    text, data = reports(sid, fmt)
    assert "\x1b" not in text, "piped output must carry no escape codes"
    first = text.splitlines()[0]
    assert first == f"Kernel panic: {m['panic']['message']}"
    h = data["headline"]
    assert h["panic_message"] == m["panic"]["message"]
    assert h["task"]["pid"] == m["panic"]["pid"] and h["task"]["comm"] == m["panic"]["comm"]
    assert h["cpu"] == m["panic"]["cpu"]
    assert h["release"] == m["kernel_release"]
    assert h["arch"] == m["arch"]
    assert f"{m['panic']['pid']} ({m['panic']['comm']})" in text
    assert f"{m['kernel_release']} ({m['arch']})" in text
    names = [f["function"] or "" for f in data["backtrace"]["frames"]]
    assert any(n.startswith("sysrq_handle_crash+") for n in names), names
    assert "sysrq_handle_crash+" in text


@pytest.mark.parametrize("sid,fmt", REPORT_FILES)
def test_json_validates_and_agrees_with_ps(samples, reports, sid, fmt):
    jsonschema = _jsonschema()
    _, data = reports(sid, fmt)
    jsonschema.validate(data, json.loads(SCHEMA.read_text()))
    assert data["schema_version"] == 1
    path = str(samples.get_built(sid).file(fmt))
    ps = json.loads(run("ps", path, "--json").stdout)
    assert data["tasks"]["list"] == ps["tasks"]
    m = samples.get_built(sid).manifest
    pids = {t["pid"] for t in ps["tasks"]}
    assert {p["pid"] for p in m["processes"]} <= pids
    lines = data["log"]["lines"]
    panic_at = max(i for i, line in enumerate(lines) if "Kernel panic - not syncing" in line)
    assert m["panic"]["message"] in lines[panic_at]
    # the tail ends with the panic's own lines: nothing logged before it follows it
    stamp = lambda line: float(re.match(r"\[\s*([\d.]+)\]", line).group(1))  # noqa: E731
    assert all(stamp(line) >= stamp(lines[panic_at]) for line in lines[panic_at:])
    assert data["dump"]["format"] in ("elf", "kdump")
    if "mdf-d31" in fmt:
        assert data["dump"]["dump_level"] == 31


def _jsonschema():
    try:
        import jsonschema
    except ImportError:
        pytest.fail("jsonschema is missing: pip install -e '.[test]'", pytrace=False)
    return jsonschema


def test_markdown_headline_is_a_heading(samples):
    s = samples.get_built("x86_64-kaslr")
    out = run("analyze", str(s.file("mdf-d31-c")), "--format", "markdown").stdout
    assert out.splitlines()[0] == f"# Kernel panic: {s.manifest['panic']['message']}"
    assert "## Backtrace" in out and "sysrq_handle_crash+" in out


@pytest.mark.fast
def test_no_argument_analyzes_the_committed_sample():
    manifest = json.loads((ROOT / "sample_dumps/committed/x86_64-small/manifest.json").read_text())
    p = run("analyze")
    lines = p.stdout.splitlines()
    assert lines[0].startswith("kvmcore: no dump given: analyzing the committed sample")
    assert lines[1] == f"Kernel panic: {manifest['panic']['message']}"
    assert f"{manifest['panic']['pid']} ({manifest['panic']['comm']})" in p.stdout
    assert manifest["marker"] in p.stdout


def test_arm64_dump_on_this_host(samples):
    """Cross-arch post-mortem: the arm64 dump read on whatever host runs the tests."""
    s = samples.get_built("arm64-kaslr")
    data = json.loads(run("analyze", str(s.file("elf")), "--json").stdout)
    assert data["dump"]["arch"] == "aarch64"
    assert data["headline"]["release"] == s.manifest["kernel_release"]
    assert data["headline"]["task"]["pid"] == s.manifest["panic"]["pid"]


def _bad_inputs(tmp_path: Path, samples) -> dict[str, tuple[Path, str]]:
    not_dump = tmp_path / "notes.txt"
    not_dump.write_text("this is not a crash dump\n" * 10)
    empty = tmp_path / "empty"
    empty.touch()
    src = samples.get_built("x86_64-kaslr")
    trunc_elf = tmp_path / "truncated.elf"
    with open(src.file("elf"), "rb") as f:
        trunc_elf.write_bytes(f.read(4 << 20))
    trunc_kdump = tmp_path / "truncated.kdump"
    with open(src.file("mdf-d31-c"), "rb") as f:
        trunc_kdump.write_bytes(f.read(3 << 20))
    return {
        "not a dump": (not_dump, "not a recognised crash dump"),
        "empty": (empty, "is empty"),
        "directory": (tmp_path, "is a directory"),
        "truncated ELF": (trunc_elf, "truncated"),
        "truncated kdump": (trunc_kdump, "truncated"),
    }


@pytest.mark.parametrize(
    "case", ["not a dump", "empty", "directory", "truncated ELF", "truncated kdump"]
)
def test_bad_input_is_one_line(tmp_path, samples, case):
    path, words = _bad_inputs(tmp_path, samples)[case]
    p = run("analyze", str(path), check=False)
    assert p.returncode == 2, (p.returncode, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1, p.stderr
    assert str(path) in lines[0] and words in lines[0]
    assert "Traceback" not in p.stderr


def test_exit_codes_are_distinct(samples, tmp_path):
    s = samples.get_built("x86_64-kaslr")
    unknown_arch = run("analyze", str(s.file("elf")), "--arch", "vax", check=False)
    assert unknown_arch.returncode == 3 and "unknown architecture" in unknown_arch.stderr
    missing_symbol = run("sym", str(s.file("elf")), "no_such_symbol_anywhere", check=False)
    assert missing_symbol.returncode == 4 and "no_such_symbol_anywhere" in missing_symbol.stderr


def test_dump_is_never_written(samples):
    s = samples.get_built("x86_64-small")
    path = s.file("mdf-d31-c")
    before = path.stat().st_mtime_ns, path.read_bytes()[:4096]
    run("analyze", str(path), "--json")
    assert (path.stat().st_mtime_ns, path.read_bytes()[:4096]) == before
    assert shutil.which("kvmcore") or KVMCORE.exists()
