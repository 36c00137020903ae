"""dev.sh's apt_install on a fresh machine, with apt-get, apt-cache, dpkg-query
and id replaced by stubs on PATH (nothing is installed): an `apt-get update`
that fails (a mirror index mid-sync exits 100) is retried once and then
tolerated; only a failing install stops the script, naming the packages."""

from __future__ import annotations

import os
import subprocess

import pytest
from conftest import ROOT

pytestmark = pytest.mark.fast

STUBS = {
    # apt-get: `update` fails while $STATE/update-failures is > 0 (counting down);
    # `install` fails for any package named in $STATE/uninstallable, else records the packages
    "apt-get": r"""#!/bin/bash
echo "apt-get $*" >>"$STATE/log"
case "$1" in
update)
    n=$(cat "$STATE/update-failures" 2>/dev/null || echo 0)
    if [ "$n" -gt 0 ]; then echo $((n - 1)) >"$STATE/update-failures"
        echo "E: Failed to fetch .../InRelease  File has unexpected size" >&2; exit 100; fi
    exit 0 ;;
install)
    shift; pkgs=()
    for a in "$@"; do case "$a" in -*) ;; *) pkgs+=("$a") ;; esac; done
    for p in "${pkgs[@]}"; do
        if grep -qx "$p" "$STATE/uninstallable" 2>/dev/null; then
            echo "E: Unable to locate package $p" >&2; exit 100; fi
    done
    printf '%s\n' "${pkgs[@]}" >>"$STATE/installed"; exit 0 ;;
esac
exit 1
""",
    "apt-cache": r"""#!/bin/bash
[ "$1" = show ] && ! grep -qx "$2" "$STATE/unknown" 2>/dev/null
""",
    "dpkg-query": r"""#!/bin/bash
p="${@: -1}"
grep -qx "$p" "$STATE/installed" 2>/dev/null && printf installed && exit 0
exit 1
""",
    "id": "#!/bin/bash\necho 0\n",
}


@pytest.fixture
def apt(tmp_path):
    stubs, state = tmp_path / "bin", tmp_path / "state"
    stubs.mkdir()
    state.mkdir()
    for name, text in STUBS.items():
        (stubs / name).write_text(text)
        (stubs / name).chmod(0o755)

    def run(*packages: str, update_failures: int = 0, uninstallable=(), unknown=()):
        (state / "update-failures").write_text(f"{update_failures}\n")
        (state / "uninstallable").write_text("".join(f"{p}\n" for p in uninstallable))
        (state / "unknown").write_text("".join(f"{p}\n" for p in unknown))
        env = dict(
            os.environ,
            PATH=f"{stubs}:{os.environ['PATH']}",
            STATE=str(state),
            KVMCORE_APT_RETRY_SECONDS="0",
        )
        p = subprocess.run(
            [
                "bash",
                "-c",
                'source ./dev.sh && apt_install "$@" && echo DONE',
                "apt_install",
                *packages,
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        log = (state / "log").read_text().splitlines() if (state / "log").exists() else []
        return p, log

    return run


def test_update_fails_once_then_installs(apt):
    p, log = apt("qemu-system-x86", "crash", update_failures=1)
    assert p.returncode == 0 and "DONE" in p.stdout, p.stderr
    assert [line.split()[1] for line in log] == ["update", "update", "install"]
    assert "retrying" in p.stderr


def test_update_fails_twice_warns_and_still_installs(apt):
    p, log = apt("qemu-system-x86", "crash", update_failures=5)
    assert p.returncode == 0 and "DONE" in p.stdout, p.stderr
    assert [line.split()[1] for line in log] == ["update", "update", "install"]
    assert "warning: apt-get update failed twice" in p.stderr


def test_failed_install_names_the_packages(apt):
    p, _ = apt(
        "qemu-system-x86",
        "no-such-pkg",
        "crash",
        uninstallable=["no-such-pkg"],
        unknown=["no-such-pkg"],
    )
    assert p.returncode != 0 and "DONE" not in p.stdout
    assert "apt-get install failed; not installed: qemu-system-x86 no-such-pkg crash" in p.stderr
    assert "not in this machine's package lists: no-such-pkg" in p.stderr


def test_nothing_missing_runs_no_apt(apt, tmp_path):
    (tmp_path / "state" / "installed").write_text("gdb\n")
    p, log = apt("gdb")
    assert p.returncode == 0 and "DONE" in p.stdout, p.stderr
    assert log == []


def test_dev_sh_names_its_commands():
    p = subprocess.run(["bash", str(ROOT / "dev.sh")], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    assert all(cmd in p.stderr for cmd in ("./dev.sh analyze", "./dev.sh test", "./dev.sh fast"))
