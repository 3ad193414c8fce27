#!/usr/bin/env bash
# Runs every Tessera test. Installs what it needs itself (protoc, the wasm32 target,
# cargo-nextest if missing), so it works on a fresh machine. Used verbatim by CI (.ci/run).
set -euo pipefail
export CARGO_TERM_COLOR=never
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

# The benchmark harness's etcd client (etcd-client, tonic) compiles etcd's protos with protoc.
if ! command -v protoc >/dev/null 2>&1; then
    step "installing protobuf-compiler (protoc, for the etcd client of the benchmark harness)"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    $sudo_cmd apt-get install -y -qq protobuf-compiler
fi

step "toolchain: wasm32-unknown-unknown target"
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    step "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

step "wasm32 build of the SDK core (no tokio, quinn or redb)"
cargo build -p tessera --no-default-features --target wasm32-unknown-unknown
if cargo tree -p tessera --no-default-features --target wasm32-unknown-unknown -e normal | grep -Eq '^.*(tokio|quinn|redb) v'; then
    echo "error: the SDK core pulls in tokio, quinn or redb" >&2
    exit 1
fi

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

step "unit, property and cluster tests"
cargo nextest run --workspace --profile ci --no-fail-fast 2>&1 | tee -a "$log"

step "doc tests"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# One closing line with the totals of both runners.
passed=$(awk '
    /Summary .* tests run: [0-9]+ passed/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed,?$/) { n += $(i - 1); break } }
    /^test result: ok\. [0-9]+ passed/ { n += $4 }
    END { print n + 0 }' "$log")
printf '\ntests: %d passed, 0 failed\n' "$passed"
