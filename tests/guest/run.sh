#!/usr/bin/env bash
# One real-guest run: a virtio-fs backend on a fresh loop-mounted ext4 directory, QEMU (TCG) booting
# Debian's 6.12 cloud kernel with the suite's initramfs (tests/guest/prepare.sh), the guest mounting
# the share by tag and running pjdfstest, fsx and the sparse scenario; then the host checks the
# sparse file in the backing directory and writes per-case results.
#
# Usage: tests/guest/run.sh [OPTIONS] --backend NAME        (zerodax, zerodax-handles, c-virtiofsd, rust-virtiofsd)
#        tests/guest/run.sh [OPTIONS] -- CMD...              (words may hold {sock} {dir} {cache})
# Options:
#   --cache MODE        substituted for {cache} (default auto)
#   --out DIR           results directory (default /tmp/zdg-guest-results/LABEL)
#   --label NAME        name of this run (default BACKEND-CACHE)
#   --scenarios LIST    comma separated: pjdfstest,fsx,sparse (default all); also etxtbsy, the
#                       probe behind pjdfstest's flaky open::etxtbsy (docs/guest-suite.md)
#   --fsx-ops N         fsx operations (default 10000); --seed N: fsx seed
#   --mount-opts OPTS   guest mount options (default none)
#   --pjdfstest-cases LIST   only these pjdfstest cases, comma separated exact names
#   --timeout SECS      limit for the whole guest run (default 900)
#   --script FILE       also run FILE in the guest (sh, cwd /), for debugging a backend by hand
#   --vmm NAME          qemu: Debian's QEMU with vhost-user-fs-pci (default, no DAX window);
#                       dax: QEMU 11.1 from the chroot prepare.sh --dax made, with the generic
#                       vhost-user device, whose window the backend sizes (GET_SHMEM_CONFIG)
#   --extra ARGS        more backend arguments, split on spaces (e.g. zerodax's DAX flags)
#   --reboot MODE       the reboot scenario's reboot: clean (unmount first, as a shutdown does;
#                       default) or forced (reboot -f with the share mounted, as a crash)
# Scenario `dax` (with --vmm dax): the host makes files (sparse, fragmented, twice the window, many
# small ones), the guest reads each whole through read(2) and through mmap, byte for byte; then
# the host checks the VMM survived, its mapping count, the files' page cache (cachestat) and
# their disk allocation.
# Results in OUT: cases.tsv (CASE<TAB>PASS|FAIL|SKIP<TAB>detail), console.log, backend.log, summary.
# Exit: 0 every case passed; 1 a case failed; 2 nothing proven (backend did not start, the guest did
# not boot, or did not mount).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR source=backends.sh
source "$here/backends.sh"
cache_dir=${ZERODAX_GUEST_CACHE:-/var/cache/zerodax-guest}

cache=auto out='' label='' scenarios=pjdfstest,fsx,sparse fsx_ops=10000 seed=20261125
mount_opts='' pjdfilter='' limit=900 backend='' template=() script= vmm=qemu extra='' reboot_mode=clean
usage() { sed -n '2,/^set -e/p' "$0" | sed -n 's/^# \{0,1\}//p' >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case $1 in
        --cache) cache=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --label) label=$2; shift 2 ;;
        --scenarios) scenarios=$2; shift 2 ;;
        --fsx-ops) fsx_ops=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --mount-opts) mount_opts=$2; shift 2 ;;
        --pjdfstest-cases) pjdfilter=$2; shift 2 ;;
        --timeout) limit=$2; shift 2 ;;
        --script) script=$2; shift 2 ;;
        --vmm) vmm=$2; shift 2 ;;
        --extra) extra=$2; shift 2 ;;
        --reboot) reboot_mode=$2; shift 2 ;;
        --backend)
            backend=$2
            mapfile -t template < <(backend_template "$backend") || true
            [[ ${#template[@]} -gt 0 ]] || { echo "run.sh: unknown backend $backend ($(backend_names))" >&2; exit 2; }
            shift 2 ;;
        --) shift; template=("$@"); break ;;
        -h|--help) usage ;;
        *) echo "run.sh: unknown option $1" >&2; usage ;;
    esac
done
[[ ${#template[@]} -gt 0 ]] || usage
[[ -z $script || ,$scenarios, == *,script,* ]] || scenarios+=,script
[[ $(id -u) -eq 0 ]] || { echo "run.sh: run as root (loop mount)" >&2; exit 2; }
for f in vmlinuz initrd.gz seekmap; do
    [[ -s $cache_dir/$f ]] || { echo "run.sh: $cache_dir/$f missing: run tests/guest/prepare.sh first" >&2; exit 2; }
done
[[ $vmm == qemu || $vmm == dax ]] || { echo "run.sh: --vmm qemu|dax, not $vmm" >&2; exit 2; }
qemu_root=$cache_dir/qemu-sid
if [[ $vmm == dax ]] && ! chroot "$qemu_root" qemu-system-x86_64 --version >/dev/null 2>&1; then
    echo "run.sh: no QEMU in $qemu_root: run tests/guest/prepare.sh --dax first" >&2
    exit 2
fi
label=${label:-${backend:-custom}-$cache}
out=${out:-/tmp/zdg-guest-results/$label}
rm -rf "$out"
mkdir -p "$out"

work=$(mktemp -d /tmp/zdg-guest.XXXXXX)
chmod 0755 "$work"
backing=$work/backing sock=$work/vhost-fs.sock
backend_pid='' qemu_pid='' sampler_pid='' vmm_dir=''
if [[ $vmm == dax ]]; then
    # QEMU runs chrooted: its socket, kernel and initramfs live inside the chroot.
    vmm_dir=$(mktemp -d "$qemu_root/zdg-run.XXXXXX")
    sock=$vmm_dir/vhost-fs.sock
    cp "$cache_dir/vmlinuz" "$cache_dir/initrd.gz" "$vmm_dir/"
fi

# stop PID NAME: SIGTERM, then SIGKILL after 5 s; always reaped.
stop() {
    local pid=$1 name=$2
    [[ -n $pid ]] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "run.sh: $name did not exit on SIGTERM within 5 s: killing it" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    [[ $(type -t dax_trace_stop) != function ]] || dax_trace_stop "$out"
    stop "$qemu_pid" qemu
    qemu_pid=''
    stop "$sampler_pid" sampler
    sampler_pid=''
    stop "$backend_pid" backend
    backend_pid=''
    if grep -qs " $backing " /proc/self/mounts; then
        umount "$backing" 2>/dev/null || umount -l "$backing" || true
    fi
    rm -rf "$work" ${vmm_dir:+"$vmm_dir"}
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- the shared directory: a fresh ext4 image, so holes are real and results don't depend on /tmp
truncate -s 8G "$work/img"
mkfs.ext4 -q -F -b 4096 "$work/img"
mkdir -p "$backing"
mount -o loop "$work/img" "$backing"
chmod 0755 "$backing"
[[ -z $script ]] || install -m 0644 "$script" "$backing/zdg-script.sh"
if [[ ,$scenarios, == *,dax,* || ,$scenarios, == *,bench,* ]]; then
    # shellcheck source-path=SCRIPTDIR source=dax.sh
    source "$here/dax.sh"
    if [[ ,$scenarios, == *,dax,* ]]; then
        dax_make_files "$backing/zdg-dax" "$cache_dir/seekmap" "$extra"
    else
        dax_make_bench "$backing/zdg-bench" "$cache_dir/seekmap"
    fi
    # A cold start: nothing of the files in the host's page cache.
    umount "$backing" && mount -o loop "$work/img" "$backing"
    dax_trace_start "$backing"
fi

# --- the backend -------------------------------------------------------------------------------
backend_cache=$cache
[[ ${template[0]} == */qemu/virtiofsd && $cache == never ]] && backend_cache=none
cmd=()
for word in "${template[@]}"; do
    word=${word//\{sock\}/$sock}
    word=${word//\{dir\}/$backing}
    cmd+=("${word//\{cache\}/$backend_cache}")
done
[[ -z $extra ]] || read -r -a extra_words <<<"$extra"
cmd+=("${extra_words[@]}")
echo "${cmd[*]}" >"$out/backend.cmd"
echo "=== guest suite [$label]: ${cmd[*]}"
"${cmd[@]}" >"$out/backend.log" 2>&1 </dev/null &
backend_pid=$!
for _ in $(seq 200); do
    [[ -S $sock ]] && break
    if ! kill -0 "$backend_pid" 2>/dev/null; then break; fi
    sleep 0.1
done
if [[ ! -S $sock ]]; then
    echo "run.sh: the backend did not create $sock (log follows)" >&2
    tail -20 "$out/backend.log" >&2
    printf 'backend\tFAIL\tno socket\n' >"$out/cases.tsv"
    exit 2
fi

# --- the guest ---------------------------------------------------------------------------------
append="console=ttyS0 panic=-1 quiet zdg.tag=zdg zdg.run=$scenarios zdg.fsxops=$fsx_ops zdg.seed=$seed"
[[ -z $mount_opts ]] || append+=" zdg.mountopts=$mount_opts"
[[ -z $pjdfilter ]] || append+=" zdg.pjdfilter=$pjdfilter"
append+=" zdg.reboot=$reboot_mode"
if [[ $vmm == dax ]]; then
    # QEMU 11.1's vhost-user-fs-pci has no cache window; the generic device asks the backend
    # for the virtio-fs config (tag) and for its shared memory (GET_SHMEM_CONFIG).
    inside=${vmm_dir#"$qemu_root"}
    qemu=(chroot "$qemu_root" qemu-system-x86_64 -accel tcg -m 1G -smp 1 -machine q35
        -object 'memory-backend-memfd,id=mem,size=1G,share=on' -numa node,memdev=mem
        -chardev "socket,id=c0,path=$inside/vhost-fs.sock"
        -device 'vhost-user-test-device-pci,chardev=c0,virtio-id=26,num_vqs=2,config_size=40'
        -kernel "$inside/vmlinuz" -initrd "$inside/initrd.gz" -append "$append"
        -nographic)
else
    qemu=(qemu-system-x86_64 -accel tcg -m 512 -smp 1
        -object 'memory-backend-memfd,id=mem,size=512M,share=on' -machine memory-backend=mem
        -chardev "socket,id=c0,path=$sock" -device 'vhost-user-fs-pci,chardev=c0,tag=zdg'
        -kernel "$cache_dir/vmlinuz" -initrd "$cache_dir/initrd.gz" -append "$append"
        -nographic)
fi
# A guest reboot ends QEMU, except in the reboot scenario, which reboots once on purpose.
[[ ,$scenarios, == *,reboot,* ]] || qemu+=(-no-reboot)
echo "${qemu[*]}" >"$out/qemu.cmd"
t0=$SECONDS
timeout --kill-after=10 "$limit" "${qemu[@]}" >"$out/console.raw" 2>"$out/qemu.log" </dev/null &
qemu_pid=$!
if [[ $vmm == dax ]]; then
    # The VMM as the host sees it, twice a second: its mappings of shared files and its RSS.
    (
        peak_maps=0 peak_rss=0
        while kill -0 "$qemu_pid" 2>/dev/null; do
            vm=$(pgrep -P "$qemu_pid" qemu-system 2>/dev/null | head -1)
            if [[ -n $vm ]]; then
                n=$(grep -c " $backing/" "/proc/$vm/maps" 2>/dev/null || true)
                r=$(awk '/^VmRSS:/ {print $2}' "/proc/$vm/status" 2>/dev/null || true)
                ((${n:-0} > peak_maps)) && peak_maps=$n
                ((${r:-0} > peak_rss)) && peak_rss=$r
                echo "$peak_maps $peak_rss" >"$out/vmm-peak"
            fi
            sleep 0.5
        done
    ) &
    sampler_pid=$!
fi
qemu_rc=0
wait "$qemu_pid" || qemu_rc=$?
qemu_pid=''
wall=$((SECONDS - t0))
[[ ,$scenarios, != *,dax,* && ,$scenarios, != *,bench,* ]] || dax_trace_stop "$out"
tr -d '\r' <"$out/console.raw" >"$out/console.log"
rm -f "$out/console.raw"
# A vhost-user backend must end by itself when its frontend goes away (virtiofsd does): give it
# 10 s, then stop it.
backend_exit=''
for _ in $(seq 100); do
    kill -0 "$backend_pid" 2>/dev/null || break
    sleep 0.1
done
if ! kill -0 "$backend_pid" 2>/dev/null; then
    backend_rc=0
    wait "$backend_pid" || backend_rc=$?
    backend_exit="exited with status $backend_rc after the frontend disconnected"
else
    stop "$backend_pid" backend
fi
backend_pid=''

# --- results -----------------------------------------------------------------------------------
cases=$out/cases.tsv
: >"$cases"
result() { printf '%s\t%s\t%s\n' "$1" "$2" "${3:-}" >>"$cases"; }
# marker WORD: the guest's "@@ZDG WORD..." lines (firmware escapes may precede a marker).
marker() { grep -a -o "@@ZDG $1.*" "$out/console.log" || true; }

boot=$(marker BOOT | head -1)
mount_line=$(marker 'MOUNT ' | head -1)
if [[ -n $boot ]]; then result guest/boot PASS "${boot#@@ZDG BOOT }"; else result guest/boot FAIL "qemu rc=$qemu_rc"; fi
if [[ $mount_line == '@@ZDG MOUNT ok'* ]]; then
    result guest/mount PASS "${mount_line#@@ZDG MOUNT ok }"
else
    result guest/mount FAIL "${mount_line:-no mount marker}"
fi
if [[ -n $(marker DONE) ]]; then result guest/done PASS "qemu rc=$qemu_rc, ${wall} s"; else result guest/done FAIL "guest did not finish (qemu rc=$qemu_rc after ${wall} s)"; fi
# The VMM ended by the guest's poweroff, not by an abort, a signal or our time limit.
crash=$(grep -m1 -E 'Assertion|Aborted|Segmentation|core dumped|backing store size|Bad offset' "$out/qemu.log" || true)
if [[ $qemu_rc == 0 && -z $crash ]]; then
    result vmm/survived PASS "$vmm"
else
    result vmm/survived FAIL "qemu rc=$qemu_rc ${crash}"
fi

if [[ -n $(marker DONE) ]]; then
    # Only meaningful after a clean guest run: a timed-out QEMU was killed, not shut down.
    if [[ $backend_exit == *'status 0 '* ]]; then
        result backend/exit-on-disconnect PASS "$backend_exit"
    elif [[ -n $backend_exit ]]; then
        result backend/exit-on-disconnect FAIL "$backend_exit"
    else
        result backend/exit-on-disconnect FAIL "still running 10 s after QEMU exited"
    fi
fi

# case_end NAME: "rc secs" from the END marker, empty if the scenario never ended.
case_end() { marker "END $1 " | sed -n 's/.* rc=\([0-9]*\) secs=\([0-9.]*\).*/\1 \2/p' | head -1; }

IFS=, read -r -a wanted <<<"$scenarios"
for s in "${wanted[@]}"; do
    end=$(case_end "$s")
    case $s in
        pjdfstest)
            # Each test line: "@@ZDG pjd NAME<spaces>ok|FAILED|skipped|failed as expected|PASSED UNEXPECTEDLY"
            marker 'pjd ' | sed 's/^@@ZDG pjd //' | awk '
                /^[a-z_0-9]+::[^ ]* +ok$/ {print $1 "\tPASS\t"; next}
                /^[a-z_0-9]+::[^ ]* +skipped$/ {print $1 "\tSKIP\t"; next}
                /^[a-z_0-9]+::[^ ]* +FAILED$/ {print $1 "\tFAIL\t"; next}
                /^[a-z_0-9]+::[^ ]* +failed as expected$/ {print $1 "\tPASS\texpected failure"; next}
                /^[a-z_0-9]+::[^ ]* +PASSED UNEXPECTEDLY$/ {print $1 "\tFAIL\tpassed unexpectedly"; next}' |
                sed 's/^/pjdfstest\//' >>"$cases"
            summary=$(marker 'pjd Summary' | sed 's/^@@ZDG pjd //')
            total=$(sed -n 's/.* \([0-9]*\) total$/\1/p' <<<"$summary")
            parsed=$(grep -c '^pjdfstest/' "$cases" || true)
            if [[ -z $end || -z $summary ]]; then
                result pjdfstest/complete FAIL "pjdfstest did not finish"
            elif [[ $total == 0 ]]; then
                result pjdfstest/complete FAIL "no case ran"
            elif [[ $parsed != "$total" ]]; then
                # A garbled console line would hide a case: count them against pjdfstest's own total.
                result pjdfstest/complete FAIL "$parsed case lines parsed, pjdfstest reports $total"
            else
                result pjdfstest/complete PASS "$summary (${end#* } s in the guest)"
            fi
            ;;
        fsx)
            if [[ ${end%% *} == 0 ]] && marker 'fsx All operations completed A-OK!' | grep -q .; then
                result fsx PASS "$fsx_ops ops, seed $seed, ${end#* } s in the guest"
            else
                result fsx FAIL "rc=${end%% *} (seed $seed; see console.log)"
            fi
            ;;
        sparse)
            marker 'CHECK sparse/' | awk '{print $3 "\t" $4 "\t"}' >>"$cases"
            [[ -n $end ]] || result sparse/complete FAIL "the sparse scenario did not finish"
            final=$(marker SPARSE-FINAL | head -1 | sed 's/^@@ZDG SPARSE-FINAL //')
            f=$backing/zdg-sparse/file
            if [[ -z $final || ! -f $f ]]; then
                result sparse/host-map FAIL "no final map from the guest or no file on the host"
                continue
            fi
            host=$("$cache_dir/seekmap" map "$f" || true)
            # shellcheck disable=SC2001 # a regex, not a fixed string
            host_map=$(sed 's/ alloc=[0-9]*//' <<<"$host")
            if [[ $host_map == "$final" ]]; then
                result sparse/host-map PASS "$host_map"
            else
                result sparse/host-map FAIL "host: $host_map; guest: $final"
            fi
            # Holes kept: allocated bytes cover the data ranges and little more (ext4 may add an
            # extent-tree block), far less than the size.
            alloc=$(sed -n 's/.* alloc=\([0-9]*\).*/\1/p' <<<"$host")
            size=$(sed -n 's/^size=\([0-9]*\).*/\1/p' <<<"$host")
            data=0
            for r in $(sed -n 's/.* data=//p' <<<"$host_map" | tr ',' ' '); do
                [[ $r == - ]] || data=$((data + ${r#*:} - ${r%:*}))
            done
            if [[ -n $alloc ]] && ((alloc >= data && alloc <= data + 65536 && alloc < size)); then
                result sparse/host-holes-kept PASS "st_blocks*512=$alloc data=$data size=$size"
            else
                result sparse/host-holes-kept FAIL "st_blocks*512=${alloc:-?} data=$data size=${size:-?}"
            fi
            if z=$("$cache_dir/seekmap" holes-zero "$f"); then
                result sparse/host-holes-zero PASS "$z"
            else
                result sparse/host-holes-zero FAIL "$z"
            fi
            bad=''
            while read -r off len pseed; do
                "$cache_dir/seekmap" check "$f" "$off" "$len" "$pseed" >/dev/null || bad+=" $off+$len"
            done < <(marker SPARSE-PATTERN | sed 's/^@@ZDG SPARSE-PATTERN //')
            if [[ -z $bad && -n $(marker SPARSE-PATTERN) ]]; then
                result sparse/host-data PASS "$(marker SPARSE-PATTERN | wc -l) ranges hold what the guest wrote"
            else
                result sparse/host-data FAIL "ranges differ on the host:${bad:- none reported}"
            fi
            ;;
        dax)
            marker 'CHECK dax/' | awk '{print $3 "\t" $4 "\t"}' >>"$cases"
            [[ -n $end ]] || result dax/complete FAIL "the dax scenario did not finish"
            dax_host_checks "$backing/zdg-dax" "$cache_dir/seekmap" "$out" "$extra"
            ;;
        bench)
            cold=$(marker 'BENCH cold' | awk '{print $4}')
            warm=$(marker 'BENCH warm' | awk '{print $4}')
            cache=$("$cache_dir/seekmap" cachestat "$backing/zdg-bench/file" | sed -n 's/^cache=\([0-9]*\).*/\1/p')
            peak_maps=0 peak_rss=0
            [[ -s $out/vmm-peak ]] && read -r peak_maps peak_rss <"$out/vmm-peak"
            if [[ ${end%% *} == 0 && -n $cold && -n $warm ]]; then
                result bench PASS "cold ${cold} s, warm ${warm} s; host page cache $((cache / 256)) MiB; VMM peak RSS $((peak_rss / 1024)) MiB, peak file mappings $peak_maps"
            else
                result bench FAIL "rc=${end%% *} cold=${cold:-?} warm=${warm:-?}"
            fi
            ;;
        reboot)
            boots=$(marker BOOT | wc -l)
            if [[ ${end%% *} == 0 && $boots == 2 && -n $(marker REBOOTING) ]]; then
                result reboot PASS "two boots; the second read and wrote the share through the window"
            else
                result reboot FAIL "boots=$boots rc=${end%% *} (console.log)"
            fi
            ;;
        etxtbsy)
            line=$(marker 'etxtbsy etxtbsy: ' | sed 's/^@@ZDG etxtbsy //')
            if [[ ${end%% *} == 0 ]]; then result etxtbsy PASS "$line"; else result etxtbsy FAIL "${line:-rc=${end%% *}}"; fi
            ;;
        script)
            if [[ ${end%% *} == 0 ]]; then result script PASS; else result script FAIL "rc=${end%% *}"; fi
            ;;
        *) result "$s" FAIL "unknown scenario" ;;
    esac
done

pass=$(awk -F'\t' '$2 == "PASS"' "$cases" | wc -l)
fail=$(awk -F'\t' '$2 == "FAIL"' "$cases" | wc -l)
skip=$(awk -F'\t' '$2 == "SKIP"' "$cases" | wc -l)
{
    echo "label: $label"
    echo "backend: ${cmd[*]}"
    echo "kernel: $(cat "$cache_dir/kernel.txt" 2>/dev/null)"
    echo "wall: ${wall} s (qemu rc=$qemu_rc)"
    awk -F'\t' '$2 == "FAIL" {print "FAIL " $1 (length($3) ? ": " $3 : "")}' "$cases"
    grep -E '^(guest/|backend/|pjdfstest/complete|fsx|sparse/host)' "$cases" | awk -F'\t' '$2 == "PASS" {print "ok   " $1 ": " $3}'
    echo "guest-$label: $pass passed, $fail failed, $skip skipped"
} >"$out/summary"
cat "$out/summary"

if ! grep -q $'^guest/boot\tPASS' "$cases" || ! grep -q $'^guest/mount\tPASS' "$cases"; then
    echo "run.sh [$label]: the guest did not boot or mount: nothing was tested (console: $out/console.log)" >&2
    exit 2
fi
[[ $fail -eq 0 ]]
