#!/usr/bin/env bash
# The real-guest read benchmark of docs/benchmarks.md: a 1 GiB sparse file with 1% data read whole
# by a Linux guest under QEMU 11.1 (TCG), cold then warm, through FUSE_READ (no DAX), the DAX
# window in `map` mode and in `zero` mode; for each, the host's page cache of the file
# afterwards, the VMM's peak RSS and its peak count of file mappings. TCG timings are for
# comparing the rows with each other, not absolute.
#
# Usage: tests/guest/bench-dax.sh [--out DIR] [zerodax serve flags for every row...]
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=/tmp/zdg-guest-bench
[[ ${1:-} == --out ]] && { out=$2; shift 2; }
more=$*
rows=("fuse-read|dax=never|--dax-holes map" "dax-map|dax=always|--dax-holes map" "dax-zero|dax=always|--dax-holes zero")
echo "| path | cold read | warm read | host page cache | VMM peak RSS | peak file mappings |"
echo "|---|---|---|---|---|---|"
for row in "${rows[@]}"; do
    IFS='|' read -r name opts holes <<<"$row"
    bash "$here/run.sh" --vmm dax --backend zerodax --label "bench-$name" --out "$out/$name" \
        --scenarios bench --mount-opts "$opts" --timeout 900 \
        --extra "--tag zdg --cache-size 1G $holes $more" >/dev/null 2>&1
    line=$(awk -F'\t' '$1 == "bench" {print $2 "\t" $3}' "$out/$name/cases.tsv")
    if [[ $line != PASS* ]]; then
        echo "| $name | failed: ${line#*$'\t'} (see $out/$name) | | | | |"
        continue
    fi
    d=${line#*$'\t'}
    cold=$(sed -n 's/^cold \([0-9.]*\) s.*/\1/p' <<<"$d")
    warm=$(sed -n 's/.*warm \([0-9.]*\) s.*/\1/p' <<<"$d")
    cache=$(sed -n 's/.*page cache \([0-9]*\) MiB.*/\1/p' <<<"$d")
    rss=$(sed -n 's/.*peak RSS \([0-9]*\) MiB.*/\1/p' <<<"$d")
    maps=$(sed -n 's/.*peak file mappings \([0-9]*\).*/\1/p' <<<"$d")
    echo "| $name | $cold s | $warm s | $cache MiB | $rss MiB | $maps |"
done
