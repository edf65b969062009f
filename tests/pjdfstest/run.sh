#!/usr/bin/env bash
# pjdfstest (the Rust rewrite) against `zerodax mount`, once per passthrough mode given.
# Usage: tests/pjdfstest/run.sh [on|off]...   (default: off on)
# Every failure must be listed in expected-failures.txt with its reason (docs/pjdfstest.md).
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../lib.sh
source "$here/../lib.sh"

modes=("$@")
[[ ${#modes[@]} -gt 0 ]] || modes=(off on)

config=$ZD_TMP/pjdfstest.toml
{
    cat <<'TOML'
[features]
posix_fallocate = {}
rename_ctime = {}
utime_now = {}
utimensat = {}

[settings]
naptime = 0.05
allow_remount = false
TOML
    printf 'expected_failures = ['
    awk '!/^[[:space:]]*(#|$)/ {printf "\"%s\", ", $1}' "$here/expected-failures.txt"
    printf ']\n\n[dummy_auth]\nentries = [["nobody", "nogroup"], ["daemon", "daemon"]]\n'
} > "$config"

make_backing 1G
status=0
for mode in "${modes[@]}"; do
    echo "=== pjdfstest on zerodax mount --passthrough $mode"
    mkdir -p "$ZD_BACKING/pjd-$mode"
    chmod 0777 "$ZD_BACKING/pjd-$mode"
    start_zerodax --passthrough "$mode" --allow-other
    if ! (cd "$ZD_MNT/pjd-$mode" && timeout 900 pjdfstest -c "$config" -p "$ZD_MNT/pjd-$mode" \
            > "$ZD_TMP/pjd-$mode.out" 2>&1); then
        status=1
    fi
    grep -E "FAILED|PASSED UNEXPECTEDLY" "$ZD_TMP/pjd-$mode.out" || true
    grep -E '^Summary' "$ZD_TMP/pjd-$mode.out" || { tail -20 "$ZD_TMP/pjd-$mode.out"; status=1; }
    stop_zerodax || status=1
done
exit $status
