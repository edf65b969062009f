#!/usr/bin/env bash
# The real-guest suite for a candidate backend and a reference backend, in each cache mode, with a
# per-case diff: every case the reference passes, the candidate must pass too.
#
# Usage: tests/guest/compare.sh [OPTIONS] CANDIDATE REFERENCE
#   CANDIDATE, REFERENCE: a backend name (zerodax, zerodax-handles, c-virtiofsd, rust-virtiofsd) or a command
#                         template with {sock} {dir} {cache}, split on spaces
# Options:
#   --modes LIST     cache modes, comma separated (default auto,always)
#   --out DIR        results (default /tmp/zdg-guest-compare); DIR/MODE/{candidate,reference}/
#   --fsx-ops N      fsx operations per run (default 10000)
#   --no-prepare     don't run prepare.sh first (also ZDG_SKIP_PREPARE=1)
# A candidate failure of a case listed in flaky.txt is rerun (up to 3 fresh guests, that case only)
# and counts as passed only if a rerun passes.
# Exit: 0 when the candidate passes everything the reference passes in every mode and both runs
# of every mode booted and mounted; 1 otherwise.
set -uo pipefail

here=$(cd "$(dirname "$0")" && pwd)
modes=auto,always out=/tmp/zdg-guest-compare fsx_ops=10000 prepare=${ZDG_SKIP_PREPARE:-0}
usage() { sed -n '2,/^set -u/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --modes) modes=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --fsx-ops) fsx_ops=$2; shift 2 ;;
        --no-prepare) prepare=1; shift ;;
        -h|--help) usage ;;
        -*) echo "compare.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[[ $# -eq 2 ]] || usage
candidate=$1 reference=$2

if [[ $prepare != 1 ]]; then
    bash "$here/prepare.sh" || { echo "compare.sh: prepare.sh failed" >&2; exit 1; }
fi

# backend_args SPEC: run.sh's arguments for a backend name or a template.
backend_args() {
    if [[ $1 == *'{sock}'* ]]; then
        local words
        read -r -a words <<<"$1"
        printf '%s\n' -- "${words[@]}"
    else
        printf '%s\n' --backend "$1"
    fi
}
mapfile -t cand_args < <(backend_args "$candidate")
mapfile -t ref_args < <(backend_args "$reference")
short() { if [[ $1 == *'{sock}'* ]]; then basename "${1%% *}"; else echo "$1"; fi; }

# flaky_reason CASE: the reason flaky.txt gives for a pjdfstest/ case; fails if it isn't listed.
flaky_reason() {
    [[ $1 == pjdfstest/* ]] || return 1
    awk -v c="${1#pjdfstest/}" '$1 == c { $1 = ""; sub(/^ +/, ""); print; found = 1 } END { exit !found }' \
        "$here/flaky.txt"
}

# rerun_passes MODE CASE: reruns one pjdfstest case on the candidate in a fresh guest, up to 3
# times; true (with rerun_round set) as soon as one passes.
rerun_round=0
rerun_passes() {
    local name=${2#pjdfstest/} dir
    for rerun_round in 1 2 3; do
        dir=$out/$1/rerun-$rerun_round-${name//[^a-z0-9_]/_}
        bash "$here/run.sh" --cache "$1" --scenarios pjdfstest --pjdfstest-cases "$name" \
            --label "rerun-$1" --out "$dir" "${cand_args[@]}" >"$dir.log" 2>&1 </dev/null
        grep -q "^$2"$'\tPASS' "$dir/cases.tsv" 2>/dev/null && return 0
    done
    return 1
}

rm -rf "$out"
mkdir -p "$out"
report=$out/report
: >"$report"
ok=0 bad=0
t_all=$SECONDS
IFS=, read -r -a mode_list <<<"$modes"
for mode in "${mode_list[@]}"; do
    mkdir -p "$out/$mode"
    for side in reference candidate; do
        if [[ $side == reference ]]; then args=("${ref_args[@]}") name=$(short "$reference"); else args=("${cand_args[@]}") name=$(short "$candidate"); fi
        # run.sh wants its options before `--`, which ends them for a template.
        t0=$SECONDS
        bash "$here/run.sh" --cache "$mode" --fsx-ops "$fsx_ops" --label "$side-$name-$mode" \
            --out "$out/$mode/$side" "${args[@]}" >"$out/$mode/$side.log" 2>&1
        rc=$?
        echo "$mode $side ($name): run.sh exit $rc in $((SECONDS - t0)) s; $(tail -1 "$out/$mode/$side/summary" 2>/dev/null)" | tee -a "$report"
        if [[ $rc -eq 2 ]]; then
            echo "FAIL [$mode] $side did not boot or mount: nothing proven (see $out/$mode/$side.log)" | tee -a "$report"
            bad=$((bad + 1))
        fi
    done

    ref=$out/$mode/reference/cases.tsv cand=$out/$mode/candidate/cases.tsv
    [[ -f $ref && -f $cand ]] || { echo "FAIL [$mode] missing results" | tee -a "$report"; bad=$((bad + 1)); continue; }
    # Every case the reference passes, with the candidate's verdict (MISSING if it has none).
    while IFS=$'\t' read -r case verdict detail; do
        if [[ $verdict == PASS ]]; then
            ok=$((ok + 1))
        elif [[ $verdict == FAIL ]] && flaky_reason "$case" >/dev/null && rerun_passes "$mode" "$case"; then
            ok=$((ok + 1))
            echo "FLAKY [$mode] $case: failed in the full run, passed on rerun $rerun_round of 3 ($(flaky_reason "$case"))" | tee -a "$report"
        else
            bad=$((bad + 1))
            echo "REGRESSION [$mode] $case: reference PASS, candidate $verdict${detail:+ ($detail)}" | tee -a "$report"
        fi
    done < <(awk -F'\t' 'NR == FNR { if ($2 == "PASS") pass[$1] = 1; next }
                         ($1 in pass) { seen[$1] = 1; print $1 "\t" $2 "\t" $3 }
                         END { for (c in pass) if (!(c in seen)) print c "\tMISSING\t" }' "$ref" "$cand" | sort)
    # For information: what the reference itself failed (not compared), and what the candidate
    # passes that the reference doesn't.
    awk -F'\t' -v m="$mode" '$2 == "FAIL" { print "reference failed [" m "] " $1 " (not compared)" }' "$ref" |
        tee -a "$report"
    awk -F'\t' 'NR == FNR { if ($2 != "PASS") notpass[$1] = $2; next }
                ($1 in notpass) && $2 == "PASS" { print "better [" m "] " $1 ": reference " notpass[$1] ", candidate PASS" }' \
        m="$mode" "$ref" "$cand" | grep -v '^better .*: reference SKIP' | tee -a "$report"
done

echo "whole comparison: $((SECONDS - t_all)) s" | tee -a "$report"
echo "guest-compare: $ok passed, $bad failed" | tee -a "$report"
[[ $bad -eq 0 ]]
