#!/usr/bin/env bash
# Runs every Tessera test. Installs what it needs itself (protoc, the wasm32 target,
# cargo-nextest, a Python venv for the Python SDK if missing), so it works on a fresh
# machine. Used verbatim by CI (.ci/run).
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
for crate in "tessera --no-default-features" "tessera-sdk-wasm"; do
    # shellcheck disable=SC2086
    if cargo tree -p $crate --target wasm32-unknown-unknown -e normal | grep -Eq '^.*(tokio|quinn|redb) v'; then
        echo "error: $crate pulls in tokio, quinn or redb on wasm32" >&2
        exit 1
    fi
done

log="$(mktemp)"
trap 'rm -f "$log"' EXIT

step "unit, property and cluster tests"
cargo nextest run --workspace --profile ci --no-fail-fast 2>&1 | tee -a "$log"

step "doc tests"
cargo test --workspace --doc 2>&1 | tee -a "$log"

# The JavaScript SDK (sdk-wasm/): npm packages, the wasm package (npm run build installs the
# wasm-bindgen CLI of the exact Cargo.lock version if missing), the glue's tests in Node.js,
# then the conformance suite over WebSocket against a real cluster of tessera processes.
# The browser tests drive Debian's chromium headless (playwright-core, no browser download).
missing=()
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ "${#missing[@]}" -gt 0 ]; then
    step "installing ${missing[*]}"
    sudo_cmd=""
    if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}"
fi
step "JavaScript SDK: npm ci and npm run build (wasm, wasm-bindgen, wasm-opt, size budget)"
(cd sdk-wasm && npm ci --no-audit --no-fund && npm run build)

step "JavaScript SDK: wasm glue tests in Node.js (wasm-bindgen-test)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
    cargo test -p tessera-sdk-wasm --target wasm32-unknown-unknown 2>&1 | tee -a "$log"

step "JavaScript SDK: conformance and token tests from Node.js, the dev page and the suite's core in headless Chromium"
cargo build -p tessera-cli --bin tessera
(cd sdk-wasm && TESSERA_BIN="$PWD/../target/debug/tessera" node --test --test-concurrency=1 --test-reporter=tap test/) 2>&1 | tee -a "$log"

step "Python SDK (bindings/python): pytest, mypy, stubtest"
# The tessera binary built above (a second cargo build could unify features differently).
TESSERA_BIN="$PWD/target/debug/tessera" ./scripts/test-python.sh 2>&1 | tee -a "$log"

# One closing line with the totals of every runner.
passed=$(awk '
    /Summary .* tests run: [0-9]+ passed/ { for (i = 1; i <= NF; i++) if ($i ~ /^passed,?$/) { n += $(i - 1); break } }
    /^test result: ok\. [0-9]+ passed/ { n += $4 }
    /^# pass [0-9]+/ { n += $3 }
    /^[0-9]+ passed(,| in )/ { n += $1 }
    END { print n + 0 }' "$log")
printf '\ntests: %d passed, 0 failed\n' "$passed"
