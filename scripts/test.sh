#!/usr/bin/env bash
# Runs every test zerodax has: formatting and lints, the Rust unit and integration tests (real
# mounts, real windows), pjdfstest and fsx against `zerodax mount` in both passthrough modes.
# Needs root and /dev/fuse. Installs what it needs first (scripts/setup.sh) unless
# ZERODAX_SKIP_SETUP=1.
set -uo pipefail
cd "$(dirname "$0")/.."

[[ ${ZERODAX_SKIP_SETUP:-0} == 1 ]] || bash scripts/setup.sh || exit 1

passed=0
failed=0
suite() {
    local name=$1; shift
    echo "::: $name"
    local t0=$SECONDS
    if "$@"; then
        passed=$((passed + 1)); echo "::: $name: ok ($((SECONDS - t0)) s)"
    else
        failed=$((failed + 1)); echo "::: $name: FAILED ($((SECONDS - t0)) s)"
    fi
}

suite fmt cargo fmt --all -- --check
suite clippy cargo clippy --workspace --all-targets --quiet -- -D warnings
suite build cargo build --workspace --release --quiet
suite cargo-test cargo test --workspace --release -- --test-threads=2
suite pjdfstest tests/pjdfstest/run.sh off on
suite fsx tests/fsx/run.sh off on

echo
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
