#!/usr/bin/env bash
# Runs every test zerodax has: formatting and lints, the Rust unit and integration tests (real
# mounts, real windows), pjdfstest and fsx against `zerodax mount` in both passthrough modes, a
# real Linux guest against the C virtiofsd, and the DAX window behind QEMU 11.1.
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
# The frontend tests drive every vhost-user-fs backend named here through the same socket
# protocol; zerodax is the release binary built above.
export ZERODAX_FRONTEND_BACKENDS=${ZERODAX_FRONTEND_BACKENDS:-zerodax,c-virtiofsd,virtiofsd}
export ZERODAX_BIN=$PWD/target/release/zerodax
suite cargo-test cargo test --workspace --release -- --test-threads=2
# The FUSE request parser under libFuzzer for a bounded minute (protocol/fuzz).
suite fuzz tests/fuzz/run.sh 60
suite pjdfstest tests/pjdfstest/run.sh off on
suite fsx tests/fsx/run.sh off on
# A real Linux guest mounting `zerodax serve`, against the C virtiofsd as the reference.
suite guest tests/guest/compare.sh --no-prepare --modes auto,always zerodax c-virtiofsd
# The same with inodes by file handle, KILLPRIV_V2 and xattrs (one cache mode).
suite guest-handles tests/guest/compare.sh --no-prepare --modes auto \
    --out /tmp/zdg-guest-handles zerodax-handles c-virtiofsd
# The DAX window behind a real VMM (QEMU 11.1) and a real guest, both hole modes.
suite guest-dax tests/guest/dax-suite.sh

echo
echo "suites: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
