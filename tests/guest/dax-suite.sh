#!/usr/bin/env bash
# The real-guest DAX suite: `zerodax serve` behind QEMU 11.1 (a VMM with a DAX window) and a real
# Linux guest, in both hole modes and both guest DAX policies (dax=always, dax=inode). Each run:
# the dax scenario (sparse, fragmented, twice-the-window and many files, read whole through
# read(2) and mmap; host checks of the VMM, page cache and allocation: tests/guest/dax.sh) and
# the sparse scenario (stores into holes through the window, punch, truncate); with dax=always
# also fsx (mmap reads and writes, truncate, punch) and pjdfstest, every file through the window.
#
# Usage: tests/guest/dax-suite.sh [--out DIR] [--runs LIST]
#   --runs LIST   comma separated HOLES-POLICY pairs (default zero-always,zero-inode,map-always,map-inode)
# Exit: 0 when every run passed; 1 otherwise (a dead VMM fails its run).
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
out=/tmp/zdg-guest-dax runs=zero-always,zero-inode,map-always,map-inode
while [[ $# -gt 0 ]]; do
    case $1 in
        --out) out=$2; shift 2 ;;
        --runs) runs=$2; shift 2 ;;
        *) echo "dax-suite.sh: unknown option $1" >&2; exit 2 ;;
    esac
done

passed=0 failed=0
IFS=, read -r -a list <<<"$runs"
for run in "${list[@]}"; do
    # The dax scenario last: its host checks (page cache) then see its files as it left them.
    holes=${run%-*} policy=${run#*-} scenarios=sparse,dax
    [[ $policy == always ]] && scenarios=sparse,fsx,pjdfstest,dax
    if bash "$here/run.sh" --vmm dax --backend zerodax --label "dax-$run" --out "$out/$run" \
        --scenarios "$scenarios" --mount-opts "dax=$policy" --timeout 900 \
        --extra "--tag zdg --cache-size 1G --dax-holes $holes"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "dax-suite.sh: run $run failed (results: $out/$run)" >&2
    fi
done
# A guest reboot with mappings live, in each hole mode: the guest unmounts first, as a shutdown
# does (DESTROY; a forced reset with live mappings crashes QEMU 11.1 itself: docs/dax.md).
for holes in zero map; do
    if bash "$here/run.sh" --vmm dax --backend zerodax --label "dax-reboot-$holes" \
        --out "$out/reboot-$holes" --scenarios reboot,sparse --mount-opts dax=always \
        --timeout 600 --extra "--tag zdg --cache-size 1G --dax-holes $holes"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "dax-suite.sh: run reboot-$holes failed (results: $out/reboot-$holes)" >&2
    fi
done
echo "guest-dax: $passed passed, $failed failed"
[[ $failed -eq 0 ]]
