#!/usr/bin/env bash
# fsx (the Rust rewrite) against `zerodax mount`, 20,000 operations with mmap, punch hole,
# fallocate, truncate and copy_file_range, once per passthrough mode given.
# Usage: tests/fsx/run.sh [on|off]...   (default: off on); FSX_OPS and FSX_SEED override.
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"

modes=("$@")
[[ ${#modes[@]} -gt 0 ]] || modes=(off on)
ops=${FSX_OPS:-20000}
seed=${FSX_SEED:-20261125}

make_backing 1G
status=0
for mode in "${modes[@]}"; do
    echo "=== fsx -N $ops -S $seed on zerodax mount --passthrough $mode"
    start_zerodax --passthrough "$mode"
    mkdir -p "$ZD_TMP/fsx-$mode"
    if timeout 900 fsx -f "$here/fsx.toml" -N "$ops" -S "$seed" -P "$ZD_TMP/fsx-$mode" \
            "$ZD_MNT/fsx-$mode.bin" > "$ZD_TMP/fsx-$mode.out" 2>&1; then
        tail -1 "$ZD_TMP/fsx-$mode.out"
    else
        status=1
        tail -40 "$ZD_TMP/fsx-$mode.out"
    fi
    stop_zerodax || status=1
done
exit $status
