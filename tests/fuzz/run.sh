#!/usr/bin/env bash
# Fuzzes the FUSE request parser (protocol/fuzz, target parse_request) for a bounded time,
# from a seed corpus of one valid request per opcode, in a scratch directory: a crash fails the
# run and its input is kept under $out/artifacts. cargo-fuzz wants nightly flags; the stable
# toolchain takes them with RUSTC_BOOTSTRAP=1 (docs/protocol.md, *Fuzzing*).
#
# Usage: tests/fuzz/run.sh [SECONDS]   (default 60; $ZERODAX_FUZZ_OUT, default /tmp/zerodax-fuzz)
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds=${1:-60}
out=${ZERODAX_FUZZ_OUT:-/tmp/zerodax-fuzz}
rm -rf "$out"
mkdir -p "$out/corpus" "$out/artifacts"
cargo run --quiet --release -p zerodax-protocol --example fuzz_seeds -- "$out/corpus"
cd protocol/fuzz
export RUSTC_BOOTSTRAP=1
# The fuzz crate's own target dir, so the sanitizer build never mixes with the main one.
cargo fuzz build --release parse_request
timeout $((seconds + 300)) cargo fuzz run --release parse_request "$out/corpus" -- \
    -max_total_time="$seconds" -max_len=4096 -artifact_prefix="$out/artifacts/" \
    -print_final_stats=1 2>&1 | tail -n 25
