#!/usr/bin/env bash
# kvmcore's set-up commands on a fresh Debian 12 machine (run as root, or
# with sudo when apt packages are missing):
#   ./dev.sh analyze [ARGS]  install kvmcore into .venv and analyze the committed sample dump
#   ./dev.sh test            install everything the tests need, build (or reuse) the real
#                            sample dumps in ~/.cache/kvmcore, run the linters and the whole
#                            test suite
#                            (not the slow tier: tests marked slow are skipped)
#   ./dev.sh slow            the slow tier: build the Xen HVM guest sample (16-25 min)
#                            and the whole triage corpus (python -m sample_dumps corpus:
#                            13 crash kinds x 3 dumps, ~10 minutes cold) and run the
#                            tests marked slow
#   ./dev.sh fast            the fast tier (pytest -m fast): .venv with the test extra, then
#                            the tests that need only the committed sample and generated
#                            fixtures; no QEMU, no sample build, under a minute
#   ./dev.sh lint            ruff, mypy and the import-layer contracts (lint-imports)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
VENV=${KVMCORE_VENV:-.venv}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

installed() {  # installed PKG: is the package installed (not just known to dpkg)?
    [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]
}

apt_install() {  # apt_install PKG...: install what is missing
    local missing=() failed=() unknown=() p sudo=""
    for p in "$@"; do installed "$p" || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    # A mirror index caught mid-sync makes `apt-get update` exit 100 although every
    # package may still be installable: retry once, then go on with the lists we have.
    if ! $sudo apt-get update -q; then
        echo "dev.sh: apt-get update failed; retrying in ${KVMCORE_APT_RETRY_SECONDS:-15} s" >&2
        sleep "${KVMCORE_APT_RETRY_SECONDS:-15}"
        $sudo apt-get update -q || echo "dev.sh: warning: apt-get update failed twice;" \
            "installing from the package lists this machine already has" >&2
    fi
    if ! $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"; then
        for p in "${missing[@]}"; do
            installed "$p" && continue
            failed+=("$p")
            apt-cache show "$p" >/dev/null 2>&1 || unknown+=("$p")
        done
        echo "dev.sh: apt-get install failed; not installed: ${failed[*]:-${missing[*]}}" >&2
        [ ${#unknown[@]} -eq 0 ] ||
            echo "dev.sh: not in this machine's package lists: ${unknown[*]}" >&2
        exit 1
    fi
}

has_c_toolchain() {  # has_c_toolchain: gcc and python3's headers are here
    local include
    include=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["include"])')
    command -v gcc >/dev/null && [ -f "$include/Python.h" ]
}

c_toolchain() {  # c_toolchain: gcc and Python's headers, to build kvmcore/_listwalk.c (the
    # task walk's loop in C). Optional: without them kvmcore installs and walks in Python
    has_c_toolchain && return 0
    command -v apt-get >/dev/null || return 0
    (apt_install gcc python3-dev) || echo "dev.sh: warning: no C compiler or Python headers:" \
        "kvmcore will walk task lists in Python (slower on dumps of many tasks)" >&2
}

venv() {  # venv EXTRAS: a virtual environment with kvmcore installed (editable)
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv python3-pip
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    # pip only when this venv lacks these extras of this pyproject.toml ("[test]" covers "")
    local hash stamp="$VENV/.kvmcore-installed$1"
    hash=$(sha256sum pyproject.toml | cut -d' ' -f1)
    if [ -x "$VENV/bin/kvmcore" ] && { [ "$(cat "$stamp" 2>/dev/null)" = "$hash" ] ||
            [ "$(cat "$VENV/.kvmcore-installed[test]" 2>/dev/null)" = "$hash" ]; }; then
        # ... or when it was installed without the C toolchain, which is here now
        "$VENV/bin/python" -c 'import kvmcore._listwalk' 2>/dev/null && return 0
        has_c_toolchain || return 0
    fi
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".$1"
    echo "$hash" >"$stamp"
}

lint() {  # lint: ruff (lint + format check), mypy (strict on the public API), and
    # import-linter's layer contracts (pyproject.toml), all on the source tree:
    # kvmcore/arches and kvmcore/cli are symlinks to arches/ and cli/, so the tools
    # see the installed package's layout (kvmcore.arches, kvmcore.cli)
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    "$VENV/bin/lint-imports" --no-cache
}

# sourced (tests/test_devsh.py): define the functions only
[ "${BASH_SOURCE[0]}" = "$0" ] || return 0

case "${1:-}" in
analyze)
    shift
    c_toolchain
    venv ""
    exec "$VENV/bin/kvmcore" analyze "$@"
    ;;
lint)
    venv "[test]"
    lint
    ;;
test)
    shift
    apt_install $(grep -v '^#' sample_dumps/apt-packages.txt)
    venv "[test]"
    lint
    "$VENV/bin/python" -m sample_dumps build --with-dbg
    # the triage corpus's CI tier: one dump of each of 4 crash kinds (~1 minute cold)
    "$VENV/bin/python" -m sample_dumps corpus --tier ci
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not slow" tests "$@"
    ;;
slow)
    shift
    apt_install $(grep -v '^#' sample_dumps/apt-packages.txt)
    venv "[test]"
    "$VENV/bin/python" -m sample_dumps build --with-dbg
    # the Xen HVM guest's dump (16-25 minutes: its boot and its xl dump-core are slow under TCG)
    "$VENV/bin/python" -m sample_dumps build --only xen-hvm --with-dbg
    "$VENV/bin/python" -m sample_dumps corpus --tier full
    "$VENV/bin/python" -m sample_dumps corpus --tier full --arch arm64 --copies 2
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m slow tests "$@"
    ;;
fast)
    shift
    venv "[test]"
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m fast tests "$@"
    ;;
*)
    echo "usage: ./dev.sh analyze [DUMP [VMLINUX]] | ./dev.sh test [PYTEST-ARGS]" \
         "| ./dev.sh slow [PYTEST-ARGS]" \
         "| ./dev.sh fast [PYTEST-ARGS] | ./dev.sh lint" >&2
    exit 2
    ;;
esac
