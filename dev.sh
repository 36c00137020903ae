#!/usr/bin/env bash
# kvmcore's two set-up commands on a fresh Debian 12 machine (run as root, or
# with sudo when apt packages are missing):
#   ./dev.sh analyze [ARGS]  install kvmcore into .venv and analyze the committed sample dump
#   ./dev.sh test            install everything the tests need, build (or reuse) the real
#                            sample dumps in ~/.cache/kvmcore, run the linters and the whole
#                            test suite
#   ./dev.sh lint            ruff, mypy and the import-layer contracts (lint-imports)
set -euo pipefail
cd "$(dirname "$0")"
VENV=${KVMCORE_VENV:-.venv}
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

apt_install() {  # apt_install PKG...: install what is missing, after one apt-get update
    local missing=()
    for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    [ ${#missing[@]} -eq 0 ] && return 0
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -q
    $sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
}

venv() {  # venv EXTRAS: a virtual environment with kvmcore installed (editable)
    python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv python3-pip
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e ".$1"
}

case "${1:-}" in
analyze)
    shift
    venv ""
    exec "$VENV/bin/kvmcore" analyze "$@"
    ;;
lint)
    # ruff (lint + format check), mypy (strict on the public API), and
    # import-linter's layer contracts (pyproject.toml). lint-imports reads an
    # installed copy: the editable install maps arches/ and cli/ into kvmcore
    # with an import hook, which the import graph builder does not follow.
    venv "[test]"
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    "$VENV/bin/pip" install -q --no-deps --target "$tmp/site" . >/dev/null
    linter=$(cd "$VENV/bin" && pwd)/lint-imports
    config=$PWD/pyproject.toml
    (cd "$tmp" && PYTHONPATH="$tmp/site" "$linter" "$config")
    ;;
test)
    shift
    apt_install $(grep -v '^#' sample_dumps/apt-packages.txt)
    venv "[test]"
    "$VENV/bin/python" -m sample_dumps build --with-dbg
    exec "$VENV/bin/python" -m pytest -q -p no:cacheprovider tests "$@"
    ;;
*)
    echo "usage: ./dev.sh analyze [DUMP [VMLINUX]] | ./dev.sh test [PYTEST-ARGS] | ./dev.sh lint" >&2
    exit 2
    ;;
esac
