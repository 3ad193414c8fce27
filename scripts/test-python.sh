#!/usr/bin/env bash
# Tests of the Python SDK (bindings/python). Builds the `tessera` binary (unless
# $TESSERA_BIN names one), makes a venv under target/ with maturin, pytest and mypy, builds
# the extension into it (`maturin develop`, dev profile, in the workspace's target/), then
# runs pytest (real clusters of that binary), mypy --strict on the examples and tests, and
# mypy's stubtest on the package. Works on a fresh machine with Python >= 3.9 and a Rust
# toolchain. Called by scripts/test.sh.
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

python="${PYTHON:-python3}"
venv="target/python-venv"

if ! "$python" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    step "installing python3-venv"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq python3-venv
fi

if [ ! -x "$venv/bin/python" ]; then
    step "python venv in $venv"
    "$python" -m venv "$venv"
fi
step "pip install maturin pytest mypy"
"$venv/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip
"$venv/bin/python" -m pip install -q --disable-pip-version-check maturin pytest mypy

# The clusters under test run this binary. scripts/test.sh passes the one its test build
# made ($TESSERA_BIN): a `cargo build` here would unify features differently and rebuild it.
if [ -z "${TESSERA_BIN:-}" ]; then
    step "tessera binary (the clusters under test)"
    cargo build -p tessera-cli --bin tessera
    export TESSERA_BIN="$PWD/target/debug/tessera"
fi

step "building the extension (maturin develop)"
VIRTUAL_ENV="$PWD/$venv" PATH="$PWD/$venv/bin:$PATH" \
    "$venv/bin/maturin" develop --manifest-path bindings/python/Cargo.toml

cd bindings/python
step "pytest"
status=0
"../../$venv/bin/python" -m pytest -q -p no:cacheprovider --durations=5 || status=$?

step "mypy --strict (examples and tests) and stubtest"
"../../$venv/bin/python" -m mypy --strict examples tests || status=$?
"../../$venv/bin/python" -m mypy.stubtest tessera --mypy-config-file pyproject.toml || status=$?
exit "$status"
