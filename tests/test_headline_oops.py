"""The headline of an oops that panic_on_oops turned into a panic: the oops
report's first line (what an engineer reads first), not the panic's "Fatal
exception", which only says an oops happened; the panic() string stays in
`panic_string` (triage classifies by it). Real dumps of the triage corpus's CI
tier (`python -m sample_dumps corpus --tier ci`): a NULL dereference and a
BUG() in a module, and an explicit panic() whose message is the headline as
before. Ground truth: the guest's serial console (the corpus dump's
serial.log) and the kind's message in the manifest."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from sample_dumps import cache_root
from sample_dumps.corpus import load_corpus

PY = sys.executable
HINT = "run `python -m sample_dumps corpus --tier ci` from the repo root"
TIMESTAMP = re.compile(r"^\s*\[\s*\d+\.\d+\]\s?")


def corpus_dump(kind: str):
    entry = load_corpus(cache_root()).get(f"x86_64-{kind}-1")
    if entry is None:
        pytest.fail(f"corpus dump x86_64-{kind}-1 is not built; {HINT}", pytrace=False)
    return entry


def console(path) -> list[str]:
    text = (path.parent / "serial.log").read_text(errors="replace")
    return [TIMESTAMP.sub("", line).rstrip("\r") for line in text.splitlines()]


def report(path) -> dict:
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "analyze", str(path), "--json"],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


@pytest.mark.parametrize("kind", ["null", "bug"])
def test_oops_line_is_the_headline(kind):
    path, m = corpus_dump(kind)
    lines = console(path)
    panics = [x.split("not syncing: ", 1)[1] for x in lines if "Kernel panic - not syncing: " in x]
    assert panics and panics[0] == "Fatal exception", panics  # the case under test
    oops = next(x for x in lines if x.startswith(m["crash"]["message"]))
    h = report(path)["headline"]
    assert h["panic_message"] == oops, h
    assert h["panic_string"] == panics[0], h
    assert "oops report" in h["sources"]["message"], h["sources"]
    p = subprocess.run(
        [PY, "-m", "kvmcore.cli.main", "sys", str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
    )
    assert p.returncode == 0 and oops in p.stdout, p.stdout + p.stderr


def test_a_plain_panic_keeps_its_message():
    path, m = corpus_dump("panic")
    lines = console(path)
    want = next(x for x in lines if "Kernel panic - not syncing: " in x).split("not syncing: ")[1]
    assert want.startswith(m["crash"]["message"])
    h = report(path)["headline"]
    assert h["panic_message"] == h["panic_string"] == want, h
